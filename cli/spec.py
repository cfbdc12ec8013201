"""Job specs from command-line flags: `--trick weight_decay:l2=0.001` and the rest.

Nothing is validated here beyond the flags' own syntax: the API checks every spec and says
what is wrong field by field, so the command line never disagrees with it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class FlagError(ValueError):
    """A flag's value that cannot be read; the message says what was expected."""


def parse_value(text: str) -> bool | int | float | str:
    """`true`/`false` → bool, `3` → 3, `1e-3` → 0.001; anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    # "nan" and "inf" parse as floats but are no JSON numbers: let the API name the field.
    return number if math.isfinite(number) else text


def parse_trick(text: str) -> str | dict[str, Any]:
    """`dropout` → "dropout"; `weight_decay:l2=0.001` → {"name": "weight_decay", "l2": 0.001};
    `momentum:momentum=0.8,nesterov=false` → both parameters."""
    name, colon, parameters = text.partition(":")
    name = name.strip()
    if not name:
        raise FlagError(f"{text!r}: expected NAME or NAME:key=value,… (e.g. weight_decay:l2=0.001)")
    if not colon:
        return name
    trick: dict[str, Any] = {"name": name}
    for pair in parameters.split(","):
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not key or not value.strip():
            raise FlagError(f"{text!r}: {pair!r} is not key=value (e.g. weight_decay:l2=0.001)")
        if key in trick:
            raise FlagError(f"{text!r}: {key!r} is given twice")
        trick[key] = parse_value(value.strip())
    return trick


def parse_hidden_units(text: str) -> list[int]:
    """`128,32` → [128, 32]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise FlagError(
            f"{text!r}: expected layer widths separated by commas, e.g. 128,32"
        ) from None


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or from standard input for `-`."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as error:
        raise FlagError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise FlagError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise FlagError(f"{path} must hold a JSON object, not {type(document).__name__}")
    return document


def job_spec(base: dict[str, Any], tricks: list[str], **fields: Any) -> dict[str, Any]:
    """`base` (a spec file's object, or {}) with the flags that were given laid over it.
    `--trick` flags replace the file's tricks as a whole, as every flag replaces its field."""
    spec = dict(base)
    if tricks:
        spec["tricks"] = [parse_trick(trick) for trick in tricks]
    for field, value in fields.items():
        if value is not None:
            spec[field] = parse_hidden_units(value) if field == "hidden_units" else value
    return spec
