"""isic-assets: the ISIC skin-lesion archive as a Dagster asset graph.

``defs`` is loaded lazily (PEP 562) so that ``import isic_assets.core`` stays free of Dagster:
the pure core can be used from a training script or a process-pool worker without paying for the
orchestrator. Dagster's module loader lists attributes with ``dir()`` and reads them with
``getattr``, so ``dagster ... -m isic_assets`` still finds ``defs``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from .definitions import defs

        return defs
    raise AttributeError(f"module 'isic_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
