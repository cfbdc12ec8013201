"""The command line's own logic, without a server: the trick flags, the exit statuses, the
messages made of the API's errors, the event-stream reader and its reconnection, where the
token comes from, and the plain lines `watch` prints."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli import show
from cli.client import Api, Failure, describe_issue, error_message, exit_code
from cli.config import Connection, normalise_url, resolve, save_login
from cli.events import Event, follow, parse
from cli.ids import resolve_id
from cli.spec import FlagError, job_spec, parse_hidden_units, parse_trick, parse_value
from cli.watch import watch_job
from core.spec import TRICKS, JobSpec

# ---- the trick flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "trick"),
    [
        ("dropout", "dropout"),
        ("weight_decay:l2=0.001", {"name": "weight_decay", "l2": 0.001}),
        ("dropout:rate=0.25", {"name": "dropout", "rate": 0.25}),
        ("early_stopping:patience=5", {"name": "early_stopping", "patience": 5}),
        (
            "momentum:momentum=0.8,nesterov=false",
            {"name": "momentum", "momentum": 0.8, "nesterov": False},
        ),
        (
            "momentum: momentum = 0.8 , nesterov=True",
            {"name": "momentum", "momentum": 0.8, "nesterov": True},
        ),
        ("weight_decay:l2=1e-4", {"name": "weight_decay", "l2": 0.0001}),
        ("augmentation:mode=flip", {"name": "augmentation", "mode": "flip"}),  # a string stays one
    ],
)
def test_a_trick_flag_becomes_the_trick_the_api_takes(flag, trick):
    assert parse_trick(flag) == trick


@pytest.mark.parametrize(
    "flag",
    [
        "",
        ":l2=0.1",
        "weight_decay:l2",
        "weight_decay:=1",
        "weight_decay:l2=",
        "dropout:rate=0.1,rate=0.2",
    ],
)
def test_a_malformed_trick_flag_is_refused_saying_what_is_expected(flag):
    with pytest.raises(FlagError, match=r"key=value|NAME|twice"):
        parse_trick(flag)


def test_parsed_tricks_are_specs_the_service_accepts():
    spec = job_spec(
        {},
        ["dropout:rate=0.2", "weight_decay:l2=0.001", "momentum:momentum=0.8,nesterov=false"],
    )
    resolved = JobSpec.model_validate(spec)
    assert [t.name for t in resolved.tricks] == ["dropout", "weight_decay", "momentum"]
    assert resolved.tricks[2].nesterov is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("False", False),
        ("3", 3),
        ("0.5", 0.5),
        ("1e-3", 0.001),
        ("nan", "nan"),
        ("inf", "inf"),
        ("abc", "abc"),
    ],
)
def test_values_are_numbers_and_booleans_where_they_read_as_such(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_flags_replace_the_fields_of_a_spec_file():
    from_file = {"epochs": 5, "tricks": ["batch_norm"], "seed": 3, "validation_size": 100}
    spec = job_spec(from_file, ["dropout"], epochs=2, hidden_units="64,16", seed=None)
    assert spec == {
        "epochs": 2,
        "tricks": ["dropout"],
        "seed": 3,
        "validation_size": 100,
        "hidden_units": [64, 16],
    }
    assert job_spec(from_file, [])["tricks"] == ["batch_norm"]  # no --trick: the file's


def test_hidden_units_must_be_widths():
    assert parse_hidden_units("128,32") == [128, 32]
    with pytest.raises(FlagError, match="128,32"):
        parse_hidden_units("128;32")


# ---- exit statuses and error messages -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, 2),
        (401, 3),
        (403, 3),
        (404, 4),
        (409, 2),
        (410, 2),
        (413, 2),
        (415, 2),
        (422, 2),
        (429, 2),
        (500, 3),
        (503, 3),
    ],
)
def test_each_http_error_has_its_exit_status(status, code):
    assert exit_code(status) == code


UNKNOWN_TRICK = {
    "loc": ["body", "tricks", 0],
    "field": "tricks[0]",
    "msg": "tricks[0]: Input tag 'dropot' found using 'name' does not match any of the expected tags: 'dropout', 'weight_decay'",
    "type": "union_tag_invalid",
    "ctx": {
        "discriminator": "'name'",
        "tag": "dropot",
        "expected_tags": "'dropout', 'weight_decay'",
    },
}


def test_an_unknown_trick_is_named_with_the_catalogue_and_a_guess():
    assert describe_issue(UNKNOWN_TRICK) == (
        "tricks[0]: unknown trick 'dropot' (did you mean 'dropout'?); "
        "the tricks are: dropout, weight_decay"
    )


def test_a_422_is_shown_field_by_field_in_the_apis_words():
    response = httpx.Response(
        422,
        json={
            "detail": [
                UNKNOWN_TRICK,
                {
                    "loc": ["body", "epochs"],
                    "field": "epochs",
                    "msg": "epochs: Input should be greater than or equal to 1",
                    "type": "greater_than_equal",
                },
            ]
        },
        request=httpx.Request("POST", "http://api/v1/jobs"),
    )
    lines = error_message(response).splitlines()
    assert lines[0] == "the request was refused (422 Unprocessable Entity):"
    assert lines[1].startswith("  tricks[0]: unknown trick 'dropot'")
    assert lines[2] == "  epochs: Input should be greater than or equal to 1"


def test_other_errors_keep_their_detail_and_status():
    request = httpx.Request("GET", "http://api/v1/jobs/x")
    assert error_message(httpx.Response(404, json={"detail": "no job"}, request=request)) == (
        "no job (404 Not Found)"
    )
    assert error_message(httpx.Response(502, text="<html>", request=request)) == (
        "502 Bad Gateway from GET /v1/jobs/x"
    )


# ---- the event stream ---------------------------------------------------------------------


def test_the_event_stream_format_is_read_as_browsers_read_it():
    lines = [
        ": ping",
        "event: status",
        'data: {"status": "running"}',
        "",
        "",  # blank lines between events dispatch nothing
        "id: 3",
        "event: epoch",
        "data:{",
        'data: "epoch": 3}',
        "retry: 100",
        "",
        "event: nothing",  # no data: not an event
        "",
        "data: plain",
        "",
    ]
    assert list(parse(lines)) == [
        Event("status", '{"status": "running"}'),
        Event("epoch", '{\n"epoch": 3}', "3"),
        Event("message", "plain"),
    ]
    assert list(parse(lines))[1].json() == {"epoch": 3}


class Broken(httpx.SyncByteStream):
    """A body that sends some bytes, then breaks as a dropped connection does."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __iter__(self) -> Iterator[bytes]:
        yield self.text.encode()
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def sse(*events: tuple[str, dict, int | None]) -> str:
    return "".join(
        (f"id: {number}\n" if number is not None else "")
        + f"event: {name}\ndata: {json.dumps(data)}\n\n"
        for name, data, number in events
    )


JOB = {"id": "a" * 32, "status": "running", "epochs_done": 0, "epochs_total": 3}
ROWS = [
    {
        "epoch": n,
        "train_loss": 1.0 / n,
        "train_accuracy": 0.5,
        "val_loss": None,
        "val_accuracy": None,
        "test_loss": 0.9,
        "test_accuracy": 0.6 + n / 100,
    }
    for n in (1, 2, 3)
]


def dropping_server(seen: list[dict[str, str]]) -> httpx.MockTransport:
    """Sends epochs 1 and 2 and drops; then resumes after the Last-Event-ID it is sent."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        if len(seen) == 1:
            text = sse(("status", JOB, None), ("epoch", ROWS[0], 1), ("epoch", ROWS[1], 2))
            return httpx.Response(200, stream=Broken(text + "event: epoch\ndata: {"))
        after = int(request.headers["last-event-id"])
        rows = [("epoch", row, row["epoch"]) for row in ROWS if row["epoch"] > after]
        final = {**JOB, "status": "succeeded", "epochs_done": 3}
        return httpx.Response(200, text=sse(("status", JOB, None), *rows, ("end", final, None)))

    return httpx.MockTransport(handle)


def test_a_dropped_stream_resumes_after_the_last_epoch_nothing_lost_or_repeated():
    seen: list[dict[str, str]] = []
    api = Api(Connection("http://api", "t", "test"), transport=dropping_server(seen))
    pauses: list[float] = []
    events = list(follow(api, "/v1/jobs/x/events", sleep=pauses.append))
    assert [(e.name, e.id) for e in events] == [
        ("status", None),
        ("epoch", "1"),
        ("epoch", "2"),
        ("status", None),  # a new connection starts with the job again
        ("epoch", "3"),
        ("end", None),
    ]
    assert "last-event-id" not in seen[0] and seen[1]["last-event-id"] == "2"
    assert seen[1]["authorization"] == "Bearer t"
    assert len(pauses) == 1


def test_watch_prints_one_line_per_epoch_and_how_it_ended_when_not_on_a_terminal():
    api = Api(Connection("http://api", "t", "test"), transport=dropping_server([]))
    out = io.StringIO()
    final = watch_job(api, "a" * 32, out)  # through the drop: one pause of a quarter second
    assert final["status"] == "succeeded"
    assert out.getvalue().splitlines() == [
        f"job {'a' * 32} running",
        "epoch 1/3 train_loss=1.0000 train_accuracy=0.5000 test_loss=0.9000 test_accuracy=0.6100",
        "epoch 2/3 train_loss=0.5000 train_accuracy=0.5000 test_loss=0.9000 test_accuracy=0.6200",
        "epoch 3/3 train_loss=0.3333 train_accuracy=0.5000 test_loss=0.9000 test_accuracy=0.6300",
        f"job {'a' * 32} succeeded",
    ]


def test_a_stream_that_never_comes_back_ends_as_unreachable():
    def handle(request: httpx.Request) -> httpx.Response:
        if "last-event-id" in request.headers or handle.calls:  # type: ignore[attr-defined]
            raise httpx.ConnectError("connection refused")
        handle.calls += 1  # type: ignore[attr-defined]
        return httpx.Response(200, stream=Broken(sse(("epoch", ROWS[0], 1))))

    handle.calls = 0  # type: ignore[attr-defined]
    api = Api(Connection("http://api", None, "test"), transport=httpx.MockTransport(handle))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(Failure) as failed:
        list(follow(api, "/v1/jobs/x/events", sleep=sleep, clock=lambda: now[0]))
    assert failed.value.code == 3 and "could not reconnect" in failed.value.message


def test_a_server_that_is_down_at_first_is_an_error_at_once():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    api = Api(Connection("http://api", None, "test"), transport=httpx.MockTransport(refuse))
    with pytest.raises(Failure) as failed:
        list(follow(api, "/v1/jobs/x/events", sleep=lambda _: pytest.fail("retried")))
    assert failed.value.code == 3 and "cannot reach" in failed.value.message


# ---- short ids ------------------------------------------------------------------------------


def test_a_whole_id_is_used_as_it_is_and_a_prefix_asks_the_list_for_the_callers_own():
    asked: list[httpx.URL] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url)
        return httpx.Response(200, json={"jobs": [{"id": "abcd" + "0" * 28}], "total": 1})

    api = Api(Connection("http://api", "t", "test"), transport=httpx.MockTransport(handle))
    assert resolve_id(api, "job", "F" * 32) == "f" * 32 and asked == []
    assert resolve_id(api, "job", " ABCD ") == "abcd" + "0" * 28
    (url,) = asked
    assert url.path == "/v1/jobs" and url.params["id_prefix"] == "abcd"


def test_an_ambiguous_prefix_lists_the_first_candidates_and_counts_the_rest():
    studies = [
        {"id": f"beef{n:028x}", "status": "running", "name": "", "created_at": "2026-01-02"}
        for n in range(10)
    ]
    studies[0]["name"] = "two tricks"

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.params["limit"] == "10"
        return httpx.Response(200, json={"studies": studies, "total": 12})

    api = Api(Connection("http://api", "t", "test"), transport=httpx.MockTransport(handle))
    with pytest.raises(Failure) as failed:
        resolve_id(api, "study", "beef")
    lines = failed.value.message.splitlines()
    assert failed.value.code == 4
    assert (
        lines[0]
        == "'beef' is ambiguous: 12 studies you can see have ids starting with it; give more of the id:"
    )
    assert lines[1] == f"  {studies[0]['id']} running 'two tricks' created 2026-01-02"
    assert lines[2] == f"  {studies[1]['id']} running created 2026-01-02"
    assert lines[-1] == "  … and 2 more" and len(lines) == 12


# ---- where the server and token come from --------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No saved login, no token in the environment, no .env: a clean slate in tmp_path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    for name in ("TRICKLAB_ADMIN_TOKEN", "TRICKLAB_ADMIN_TOKEN_FILE", "TRICKLAB_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_given_token_comes_first(home):
    save_login("http://127.0.0.1:8000", "saved")
    assert resolve(None, "given") == Connection(
        "http://127.0.0.1:8000", "given", "--token or TRICKLAB_TOKEN"
    )


def test_the_saved_login_gives_the_url_and_its_token_but_not_to_another_server(home):
    path = save_login("http://tricklab.example:8000", "saved")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://tricklab.example:8000", "token": "saved"}
    assert resolve(None, None) == Connection("http://tricklab.example:8000", "saved", str(path))
    assert resolve("http://other:8000", None).token is None


def test_on_this_machine_the_services_admin_token_file_is_read(home, monkeypatch):
    (home / "var").mkdir()
    (home / "var" / "admin-token").write_text("tl_local\n")
    assert resolve(None, None).token == "tl_local"  # beside ./var/tricklab.db, the default
    assert resolve("localhost:8000", None).token == "tl_local"
    assert resolve("http://tricklab.example:8000", None).token is None  # never sent elsewhere
    moved = home / "elsewhere"
    moved.write_text("tl_moved")
    monkeypatch.setenv("TRICKLAB_ADMIN_TOKEN_FILE", str(moved))
    assert resolve(None, None).token == "tl_moved"
    monkeypatch.setenv("TRICKLAB_ADMIN_TOKEN", "x" * 32)
    assert resolve(None, None) == Connection(
        "http://127.0.0.1:8000", "x" * 32, "TRICKLAB_ADMIN_TOKEN"
    )


def test_urls_are_taken_as_people_type_them():
    assert normalise_url("localhost:8000/") == "http://localhost:8000"
    assert normalise_url("https://tricklab.example/") == "https://tricklab.example"


# ---- what people read ---------------------------------------------------------------------


def test_the_last_line_says_how_the_job_ended():
    job = {
        "id": "b" * 32,
        "status": "failed",
        "result": None,
        "error": {"type": "DatasetError", "message": "no data"},
    }
    assert show.job_line(job) == f"job {'b' * 32} failed: DatasetError: no data"
    done = {
        **job,
        "status": "succeeded",
        "error": None,
        "result": {"test_accuracy": 0.8261, "test_loss": 0.5, "epochs_trained": 2, "seconds": 7.84},
    }
    assert show.job_line(done) == (
        f"job {'b' * 32} succeeded: test_accuracy=0.8261 test_loss=0.5000 after 2 epochs in 7.8 s"
    )


def test_the_catalogue_table_names_every_trick(capsys):
    from rich.console import Console

    from core.spec import trick_catalogue

    Console(width=200).print(show.tricks({"tricks": trick_catalogue()}))
    printed = capsys.readouterr().out
    assert all(name in printed for name in TRICKS)
    assert "rate=0.1 (0 < rate < 1)" in printed and "nesterov=true" in printed


def test_a_cnn_job_shows_its_architecture_and_shape_and_the_flag_sets_it(capsys):
    from rich.console import Console

    assert job_spec({}, [], architecture="cnn") == {"architecture": "cnn"}
    for spec, shown, hidden in (
        (JobSpec(architecture="cnn"), ["cnn", "32,64", "kernel_size", "dense_units"], "hidden"),
        (JobSpec(), ["mlp", "128,32"], "conv_filters"),
    ):
        job = {"id": "c" * 32, "status": "queued", "spec": spec.model_dump(mode="json")}
        Console(width=200).print(show.job(job))
        printed = capsys.readouterr().out
        assert all(text in printed for text in shown), printed
        assert hidden not in printed
