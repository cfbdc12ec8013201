"""The in-memory multipart parser: what real clients send, RFC 2046's corners, and bad bodies."""

from __future__ import annotations

import httpx2 as httpx
import numpy as np
import pytest
from python_multipart.multipart import MultipartParser

from service.multipart import FormError, Part, parse_form

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(
    *sections: bytes, preamble: bytes = b"", epilogue: bytes = b"", boundary: str = BOUNDARY
) -> bytes:
    delimiter = b"--" + boundary.encode()
    parts = b"".join(delimiter + section + b"\r\n" for section in sections)
    return preamble + parts + delimiter + b"--" + epilogue


def file_section(data: bytes, name: str = "file", filename: str = "a.png") -> bytes:
    disposition = f'form-data; name="{name}"; filename="{filename}"'
    return f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data


def test_parses_what_an_http_client_encodes():
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"note": "hello"},
        files=[("file", ("a.png", b"\x89PNG\r\n\r\nA", "image/png")), ("file", ("b.gif", b""))],
    )
    parts = parse_form(request.read(), request.headers["content-type"], 10)
    assert parts == [
        Part("note", None, b"hello"),
        Part("file", "a.png", b"\x89PNG\r\n\r\nA"),
        Part("file", "b.gif", b""),
    ]


def test_preamble_epilogue_padding_and_header_case_are_handled():
    body = form(
        b"  \t" + file_section(b"data").replace(b"Content-Disposition", b"content-DISPOSITION"),
        preamble=b"This is a preamble.\r\n",
        epilogue=b"\r\nand an epilogue",
    )
    assert parse_form(body, CONTENT_TYPE, 10) == [Part("file", "a.png", b"data")]


def test_data_that_only_resembles_a_boundary_is_kept():
    data = f"x--{BOUNDARY} is not on its own line\r\n--{BOUNDARY[:-1]}\r\n\r\n".encode()
    assert parse_form(form(file_section(data)), CONTENT_TYPE, 10)[0].data == data


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (form(file_section(b"x")), "multipart/form-data", "no boundary parameter"),
        (form(file_section(b"x"))[:-4], CONTENT_TYPE, "does not end with its closing boundary"),
        (b"", CONTENT_TYPE, "does not end with its closing boundary"),
        (b"random bytes", CONTENT_TYPE, "does not end with its closing boundary"),
        (form(b"X" + file_section(b"x")), CONTENT_TYPE, "boundary line is malformed"),
        (form(b"\r\nContent-Disposition: form-data"), CONTENT_TYPE, "do not end with a blank line"),
        (form(b"\r\n\r\nno headers"), CONTENT_TYPE, "no 'Content-Disposition: form-data"),
        (
            form(b'\r\nContent-Disposition: attachment; name="file"\r\n\r\nx'),
            CONTENT_TYPE,
            "no 'Content-Disposition: form-data",
        ),
        (form(b"\r\nContent-Disposition: form-data\r\n\r\nx"), CONTENT_TYPE, "; name=...'"),
        (form(*[file_section(b"x")] * 4), CONTENT_TYPE, "4 parts in the form; at most 3 files"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, content_type, message):
    with pytest.raises(FormError, match=message.replace("(", r"\(")):
        parse_form(body, content_type, 3)


def streaming_parse(body: bytes, boundary: str) -> list[bytes]:
    """The parts' data as python-multipart's streaming parser (Starlette's) sees them."""
    datas: list[bytearray] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        datas[-1].extend(data[start:end])

    parser = MultipartParser(
        boundary, {"on_part_begin": lambda: datas.append(bytearray()), "on_part_data": on_part_data}
    )
    parser.write(body)
    parser.finalize()
    return [bytes(data) for data in datas]


def test_agrees_with_the_streaming_parser_on_random_forms():
    rng = np.random.default_rng(7)
    for _ in range(300):
        boundary = "".join(rng.choice(list("abcXYZ019-_'()+,./:=?"), int(rng.integers(1, 70))))
        datas = []
        for _ in range(int(rng.integers(1, 5))):
            # Bytes biased towards CR, LF and dashes, so near-boundaries and blank lines occur.
            alphabet = np.frombuffer(b"\r\n-\r\n-ab" + boundary.encode()[:3], np.uint8)
            data = rng.choice(alphabet, int(rng.integers(0, 200))).tobytes()
            if f"\r\n--{boundary}".encode() not in b"\r\n" + data:  # the sender's promise
                datas.append(data)
        body = form(*map(file_section, datas), epilogue=b"\r\n", boundary=boundary)
        content_type = f'multipart/form-data; boundary="{boundary}"'
        parsed = [part.data for part in parse_form(body, content_type, 10)]
        assert parsed == datas == streaming_parse(body, boundary), boundary
