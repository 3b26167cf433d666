"""Harmonize every ISIC metadata format to one unified frame (see :mod:`.common`)."""

from .common import *  # noqa: F403
from .common import harmonize
