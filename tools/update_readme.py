"""Regenerate the documentation derived from code (``make docs``).

The harmonization tables live in ``isic_assets/core/merge/vocab.py``; copying them by hand into a
document would let the two drift, so docs/HARMONIZATION.md holds a generated copy between markers
and a test fails when it is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isic_assets.core.merge.vocab import render_markdown

#: document (relative to the repository) -> {marker name: function producing the section}
GENERATED = {
    "docs/HARMONIZATION.md": {"mapping-tables": render_markdown},
}


def replace_section(text: str, name: str, body: str, where: str) -> str:
    """Replace what sits between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{where} has no <!-- {name}:start/end --> markers")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> None:
    for relative, sections in GENERATED.items():
        path = REPO / relative
        text = path.read_text(encoding="utf-8")
        for name, render in sections.items():
            text = replace_section(text, name, render(), relative)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
