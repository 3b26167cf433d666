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


def api_folder(root: Path, source: Source) -> Path:
    """Where an ``isic_api`` source's images/ and metadata.csv are downloaded."""
    return Path(root) / DOWNLOADS / source.name


def downloaded_files(root: Path, source: Source) -> dict[str, Path]:
    """Every file of a source as downloaded, by role; an error names the first one missing."""
    if source.format == "isic_api":
        folder = api_folder(root, source)
        if not (folder / "metadata.csv").is_file():
            raise FileNotFoundError(f"source {source.name!r} has no {folder / 'metadata.csv'}; "
                                    "materialize raw_zips first")
        return {"folder": folder}
    files = {role: download_path(root, source, role) for role in source.files}
    missing = [f"{role}: {path}" for role, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"source {source.name!r} is not fully downloaded ({'; '.join(missing)}); materialize raw_zips first"
        )
    return files
