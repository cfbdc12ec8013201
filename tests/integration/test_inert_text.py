"""Text that users write stays inert everywhere it goes out again: a study named with
matplotlib mathtext, markup and a spreadsheet formula gets every plot drawn (the name
literally, escaped in the SVG), CSV tables that no spreadsheet evaluates, and log lines that
nothing in a message can forge."""

import csv
import io
import logging
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.logs import FORMAT, OneLineFormatter, setup_logging
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY
from tests.support.inprocess import drain_queue, settings_in

HOSTILE = r'$\frac{a}{b}$ <script>alert(1)</script> =HYPERLINK("x")'
STUDY = {"name": HOSTILE, "base": TINY, "tricks": ["dropout"], "repeats": 2}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    settings = settings_in(tmp_path_factory.mktemp("inert"), data_dir)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        created = client.post("/v1/studies", json=STUDY)
        assert created.status_code == 201, created.text
        drain_queue(settings)
        study = client.get(f"/v1/studies/{created.json()['id']}").json()
        assert study["status"] == "succeeded"
        yield client, study


@pytest.mark.parametrize("name", ["curves", "accuracy", "gap", "effects"])
def test_every_plot_of_a_hostile_study_name_is_drawn_with_the_name_as_text(finished, name):
    client, study = finished
    path = study["links"]["plots"][name]
    png = client.get(path)
    assert png.status_code == 200, png.text
    assert Image.open(io.BytesIO(png.content)).format == "PNG"

    svg = client.get(path, params={"format": "svg"})
    assert svg.status_code == 200, svg.text
    assert svg.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(svg.content)  # well-formed: the markup in the name was escaped
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1].lower() == "script"]
    assert b"<script" not in svg.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in svg.content
    text = " ".join(element.text or "" for element in root.iter(f"{SVG}text"))
    # Drawn as typed, not as a fraction: mathtext would have drawn a, b and a bar instead.
    for part in (r"\frac{a}{b}$", "<script>alert(1)</script>", '=HYPERLINK("x")'):
        assert part in text


@pytest.mark.parametrize("table", ["variants", "effects"])
def test_no_cell_of_a_study_csv_starts_a_formula_and_numbers_stay_numbers(finished, table):
    client, study = finished
    response = client.get(f"/v1/studies/{study['id']}/report.csv", params={"table": table})
    assert response.status_code == 200, response.text
    header, *rows = list(csv.reader(io.StringIO(response.text)))
    assert rows
    for row in rows:
        for column, cell in zip(header, row, strict=True):
            # A negative number is a number to a spreadsheet too: only text is neutralised.
            if cell.startswith(FORMULA_STARTS):
                assert is_number(cell), (column, cell)
            if column.endswith(("_mean", "_low", "_high")) and cell:
                assert is_number(cell), (column, cell)


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_a_log_message_cannot_start_a_line_of_its_own():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("tricklab.test.inert")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        forged = "x\nINFO tricklab.service study=forged cancelled\r\x00\x1b[2J\u2028\u202e\ud800"
        logger.warning("study=%s created name=%s", "s1", forged)
        try:
            raise ValueError(f"bad name {forged}")
        except ValueError:
            logger.exception("job=%s failed", "j1")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "WARNING tricklab.test.inert study=s1 created name=x\\nINFO tricklab.service "
        "study=forged cancelled\\r\\x00\\x1b[2J\\u2028\\u202e\\ud800"
    )
    # Every line that starts a record starts in column 0; a traceback's lines are indented,
    # so the exception's message in it cannot pass for a record either.
    records = [line for line in lines if not line.startswith(" ")]
    assert records == [lines[0], "ERROR tricklab.test.inert job=j1 failed"]
    assert "  ValueError: bad name x" in lines
    assert (
        "  INFO tricklab.service study=forged cancelled\\r\\x00\\x1b[2J\\u2028\\u202e\\ud800"
        in lines
    )
    # str.splitlines splits at every line break Unicode knows: none is left in the output.
    assert len(lines) == out.getvalue().count("\n")


def test_setup_logging_formats_every_record_on_one_line(monkeypatch):
    root = logging.getLogger()
    # Set up on a root logger of its own: pytest's capturing handlers stay as they are.
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("info")
    (handler,) = root.handlers
    assert isinstance(handler.formatter, OneLineFormatter)
    assert handler.formatter._fmt == FORMAT
    assert root.level == logging.INFO
