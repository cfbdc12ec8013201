"""The docs hold: the configuration page is the settings' own, every relative link and image in
the README and docs/ reaches a file (and a heading, for a #anchor), and the README stays a
front door."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import config_doc
from core.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be followed by a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than
    hyphens and underscores removed, spaces turned into hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("*", "").replace("~", "")
    text = "".join(ch for ch in text.lower() if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, repeated headings numbered as GitHub does (`name`, `name-1`)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's links and images, code left out."""
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        targets.extend(match.group(1) for match in LINK.finditer(line))
    return targets


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if not target or EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}: {target}"
        if not file.exists():
            problems.append(f"{where}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{where}: no heading with anchor #{anchor} in {file.name}")
    return problems


def test_the_configuration_page_is_generated_from_the_settings():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_doc.render(), (
        "docs/configuration.md differs from the settings (stale, or edited by hand). Regenerate it with "
        f"`{config_doc.COMMAND}` and commit it."
    )


def test_every_setting_has_a_description():
    from core.config import Settings

    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move details into a "
        "page under docs/ and link it"
    )
    linked = {target.partition("#")[0] for target in links(README)}
    unlinked = [
        page.relative_to(ROOT).as_posix()
        for page in PAGES[1:]
        if page.relative_to(ROOT).as_posix() not in linked
    ]
    assert unlinked == [], "every docs page is linked from the README"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Studies: comparing tricks honestly", "studies-comparing-tricks-honestly"),
        ("What one job may cost", "what-one-job-may-cost"),
        ("Reliability, tested", "reliability-tested"),
        ("Resume, don't restart", "resume-dont-restart"),
        ("`/v1/compare` and `TRICKLAB_PACK_SIZE`", "v1compare-and-tricklab_pack_size"),
        ("See [the API](api.md) — twice", "see-the-api--twice"),
        ("**Bold** *and* plain", "bold-and-plain"),
    ],
)
def test_anchors_follow_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_found(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "there.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[fine](there.md#a-heading) [gone](missing.md) [no anchor](there.md#nowhere)\n"
        "![image](img/none.png) [outside](https://example.org/x) `[code](skipped.md)`\n"
        "```\n[fenced](skipped.md)\n```\n[here](#local) and [not here](#elsewhere)\n"
        "## Local\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [p.split(": ")[1] for p in problems] == [
        "missing.md",
        "there.md#nowhere",
        "img/none.png",
        "#elsewhere",
    ]


@pytest.mark.parametrize("recipe", sorted((ROOT / "docs" / "recipes").glob("*.json")), ids=str)
def test_every_recipe_is_a_job_spec_without_a_seed(recipe):
    document = json.loads(recipe.read_text())
    assert "seed" not in document  # a recipe, not one run
    assert JobSpec.model_validate(document).model_dump(mode="json") == {**document, "seed": 0}
