"""multipart/form-data bodies parsed in memory, for prediction uploads.

Starlette's form parser feeds the body through python-multipart's streaming state machine,
spools every part into a temporary file object and builds a form of UploadFiles: about 40 µs a
request, more than decoding the 28×28 PNG inside it. A predict body is already in memory, and
BodyLimits bounds it, so the parts are cut out of it with two byte searches each, following the
grammar of RFC 2046 §5.1.1 (the form of RFC 7578):

    body      := [preamble CRLF] "--" boundary padding CRLF part
                 *(CRLF "--" boundary padding CRLF part) CRLF "--" boundary "--" [epilogue]
    part      := *(header CRLF) CRLF data

The boundary cannot occur inside a part's data (the sender chooses it so), which is what makes
splitting on it exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from python_multipart import multipart

# A client sends the same Content-Type and Content-Disposition headers request after request;
# parsing one costs several µs (the results are only read).
parse_options_header = lru_cache(maxsize=1024)(multipart.parse_options_header)


class FormError(ValueError):
    """The body is not a usable multipart form; the message says why."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # None for a text field
    data: bytes


def parse_form(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The parts of a multipart/form-data body, in order; at most `max_parts` of them."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("the multipart Content-Type has no boundary parameter")
    # A leading CRLF lets one split find the first boundary, which starts the body, too.
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise FormError(
            # The header arrived as latin-1 (HTTP's own), so it decodes back whatever its bytes.
            "the multipart body does not end with its closing boundary "
            f"--{boundary.decode('latin-1')}--"
        )
    parts = sections[1:-1]  # what precedes the first boundary is a preamble, to be ignored
    if len(parts) > max_parts:
        raise FormError(
            f"{len(parts)} parts in the form; at most {max_parts} files a request "
            "(TRICKLAB_MAX_PREDICT_FILES)"
        )
    return [_part(section) for section in parts]


def _part(section: bytes) -> Part:
    line_end = section.find(b"\r\n")
    if line_end < 0 or section[:line_end].strip(b" \t"):  # only padding may follow a boundary
        raise FormError("a multipart boundary line is malformed")
    # Kept, the boundary line's CRLF makes an empty header block end in CRLF CRLF too.
    head, blank_line, data = section[line_end:].partition(b"\r\n\r\n")
    if not blank_line:
        raise FormError("a multipart part's headers do not end with a blank line")
    disposition = b""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            disposition = value
    kind, options = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in options:
        raise FormError("a multipart part has no 'Content-Disposition: form-data; name=...'")
    filename = options.get(b"filename")
    return Part(
        options[b"name"].decode("utf-8", "replace"),
        None if filename is None else filename.decode("utf-8", "replace"),
        data,
    )
