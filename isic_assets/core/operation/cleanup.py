"""Free disk space by deleting intermediate folders that every later step has already consumed.

The raw ISIC downloads are the largest thing on disk (about 35 GB for the five challenge years) and,
once merged, only matter again when the merge itself must be recomputed. Each target below says
which assets must have been materialized after the folder was last written (so nothing downstream
still waits for it) and what the deletion costs the next run; the Dagster op reads the
materialization times from the instance and passes them in, so this module stays pure.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import layout


@dataclass(frozen=True)
class CleanTarget:
    """A deletable folder: who writes it, who reads it, and what deleting it costs."""

    name: str
    rel_path: str
    written_by: str | None  # asset whose materialization last wrote the folder (None: any time)
    read_by: tuple[str, ...]  # assets that must be materialized at or after written_by
    cost: str


TARGETS: dict[str, CleanTarget] = {
    "downloads": CleanTarget(
        "downloads", layout.DOWNLOADS, "raw_zips", ("merged_images", "merged_metadata"),
        "the next raw_zips downloads every file again (its manifest is deleted too); until then "
        "merged_images and merged_metadata cannot be recomputed. The merge state is kept, so no image is "
        "decoded again after the re-download.",
    ),
    "demo_mirror": CleanTarget(
        "demo_mirror", layout.DEMO_MIRROR, None, ("raw_zips",),
        "the next raw_zips that selects a demo source generates it again (seconds) and, its files being "
        "new, downloads them again (about 70 MB). Do not delete it while `python -m isic_assets.demo serve` "
        "serves it.",
    ),
    "merged_images": CleanTarget(
        "merged_images", f"{layout.MERGED}/images", "merged_images", ("transformed_images",),
        "the full-resolution kept images are gone: the merged_images images_readable check fails and "
        "the next merge copies every kept image out of downloaded_zips again (which must be there). "
        "Transformed images and splits are unaffected.",
    ),
}
DEFAULT_TARGETS = ("downloads", "demo_mirror")


@dataclass(frozen=True)
class CleanDecision:
    """What happens to one target: deleted (``delete``) or kept, and why."""

    target: CleanTarget
    path: Path
    delete: bool
    reason: str
    size_bytes: int


def parse_targets(names: str | Iterable[str] | None) -> list[CleanTarget]:
    """Targets from a comma-separated string or a list; empty means the defaults."""
    raw = names.split(",") if isinstance(names, str) else list(names or [])
    wanted = [n.strip() for n in raw if n and n.strip()] or list(DEFAULT_TARGETS)
    unknown = [n for n in wanted if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown clean target(s) {unknown}; choose from {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(wanted)]


def plan_cleanup(root: Path, targets: Iterable[CleanTarget],
                 materialized_at: Mapping[str, float | None]) -> list[CleanDecision]:
    """Decide each target from the latest materialization time of every asset (None: never).

    A folder is deleted only when every reader was materialized at or after the writer's latest
    materialization: then no later step of the current graph still needs it. An asset the instance
    has never seen materialized vouches for nothing, so its folder is kept.
    """
    decisions = []
    for target in targets:
        path = Path(root) / target.rel_path
        size = folder_size(path)
        if not path.exists():
            decisions.append(CleanDecision(target, path, False, "nothing to delete", 0))
            continue
        reason = _blocker(target, materialized_at)
        decisions.append(CleanDecision(target, path, reason is None, reason or "every reader is up to date", size))
    return decisions


def apply_cleanup(decisions: Iterable[CleanDecision]) -> int:
    """Delete the folders marked for deletion; returns the bytes freed."""
    freed = 0
    for decision in decisions:
        if decision.delete and decision.path.exists():
            shutil.rmtree(decision.path)
            freed += decision.size_bytes
    return freed


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when absent)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _blocker(target: CleanTarget, materialized_at: Mapping[str, float | None]) -> str | None:
    written = materialized_at.get(target.written_by) if target.written_by else None
    if target.written_by and written is None:
        return (f"{target.written_by} was never materialized on this data root in this Dagster instance; keeping "
                "what it cannot vouch for")
    for reader in target.read_by:
        read = materialized_at.get(reader)
        if read is None:
            return f"{reader} was never materialized: it still needs {target.rel_path}/"
        if written is not None and read < written:
            return f"{reader} is older than the latest {target.written_by}: it still needs {target.rel_path}/"
    return None
