"""Where the demo mirror is served: the ``{demo_mirror}`` placeholder of the demo sources.

raw_zips generates and serves the mirror over loopback for the length of a run unless
$ISIC_DEMO_MIRROR_URL names a mirror served elsewhere (``python -m isic_assets.demo serve DIR``);
the sources sensor can only watch the mirror in that second case.
"""

from __future__ import annotations

import os

DEMO_PLACEHOLDER = "demo_mirror"
DEMO_MIRROR_URL_ENV = "ISIC_DEMO_MIRROR_URL"


def demo_mirror_url() -> str | None:
    """The external demo mirror's base URL from $ISIC_DEMO_MIRROR_URL, or None when unset."""
    return os.environ.get(DEMO_MIRROR_URL_ENV, "").strip().rstrip("/") or None
