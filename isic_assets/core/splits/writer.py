"""Writing a SplitPlan to ``neural_network_data/`` in the layout every common loader reads as-is.

::

    neural_network_data/
      manifest.csv                      every file: isic_id, split, label, group_id, source, image, ...
      splits.json                       the plan's summary: config, seed, counts, class weights
      .augmented.json                   what each augmented copy was made from (for incremental runs)
      train/metadata.parquet            Hugging Face imagefolder metadata (file_name = benign/...)
      train/benign/ISIC_0000000.jpg     class subfolders: torchvision ImageFolder, Keras
      train/malignant/ISIC_0000002__aug1.jpg    image_dataset_from_directory
      validation/...  test/...

The per-split metadata is Parquet with an explicit schema, not CSV, because that is what makes
``datasets.load_dataset("imagefolder", data_dir=...)`` load all three splits in one call: imagefolder
compares the inferred column types of every split's metadata and refuses a CSV column that is empty
in one split (pandas infers float64) and text in another; and once any metadata file exists it adds
no label from the class folders, so ``label`` is written as the class index and declared a
``ClassLabel`` of the sorted class folders in the schema's ``huggingface`` entry (the form
``datasets`` itself writes and reads back). The index is the one torchvision's ``ImageFolder``
gives the same folders (sorted names), so both loaders agree.

Originals are hard links to ``data_transformed/`` (no second copy of 30k+ images) and fall back
to copies where the filesystem refuses (another device, no link support). A re-run with the same
plan rewrites nothing that is already right and removes whatever a previous config left behind, so
the folder is byte-identical to a fresh write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import layout
from ..atomic import TMP_PREFIX, remove_stale_temporaries, write_bytes_if_changed
from ..compute.batches import BATCHES_IN_FLIGHT_PER_SLOT, BatchEngine, LostBatch, batch_size, batches_of
from ..operation.disk_space import disk_full_errors
from .assign import MANIFEST_COLUMNS, SPLITS, SplitPlan
from .grouping import clean_keys

AugmentFn = Callable[[Path, Path, int], None]
# Opens the engine (core/compute/engine.py) that makes the augmented copies; None: in this process.
EngineOpener = Callable[[], contextlib.AbstractContextManager[BatchEngine]]

SOURCE_PATTERN = "images/{isic_id}.jpg"  # transformed_images' layout under data_transformed/
MANIFEST_NAME = layout.MANIFEST_CSV
SUMMARY_NAME = layout.PLAN_JSON
SPLIT_METADATA_NAME = layout.METADATA_PARQUET
FOLD_COLUMN = "fold"
NO_FOLD = -1  # the fold of a test image (folds cover the train+validation pool only)
AUGMENT_STATE_NAME = ".augmented.json"
# Per-split metadata leaves out file facts of the merged original (size, hash, path in
# merged_data/): they describe a different file from the one written here and would mislead.
_METADATA_DROP = {"image", "width", "height", "sha256", "file_bytes", "exif_orientation"}
_SPLIT_META_LEAD = ["file_name", "label", "isic_id", "group_id", "source", "is_augmented", "augmented_from"]


@dataclass(frozen=True)
class WriteReport:
    """What a write did: new links and copies, files already right, augmented copies, stale removals."""

    out_dir: Path
    files: int
    linked: int
    copied: int
    unchanged: int
    augmented_written: int
    augmented_unchanged: int
    removed: int
    tables_written: tuple[str, ...]
    # Why originals were copied instead of hard-linked (a filesystem without links); empty when linked.
    link_fallback: str = ""

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able form, for run metadata."""
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["tables_written"] = list(self.tables_written)
        return out


def write_splits(
    plan: SplitPlan,
    metadata: pd.DataFrame,
    src_root: Path,
    out_dir: Path,
    make_augmented_copy: AugmentFn | None = None,
    *,
    source_pattern: str = SOURCE_PATTERN,
    augment_version: str = "",
    summary_extra: dict[str, Any] | None = None,
    open_engine: EngineOpener | None = None,
) -> WriteReport:
    """Write ``plan`` under ``out_dir`` from the images under ``src_root`` (``data_transformed/``).

    ``make_augmented_copy(source, destination, seed)`` must write one augmented JPEG at
    ``destination`` (a temporary name ending in ``.jpg`` that the writer renames into place), the
    same bytes for the same seed. ``augment_version`` names the augmentation pipeline: change it
    when the pipeline changes so existing copies are made again. Every source and metadata row is
    checked before anything is written, so a missing one fails without touching the previous output.
    ``summary_extra`` adds settings decided outside the plan (e.g. the near-duplicate mode) to
    ``splits.json``, where the checks read them back.

    ``open_engine`` makes the augmented copies on the step's engine (the fork pool or Dask, per
    ISIC_COMPUTE; ``make_augmented_copy`` must then be picklable); it is opened only when some copy
    is to be made. Without it the copies are made one by one in this process.
    """
    src_root, out_dir = Path(src_root), Path(out_dir)
    manifest = plan.manifest
    _check_image_paths(manifest)
    sources = _source_paths(manifest, src_root, source_pattern)
    extras = _metadata_extras(metadata, manifest)
    augmented = manifest[manifest["is_augmented"]]
    if len(augmented) and make_augmented_copy is None:
        raise ValueError(
            f"the plan has {len(augmented)} augmented copies but no make_augmented_copy was given"
        )
    split_dirs = _expected_dirs(plan)
    placer = _Placer()
    with disk_full_errors("balanced_splits", out_dir):  # the stage, the path and the free space
        for folder in split_dirs:
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
        for row, src in zip(manifest[~manifest["is_augmented"]].itertuples(index=False), sources, strict=True):
            placer.place(src, out_dir / row.image)
        aug_written, aug_unchanged = _write_augmented(
            augmented, src_root, source_pattern, out_dir, make_augmented_copy, augment_version, open_engine
        )
        expected = set(manifest["image"]) | {f"{s}/{SPLIT_METADATA_NAME}" for s in _written_splits(plan)}
        removed = _remove_stale(out_dir, expected, split_dirs)
        tables = _write_tables(plan, extras, out_dir, summary_extra or {})
    return WriteReport(
        out_dir=out_dir,
        files=len(manifest),
        linked=placer.linked,
        copied=placer.copied,
        unchanged=placer.unchanged,
        augmented_written=aug_written,
        augmented_unchanged=aug_unchanged,
        removed=removed,
        tables_written=tuple(tables),
        link_fallback=placer.no_link_reason,
    )


def _check_image_paths(manifest: pd.DataFrame) -> None:
    """Every image path is ``<split>/<class>/<file>`` with no way out of ``out_dir``."""
    for image, split, label in zip(manifest["image"], manifest["split"], manifest["label"], strict=True):
        parts = PurePosixPath(image).parts
        if (
            len(parts) != 3
            or parts[0] != split
            or parts[1] != label
            or parts[0] not in SPLITS
            or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts)
        ):
            raise ValueError(f"manifest image path {image!r} is not <split>/<class>/<file>")


def _source_paths(manifest: pd.DataFrame, src_root: Path, source_pattern: str) -> list[Path]:
    """Source file of every original row, in manifest order; fails listing the first missing ones."""
    originals = manifest.loc[~manifest["is_augmented"], "isic_id"]
    paths = [src_root / source_pattern.format(isic_id=i) for i in originals]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} source images missing under {src_root}, e.g. {missing[:5]}; "
            "materialize transformed_images first"
        )
    return paths


def _written_splits(plan: SplitPlan) -> list[str]:
    """Splits that get a folder: every split with a positive ratio, and any split holding files."""
    used = set(plan.manifest["split"])
    return [s for s, r in zip(SPLITS, plan.config.ratios, strict=True) if r > 0 or s in used]


def _expected_dirs(plan: SplitPlan) -> list[str]:
    """Every class folder in every written split, even when empty.

    A class folder missing from one split would shift ImageFolder's class indices there (it numbers
    the folders it finds); an empty one makes the loader fail loudly instead.
    """
    return [f"{split}/{label}" for split in _written_splits(plan) for label in plan.classes]


class _Placer:
    """Hard-links (or copies) sources into place, skipping what is already right.

    Correct means the same inode as the source (a link made earlier), or a copy with the source's
    size and modification time (``shutil.copy2`` keeps it). A source rewritten since gets a new
    inode from transformed_images' atomic rename, so an old link is detected and replaced.
    """

    def __init__(self) -> None:
        self.linked = self.copied = self.unchanged = 0
        self._can_link = True
        self.no_link_reason = ""

    def place(self, src: Path, dest: Path) -> None:
        if _already_placed(src, dest):
            self.unchanged += 1
            return
        tmp = dest.with_name(TMP_PREFIX + dest.name)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            if self._try_link(src, tmp):
                self.linked += 1
            else:
                shutil.copy2(src, tmp)
                self.copied += 1
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _try_link(self, src: Path, tmp: Path) -> bool:
        if not self._can_link:
            return False
        try:
            os.link(src, tmp)
            return True
        except OSError as exc:
            # Another device or a filesystem without links will refuse every file: stop asking.
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                self._can_link = False
                code = errno.errorcode.get(exc.errno, exc.errno)
                self.no_link_reason = (f"the filesystem refused a hard link ({code}: {exc.strerror}); every "
                                       "original is copied instead (full size on disk)")
            return False


def _already_placed(src: Path, dest: Path) -> bool:
    if dest.is_symlink() or not dest.is_file():
        return False
    s, d = src.stat(), dest.stat()
    if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
        return True
    return s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns


def _write_augmented(
    augmented: pd.DataFrame,
    src_root: Path,
    source_pattern: str,
    out_dir: Path,
    make_copy: AugmentFn | None,
    version: str,
    open_engine: EngineOpener | None = None,
) -> tuple[int, int]:
    """Make every augmented copy not already made from the same source, seed and pipeline version.

    What each copy was made from is recorded in ``.augmented.json`` (source size and mtime, seed,
    pipeline version, hash of the copy); a copy whose record, source file or own bytes changed is
    made again. Copies are per-image work (read, decode, augment, encode, write: about 10-30 ms
    each at 256 px, and oversampling a real archive plans tens of thousands), so with an engine
    they are made on it; the record is written here, from what the workers return.
    """
    state_path = out_dir / AUGMENT_STATE_NAME
    previous = _read_state(state_path)
    state: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, Path, Path, int]] = []
    unchanged = 0
    for row in augmented.itertuples(index=False):
        src = src_root / source_pattern.format(isic_id=row.augmented_from)
        dest = out_dir / row.image
        s = src.stat()
        wanted = {
            "from": row.augmented_from,
            "seed": int(row.aug_seed),
            "source_size": s.st_size,
            "source_mtime_ns": s.st_mtime_ns,
            "version": version,
        }
        old = previous.get(row.image)
        if old is not None and dest.is_file() and not dest.is_symlink() and _same_copy(old, wanted, dest):
            state[row.image] = old
            unchanged += 1
            continue
        state[row.image] = wanted
        todo.append((row.image, src, dest, int(row.aug_seed)))
    if todo:
        assert make_copy is not None
        for image, sha256 in _make_copies(todo, make_copy, open_engine):
            state[image] = {**state[image], "sha256": sha256}
    if state:
        write_bytes_if_changed(state_path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    else:
        # No copies planned: no record either, exactly as a fresh write without oversampling.
        state_path.unlink(missing_ok=True)
    return len(todo), unchanged


def _make_copies(todo: list[tuple[str, Path, Path, int]], make_copy: AugmentFn, open_engine: EngineOpener | None
                 ) -> list[tuple[str, str]]:
    """(image, sha256 of the copy) for every copy in ``todo``, made here or on the engine."""
    if open_engine is None:
        return copy_batch(todo, make_copy)
    made: list[tuple[str, str]] = []
    with open_engine() as engine:
        queue = batches_of(todo, batch_size(len(todo), engine.slots))
        suspects = _map_copies(engine, queue, make_copy, BATCHES_IN_FLIGHT_PER_SLOT * engine.slots, made)
        for item in suspects:  # alone, so no other copy's crash is blamed on it
            for lost in _map_copies(engine, deque([[item]]), make_copy, 1, made):
                raise RuntimeError(f"making the augmented copy {lost[0]} from {lost[1]} killed its worker process, "
                                   "alone too; nothing of this write was recorded")
    return made


def _map_copies(engine: BatchEngine, queue: deque, make_copy: AugmentFn, in_flight: int,
                made: list[tuple[str, str]]) -> list[tuple[str, Path, Path, int]]:
    """Run the queue, adding what was made to ``made``; return the copies that were on a dead worker."""
    suspects = []
    for batch, result in engine.map_batches(copy_batch, queue, (make_copy,), in_flight):
        if not isinstance(result, LostBatch):
            made.extend(result)
        elif len(batch) > 1:
            queue.extend([item] for item in batch)  # find the copy that kills its worker
        else:
            suspects.append(batch[0])
    return suspects


def copy_batch(items: list[tuple[str, Path, Path, int]], make_copy: AugmentFn) -> list[tuple[str, str]]:
    """On a worker (or in the step): make each copy atomically; return (image, sha256) pairs."""
    out = []
    for image, src, dest, seed in items:
        _make_copy(make_copy, src, dest, seed)
        out.append((image, _file_sha256(dest)))
    return out


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _same_copy(old: dict[str, Any], wanted: dict[str, Any], dest: Path) -> bool:
    """Same source, seed and pipeline, and the copy on disk is the one made then.

    The copy is recorded by content hash, not by its own timestamp, so the record (and with it the
    whole folder) is byte-identical whether written fresh or incrementally.
    """
    return all(old.get(k) == v for k, v in wanted.items()) and old.get("sha256") == _file_sha256(dest)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_copy(make_copy: AugmentFn, src: Path, dest: Path, seed: int) -> None:
    tmp = dest.with_name(TMP_PREFIX + dest.name)
    try:
        make_copy(src, tmp, seed)
        if not tmp.is_file():
            raise RuntimeError(f"make_augmented_copy wrote nothing at {tmp}")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _remove_stale(out_dir: Path, expected_files: set[str], expected_dirs: list[str]) -> int:
    """Delete files under the split folders that the plan does not name, then empty stray folders.

    Only ``train/``, ``validation/`` and ``test/`` are swept (plus ``.tmp-`` leftovers at the top),
    so nothing else a user keeps beside them is touched.
    """
    removed = remove_stale_temporaries(out_dir)
    keep_dirs = {out_dir / d for d in expected_dirs} | {(out_dir / d).parent for d in expected_dirs}
    for split in SPLITS:
        root = out_dir / split
        if not root.is_dir() or root.is_symlink():
            if root.is_symlink():
                root.unlink()
                removed += 1
            continue
        for folder, dirnames, filenames in os.walk(root, topdown=False):
            here = Path(folder)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                path = here / name
                if path.relative_to(out_dir).as_posix() not in expected_files:
                    path.unlink()
                    removed += 1
            if here not in keep_dirs and not any(here.iterdir()):
                here.rmdir()
    return removed


def _write_tables(plan: SplitPlan, extras: pd.DataFrame, out_dir: Path, summary_extra: dict[str, Any]) -> list[str]:
    """Per-split imagefolder metadata, then the manifest and summary last (they mark completion)."""
    written = []
    for split in _written_splits(plan):
        rows = plan.manifest[plan.manifest["split"] == split]
        name = f"{split}/{SPLIT_METADATA_NAME}"
        table = _split_metadata(rows, extras, plan.classes)
        if write_bytes_if_changed(out_dir / name, parquet_bytes(table, plan.classes)):
            written.append(name)
    manifest = plan.manifest[manifest_columns(plan.manifest)]
    if write_bytes_if_changed(out_dir / MANIFEST_NAME, _csv_bytes(manifest)):
        written.append(MANIFEST_NAME)
    summary = (json.dumps({**plan.summary(), **summary_extra}, indent=2, sort_keys=True) + "\n").encode()
    if write_bytes_if_changed(out_dir / SUMMARY_NAME, summary):
        written.append(SUMMARY_NAME)
    return written


def _metadata_extras(metadata: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Metadata columns to carry into metadata.csv, one row per original isic_id, all as text."""
    if "isic_id" not in metadata.columns:
        raise ValueError("metadata has no isic_id column")
    ids = clean_keys(metadata["isic_id"])
    columns = [
        c
        for c in metadata.columns
        if c not in _METADATA_DROP and c not in _SPLIT_META_LEAD and c != "isic_id"
    ]
    extras = pd.DataFrame(
        {c: clean_keys(metadata[c]).to_numpy() for c in columns}, index=pd.Index(ids, name="isic_id")
    )
    extras = extras[~extras.index.duplicated(keep="first")]
    originals = manifest["augmented_from"].where(manifest["is_augmented"], manifest["isic_id"])
    missing = sorted(set(originals) - set(extras.index))
    if missing:
        raise ValueError(f"metadata has no row for {len(missing)} images of the plan, e.g. {missing[:5]}")
    return extras


def manifest_columns(manifest: pd.DataFrame) -> list[str]:
    """The manifest's columns as written: the planned ones, plus ``fold`` when folds were made."""
    return MANIFEST_COLUMNS + ([FOLD_COLUMN] if FOLD_COLUMN in manifest.columns else [])


def _split_metadata(rows: pd.DataFrame, extras: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """imagefolder's metadata: ``file_name`` relative to the split folder, the class index, then facts."""
    originals = rows["augmented_from"].where(rows["is_augmented"], rows["isic_id"])
    index_of = {c: i for i, c in enumerate(classes)}
    lead = pd.DataFrame(
        {
            "file_name": rows["image"].str.split("/", n=1).str[1].to_numpy(),
            "label": rows["label"].map(index_of).astype("int64").to_numpy(),
            "isic_id": rows["isic_id"].to_numpy(),
            "group_id": rows["group_id"].to_numpy(),
            "source": rows["source"].to_numpy(),
            "is_augmented": rows["is_augmented"].to_numpy(),
            "augmented_from": rows["augmented_from"].to_numpy(),
        }
    )
    if FOLD_COLUMN in rows.columns:
        lead[FOLD_COLUMN] = rows[FOLD_COLUMN].astype("int64").to_numpy()
    facts = extras.reindex(originals.to_numpy()).reset_index(drop=True)
    return pd.concat([lead, facts], axis=1)


def metadata_schema(table: pd.DataFrame, classes: tuple[str, ...]) -> pa.Schema:
    """The same schema for every split: the class index, the flag and the fold typed, everything else text.

    Typing by column name, never by content, is what keeps the splits' schemas equal when a column
    happens to be empty in one of them.
    """
    fields, features = [], {}
    for column in table.columns:
        if column == "label":
            fields.append(pa.field(column, pa.int64()))
            features[column] = {"names": list(classes), "_type": "ClassLabel"}
        elif column == "is_augmented":
            fields.append(pa.field(column, pa.bool_()))
            features[column] = {"dtype": "bool", "_type": "Value"}
        elif column == FOLD_COLUMN:
            fields.append(pa.field(column, pa.int64()))
            features[column] = {"dtype": "int64", "_type": "Value"}
        else:
            fields.append(pa.field(column, pa.string()))
            features[column] = {"dtype": "string", "_type": "Value"}
    info = json.dumps({"info": {"features": features}}, sort_keys=True)
    return pa.schema(fields, metadata={"huggingface": info})


def parquet_bytes(table: pd.DataFrame, classes: tuple[str, ...]) -> bytes:
    """``table`` as Parquet with :func:`metadata_schema`; the same rows always give the same bytes."""
    schema = metadata_schema(table, classes)
    columns = {
        f.name: (table[f.name].astype(object) if pa.types.is_string(f.type) else table[f.name]).to_numpy()
        for f in schema
    }
    arrow = pa.Table.from_pydict({k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()},
                                 schema=schema)
    buffer = pa.BufferOutputStream()
    pq.write_table(arrow, buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")




# ----------------------------------------------------------------------------------------------
# evaluation_data/: the official evaluation sets, one folder per source


@dataclass(frozen=True)
class EvaluationWriteReport:
    """What writing evaluation_data/ did."""

    files: int
    linked: int
    copied: int
    unchanged: int
    removed: int


def write_evaluation(
    manifest: pd.DataFrame,
    overlap: pd.DataFrame,
    metadata: pd.DataFrame,
    classes: tuple[str, ...],
    src_root: Path,
    out_dir: Path,
    *,
    source_pattern: str = SOURCE_PATTERN,
) -> EvaluationWriteReport:
    """``out_dir/<source>/<class>/<isic_id>.jpg`` + ``<source>/metadata.parquet``, then ``manifest.csv``
    (the splits' columns, ``split`` = evaluation) and ``evaluation_overlap.csv`` last.

    Every evaluation folder gets every class folder and imagefolder metadata of the same schema as
    the splits, so ``load_dataset("imagefolder", data_dir="evaluation_data/<source>")`` and
    ImageFolder number the classes exactly as on the splits. Anything under a folder of
    ``out_dir`` that the manifest does not name is removed, so a re-run equals a fresh write.
    """
    src_root, out_dir = Path(src_root), Path(out_dir)
    sources = _source_paths(manifest, src_root, source_pattern)
    extras = _metadata_extras(metadata, manifest) if len(manifest) else pd.DataFrame()
    folders = list(dict.fromkeys(manifest["source"]))
    expected_dirs = [f"{s}/{c}" for s in folders for c in classes]
    for folder in expected_dirs:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    placer = _Placer()
    for image, src in zip(manifest["image"], sources, strict=True):
        placer.place(src, out_dir / image)
    expected = set(manifest["image"]) | {f"{s}/{SPLIT_METADATA_NAME}" for s in folders}
    removed = remove_stale_temporaries(out_dir) if out_dir.is_dir() else 0
    keep_dirs = {out_dir / d for d in expected_dirs} | {out_dir / s for s in folders}
    for top in sorted(p for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else []:
        for folder, _, filenames in os.walk(top, topdown=False):
            here = Path(folder)
            for name in filenames:
                if (here / name).relative_to(out_dir).as_posix() not in expected:
                    (here / name).unlink()
                    removed += 1
            if here not in keep_dirs and not any(here.iterdir()):
                here.rmdir()
    for source in folders:
        rows = manifest[manifest["source"] == source]
        write_bytes_if_changed(out_dir / source / SPLIT_METADATA_NAME,
                               parquet_bytes(_split_metadata(rows, extras, classes), classes))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_if_changed(out_dir / layout.EVALUATION_OVERLAP_CSV, _csv_bytes(overlap))
    write_bytes_if_changed(out_dir / MANIFEST_NAME, _csv_bytes(manifest[MANIFEST_COLUMNS]))
    return EvaluationWriteReport(len(manifest), placer.linked, placer.copied, placer.unchanged, removed)
