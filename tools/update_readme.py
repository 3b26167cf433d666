"""Regenerate the README sections that are derived from code (``make docs``).

The harmonization tables live in ``isic_assets/core/vocab.py``; copying them by hand into the README
would let the two drift, so the README holds a generated copy between markers and a test fails when
it is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isic_assets.core.merge.vocab import render_markdown


def replace_section(text: str, name: str, body: str) -> str:
    """Replace what sits between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name}:start/end --> markers")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(replace_section(text, "mapping-tables", render_markdown()), encoding="utf-8")


if __name__ == "__main__":
    main()
