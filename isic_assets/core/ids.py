"""ISIC image identifiers: one canonical spelling for every year's variant.

The archive spells an image id ``ISIC_`` + 7 digits (isic: ``isic/core/constants.py``). The 2019
training set adds a ``_downsampled`` suffix to 2,074 names (docs/ISIC_SOURCES.md 1.3), and zips put
members under a top folder; all of them must join on the bare id.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

ISIC_ID_RE = re.compile(r"^ISIC_[0-9]{7}$")
_MEMBER_RE = re.compile(r"^(ISIC_[0-9]{7})(_downsampled)?\.(jpe?g|png|tiff?|bmp|webp)$", re.IGNORECASE)
_NAME_RE = re.compile(r"^(ISIC_[0-9]{7})(_downsampled)?$")



def normalize_isic_id(name: str) -> str | None:
    """Return the canonical ``ISIC_NNNNNNN`` for an id as written in a CSV, or None if it is not one.

    Accepts the ``_downsampled`` suffix and surrounding whitespace; anything else is rejected so a
    malformed id surfaces as an error upstream instead of silently joining with nothing.
    """
    match = _NAME_RE.match(name.strip())
    return match.group(1) if match else None


def isic_id_from_member(member_name: str) -> str | None:
    """Return the ISIC id an archive member holds, or None for superpixels, masks and other files.

    Only the last path component is looked at, so ``../`` or absolute member names can never steer
    where the image is written: output names are built from the id alone.
    """
    base = PurePosixPath(member_name.replace("\\", "/")).name
    match = _MEMBER_RE.match(base)
    return match.group(1) if match else None


def member_extension(member_name: str) -> str:
    """Lower-case extension of an image member, with ``.jpeg`` spelled ``.jpg``."""
    suffix = PurePosixPath(member_name.replace("\\", "/")).suffix.lower()
    return ".jpg" if suffix == ".jpeg" else suffix
