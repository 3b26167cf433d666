"""``make clean``: delete what the pipeline wrote under the data root, and nothing of the user's.

Only the folders the pipeline creates (layout.py names them) are deleted, each one said aloud with
its size. Whatever else lives under the data root stays: the dropzone (files a user put there), a
user catalog, anything unknown. A pipeline folder that holds the dropzone or the catalog
(``ISIC_DROPZONE`` or ``ISIC_CATALOG`` pointing inside it) is kept, with the reason.

    python -m isic_assets.core.operation.clean_outputs [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .. import layout
from .cleanup import folder_size
from .data_lock import LOCK_DIR

# Everything a run writes directly under the data root (the run logs, unless ISIC_LOGS_DIR moves them).
PIPELINE_FOLDERS = (layout.DEMO_MIRROR, layout.DOWNLOADS, layout.MERGED, layout.TRANSFORMED, layout.EDA,
                    layout.SPLITS_DIR, layout.EVALUATION_DIR, layout.LOGS, layout.STAGE_RECORDS, LOCK_DIR)
USER_PATH_ENVS = ("ISIC_DROPZONE", "ISIC_CATALOG")


def _user_paths() -> dict[str, Path]:
    return {env: Path(os.environ[env]).expanduser().resolve() for env in USER_PATH_ENVS if os.environ.get(env)}


def clean_outputs(root: Path, dry_run: bool = False, say: Callable[[str], None] = print) -> int:
    """Delete the pipeline's folders under ``root``; return the bytes freed (or that would be)."""
    root = Path(root).resolve()
    protected = _user_paths()
    freed = 0
    if not root.is_dir():
        say(f"nothing to clean: {root} does not exist")
        return 0
    for name in PIPELINE_FOLDERS:
        path = root / name
        if not path.exists():
            continue
        inside = [f"{env}={where}" for env, where in protected.items() if where == path or path in where.parents]
        if inside:
            say(f"keeping {path}: it holds {', '.join(inside)}")
            continue
        size = folder_size(path)
        say(f"{'would delete' if dry_run else 'deleting'} {path} ({size / 1e6:.1f} MB)")
        if not dry_run:
            shutil.rmtree(path)
        freed += size
    kept = sorted(p.name for p in root.iterdir() if p.name not in PIPELINE_FOLDERS) if root.is_dir() else []
    if kept:
        say(f"kept everything else in {root} (not written by the pipeline): {', '.join(kept)}")
    say(f"{'would free' if dry_run else 'freed'} {freed / 1e6:.1f} MB")
    return freed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isic_assets.core.operation.clean_outputs",
                                     description="Delete what the pipeline wrote under ISIC_DATA_DIR (never the "
                                                 "dropzone or a user catalog).")
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    clean_outputs(layout.data_root(), dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
