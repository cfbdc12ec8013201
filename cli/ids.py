"""Short ids: a job's, study's or search's id given by its first hex digits, as git takes a
commit's, resolved to the one full id it starts. The server lists the items the caller can see
whose id starts so (`id_prefix`): a user's own, an admin's everyone's, so a prefix never reveals
another owner's ids to a user. Its messages say "you can see", true of either role, as the CLI
does not ask which the caller has."""

from __future__ import annotations

import re
from typing import Any, Literal

from cli.client import NOT_FOUND, Api, Failure

FULL_ID = re.compile(r"[0-9a-f]{32}")
# As the API's id_prefix: 4 digits at least, as git asks of a short commit id.
MIN_PREFIX = 4
PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},32}}")
# How many candidates an ambiguous prefix lists.
CANDIDATES = 10

Noun = Literal["job", "study", "search"]
# Each noun's list route, and its key in the list's answer (the noun's plural).
LISTS = {
    "job": ("/v1/jobs", "jobs"),
    "study": ("/v1/studies", "studies"),
    "search": ("/v1/searches", "searches"),
}


def resolve_id(client: Api, noun: Noun, given: str) -> str:
    """The full id that `given` names: itself when whole (the server then says whether it
    exists), else the one id the caller can see that starts with it. Exit 4, saying why, when it
    names none or several."""
    text = given.strip().lower()
    if FULL_ID.fullmatch(text):
        return text
    if not PREFIX.fullmatch(text):
        raise Failure(
            f"no {noun} {given!r}: an id is 32 hex digits (0-9, a-f), and its first "
            f"{MIN_PREFIX} or more name it when no other {noun} you can see starts with them",
            NOT_FOUND,
        )
    path, key = LISTS[noun]
    listing = client.get(path, id_prefix=text, limit=CANDIDATES)
    found: list[dict[str, Any]] = listing[key]
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        raise Failure(f"no {noun} you can see has an id starting with {text!r}", NOT_FOUND)
    total = listing.get("total") or len(found)
    lines = [f"  {candidate_line(noun, item)}" for item in found]
    if total > len(found):
        lines.append(f"  … and {total - len(found)} more")
    raise Failure(
        f"{text!r} is ambiguous: {total} {key} you can see have ids starting with it; give "
        "more of the id:\n" + "\n".join(lines),
        NOT_FOUND,
    )


def candidate_line(noun: Noun, item: dict[str, Any]) -> str:
    """One of the items a prefix names: its id, status, when it was made, and a study's or
    search's name."""
    name = f" {item['name']!r}" if noun != "job" and item.get("name") else ""
    created = str(item.get("created_at", ""))[:19].replace("T", " ")  # to the second
    return f"{item['id']} {item['status']}{name} created {created}"
