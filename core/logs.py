"""One logging format for both processes: a timestamped line of key=value facts per event.

A message may carry text that users wrote (a name, a spec, an exception's message), so every
record is kept on its own line: control characters in the message are escaped, and a
traceback follows on indented lines, escaped the same way. Any line that starts in column 0
then starts a record, and no message can forge one."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
TRACEBACK_INDENT = "  "

# Everything that can break a line or mislead a reader of the log, escaped as Python's repr
# escapes it: the C0 and C1 control characters (line feed, carriage return, NEL, the escape
# that starts a terminal sequence) and DEL; the Unicode line and paragraph separators, which
# str.splitlines and some log viewers take for line breaks; the bidi controls, which make a
# terminal show text in another order than it was written; and unpaired surrogates, which no
# UTF-8 stream can write (the record would be lost to a "Logging error").
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    *range(0xD800, 0xE000),
]
_ESCAPES = str.maketrans(
    {c: _SHORT.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _ESCAPED}
)


def escape_controls(text: str) -> str:
    """Text with its control characters escaped: on one line, and printable."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """A record's message on one line; its traceback or stack, if any, on indented lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        # The message line holds no line break now, so whatever follows the first one is the
        # traceback or stack that logging.Formatter appends.
        line, _, rest = super().format(record).partition("\n")
        if not rest:
            return line
        return "\n".join(
            [line, *(TRACEBACK_INDENT + escape_controls(part) for part in rest.split("\n"))]
        )


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
