"""docs/configuration.md, written from the settings themselves so the page cannot drift from them.

    python -m core.config_doc > docs/configuration.md

A test compares the committed page with `render()`; when a setting is added or changed, run the
command above and commit the page with the change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from core.config import Limits, Settings

COMMAND = "python -m core.config_doc > docs/configuration.md"

INTRO = f"""\
# Configuration

This page is generated from the settings themselves: after changing a setting, regenerate it
with

```sh
{COMMAND}
```

and commit both (a test fails while they disagree).

Every setting is an environment variable starting with `TRICKLAB_`; a `.env` file in the
working directory is read too (the environment wins). The API and the workers read the same
settings, so give both the same values, and restart them after a change.

- `make` sets `TRICKLAB_DATA_DIR` to `../shared/data/fashion-mnist` when that folder exists and
  the variable is not already set.
- A `~` at the start of a folder setting is the home directory.
- Two settings are checked against each other at start-up: `TRICKLAB_HEARTBEAT_SECONDS` must be
  shorter than `TRICKLAB_LEASE_SECONDS` (or leases would expire between heartbeats), and
  `TRICKLAB_MAX_IN_FLIGHT_BYTES` at least `TRICKLAB_MAX_REQUEST_BYTES` (or the largest allowed
  request could never be received).
- The limits on what one job may cost (`TRICKLAB_MAX_PARAMETERS`, `TRICKLAB_MAX_STEPS_PER_JOB`,
  `TRICKLAB_MAX_PACK_MEMORY_BYTES`, `TRICKLAB_MAX_JOB_SECONDS`) are explained in
  [How jobs run](how-jobs-run.md#what-one-job-may-cost); the limits on requests in
  [the API](api.md#limits-and-bad-input).
"""

_TYPES: dict[object, str] = {
    str: "text",
    int: "integer",
    float: "number",
    Path: "path",
    SecretStr: "secret text",
}
_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def render() -> str:
    """The whole page: the intro, then one table row per setting, in declaration order."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    # Settings' own first, then the Limits it inherits (which pydantic lists first).
    fields = sorted(Settings.model_fields.items(), key=lambda item: item[0] in Limits.model_fields)
    for name, field in fields:
        if not field.description:
            raise ValueError(f"setting {name} has no description: add description= to its Field")
        cells = (
            f"`{prefix}{name.upper()}`",
            _type(field),
            _default(name, field.default),
            field.description,
        )
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return INTRO + "\n## Settings\n\n" + "\n".join(rows) + "\n"


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{choice}`" for choice in get_args(annotation))
    optional = [arg for arg in get_args(annotation) if arg is not type(None)]
    if len(optional) == 1:  # X | None: unset is its own default, described in the row
        annotation = optional[0]
    kind = _TYPES.get(annotation) or str(getattr(annotation, "__name__", annotation))
    bounds = []
    for constraint in field.metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(constraint, attribute, None)
            if isinstance(constraint, annotated_types.BaseMetadata) and value is not None:
                bounds.append(f"{sign} {_number(value)}")
    return f"{kind}, {', '.join(bounds)}" if bounds else kind


def _default(name: str, value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Path):
        text = str(value)
        if not value.is_absolute() and not text.startswith(("~", ".")):
            text = f"./{text}"
        return f"`{text}`"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"`{value}`"
    shown = f"`{_number(value)}`"
    if name.endswith("_bytes"):
        for size, unit in _UNITS:
            if value >= size and value % size == 0:
                return f"{shown} ({value // size} {unit})"
    if name.endswith("_seconds") and value >= 3600 and value % 3600 == 0:
        return f"{shown} ({int(value // 3600)} h)"
    return shown


def _number(value: float) -> str:
    """Integers as integers (`3600`, not `3600.0`), other numbers as Python writes them."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(render())
