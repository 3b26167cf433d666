"""isic-assets: the ISIC skin-lesion archive as a Dagster asset graph.

The code location's Definitions are exposed lazily (PEP 562) as ``code_location`` so that
``import isic_assets.core`` stays free of Dagster: the pure core can be used from a training script
or a pool worker without paying for the orchestrator. Dagster's module loader lists attributes with
``dir()`` and reads them with ``getattr``, so ``dagster ... -m isic_assets`` still finds them.

The name is not ``defs``: ``isic_assets.defs`` is the Dagster layer's package, and Python sets a
subpackage as an attribute of its parent once it is imported, which would hide a lazy ``defs``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["code_location"]


def __getattr__(name: str) -> Any:
    if name == "code_location":
        from .definitions import defs

        return defs
    raise AttributeError(f"module 'isic_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "code_location"])
