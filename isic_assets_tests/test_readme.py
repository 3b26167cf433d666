"""The README and docs/ are the user's contract: generated sections must match the code they
describe, and every link between them must lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from isic_assets.core.merge.vocab import render_markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _section(document: str, name: str) -> str:
    text = (REPO / document).read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"{document} lost its {name} markers"
    return match.group(1)


def test_mapping_tables_match_vocab():
    """Regenerate with `make docs` after changing isic_assets/core/merge/vocab.py."""
    assert _section("docs/HARMONIZATION.md", "mapping-tables").strip() == render_markdown().strip()


def test_readme_shows_the_two_setup_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_resolves():
    """The README links its reference tables in docs/ and back; a moved section must not strand them."""
    broken = []
    for document in DOCS:
        text = document.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto, data: URIs in examples
                continue
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.is_file():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_nothing_points_outside_the_repository():
    """A clone has no sibling folders: docs and comments must cite docs/, not a neighbour's files."""
    outside = "../" + "shared"  # split so this test does not find itself
    suffixes = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".txt"}
    skipped = {".venv", ".git", "test-artifacts", ".dagster_home", "data", "isic_assets.egg-info"}
    offenders = [
        str(path.relative_to(REPO))
        for path in REPO.rglob("*")
        if path.suffix in suffixes and path.is_file()
        and not skipped & set(path.relative_to(REPO).parts)
        and outside in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not offenders, offenders
