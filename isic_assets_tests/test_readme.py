"""The README is the user's contract: generated sections must match the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from isic_assets.core.merge.vocab import render_markdown

REPO = Path(__file__).resolve().parents[1]


def _section(name: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"README.md lost its {name} markers"
    return match.group(1)


def test_mapping_tables_match_vocab():
    """Regenerate with `make docs` after changing isic_assets/core/vocab.py."""
    assert _section("mapping-tables").strip() == render_markdown().strip()


def test_readme_shows_the_two_setup_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
