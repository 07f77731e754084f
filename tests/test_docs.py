"""The README and docs/: every relative link leads to a file, and every #anchor to a heading in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 150


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def without_code(text: str) -> str:
    """The text outside ``` fences and `inline code` (where brackets are not links)."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", without_fences(document.read_text()), re.MULTILINE)
    return {anchor(heading) for heading in headings}


def relative_links(document: Path) -> list[str]:
    links = LINK.findall(without_code(document.read_text()))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(document: Path) -> None:
    broken = []
    for link in relative_links(document):
        path, _, fragment = link.partition("#")
        target = (document.parent / path).resolve() if path else document
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link}: no heading #{fragment}")
    assert broken == [], f"{document.relative_to(ROOT)}: {broken}"


def test_the_readme_is_a_first_hour_and_links_every_document() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= README_MAX_LINES
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(readme)}
    unlinked = [path.name for path in DOCUMENTS[1:] if path.resolve() not in linked]
    assert unlinked == []


def test_the_anchor_of_a_heading_is_githubs() -> None:
    assert anchor("Provider calls: the retry policy") == "provider-calls-the-retry-policy"
    assert anchor("`dev`, and dispatch") == "dev-and-dispatch"
    assert "dev-and-dispatch" in anchors(ROOT / "docs" / "local-run.md")
    assert len(relative_links(ROOT / "README.md")) >= 10
