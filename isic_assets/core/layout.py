"""Folder names of every stage under the data root: one place, so no stage guesses another's paths."""

from __future__ import annotations

from pathlib import Path

from .catalog import Source

DEMO_MIRROR = "demo_mirror"
DOWNLOADS = "downloaded_zips"
MERGED = "merged_data"
TRANSFORMED = "data_transformed"
EDA = "data_visual_repr"
SPLITS = "neural_network_data"
LOGS = "logs"


def download_path(root: Path, source: Source, role: str) -> Path:
    """Where raw_zips puts a source's file: ``downloaded_zips/<source>/<file name as published>``."""
    return Path(root) / DOWNLOADS / source.name / source.files[role].filename


def downloaded_files(root: Path, source: Source) -> dict[str, Path]:
    """Every file of a source as downloaded, by role; an error names the first one missing."""
    files = {role: download_path(root, source, role) for role in source.files}
    missing = [f"{role}: {path}" for role, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"source {source.name!r} is not fully downloaded ({'; '.join(missing)}); materialize raw_zips first"
        )
    return files
