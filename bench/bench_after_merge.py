"""Peak memory of the table side of the stages after the merge, per size, each part in a fresh process.

    .venv/bin/python bench/bench_after_merge.py --template T.csv --work DIR --rows 100000 401059
    .venv/bin/python bench/bench_after_merge.py --work DIR --rows 100000 401059 --parts splits,eda --trace

``--template`` is a transformed ``metadata.csv`` of the ISIC 2024 shape (e.g. the demo graph's or a
small bench run's ``data_transformed/metadata.csv``); its rows are repeated up to N rows with distinct
ids, hashes and image names, 1,042 patients, about one lesion id in sixteen and 393 malignant at
401,059 rows (scaled), sorted by id as the pipeline writes it. The merged ``metadata.csv`` is the
same rows with the merged file's columns under their merged names. No image is decoded: the parts
that place files get empty stand-ins for the images they need.

Parts (each the table work of one stage or check, as its Dagster step does it):

- ``splits``: balanced_splits (plan, per-split metadata, manifest, dataset card, run metadata facts);
- ``no_leakage`` and ``evaluation_leakage``: the splits' leakage checks, on the manifest ``splits`` wrote;
- ``evaluation``: evaluation_sets (the hold-out and evaluation_data/);
- ``eda``: eda_plots (figures and report of the merged table);
- ``feasibility``: the merged metadata's balanced_dataset_buildable check (a dry-run plan).

Each part prints one JSON line: seconds, the RSS after imports and the peak RSS (``VmHWM``) above
it (VmHWM); ``--trace`` adds tracemalloc's peak and the ten largest allocation sites at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import pandas as pd

from isic_assets.core import layout

PARTS = ("splits", "no_leakage", "evaluation_leakage", "evaluation", "eda", "feasibility")
PATIENTS, MALIGNANT, FULL = 1042, 393, 401_059
MERGED_NAMES = {"merged_image": "image", "source_width": "width", "source_height": "height",
                "source_sha256": "sha256", "source_file_bytes": "file_bytes"}
OWN = ("image", "width", "height", "sha256", "transform", "transform_fingerprint")


def make_tables(template: Path, rows: int, data: Path, seed: int = 0) -> None:
    """Write data/{data_transformed,merged_data}/ tables of ``rows`` rows shaped like ``template``."""
    base = layout.read_table(template)
    rng = np.random.default_rng(seed)
    take = np.arange(rows) % len(base)
    table = base.iloc[take].reset_index(drop=True)
    ids = pd.Series([f"ISIC_{i:07d}" for i in range(1, rows + 1)])
    table["isic_id"] = ids
    table["patient_id"] = [f"IP_{p:07d}" for p in rng.integers(0, PATIENTS, size=rows)]
    lesions = rng.random(rows) < 1 / 16
    table["lesion_id"] = np.where(lesions, [f"IL_{i:07d}" for i in range(rows)], "")
    malignant = np.zeros(rows, dtype=bool)
    malignant[rng.choice(rows, size=max(2, round(MALIGNANT * rows / FULL)), replace=False)] = True
    for column, yes, no in (("benign_malignant", "malignant", "benign"), ("target", "1", "0"),
                            ("iddx_1", "Malignant", "Benign")):
        if column in table.columns:
            table[column] = np.where(malignant, yes, no)
    for column in ("sha256", "source_sha256"):
        if column in table.columns:
            table[column] = [bytes(row).hex() for row in rng.integers(0, 256, size=(rows, 32), dtype=np.uint8)]
    for column in ("image", "merged_image", "original_name"):
        if column in table.columns:
            table[column] = ("images/" + ids + ".jpg") if column != "original_name" else ids
    transformed = data / layout.TRANSFORMED
    merged = data / layout.MERGED
    transformed.mkdir(parents=True, exist_ok=True)
    merged.mkdir(parents=True, exist_ok=True)
    table.to_csv(transformed / layout.METADATA_CSV, index=False, lineterminator="\n")
    table.drop(columns=[c for c in OWN if c in table.columns]).rename(columns=MERGED_NAMES).to_csv(
        merged / layout.METADATA_CSV, index=False, lineterminator="\n")
    for name, columns in ((layout.DUPLICATES_CSV, ["isic_id", "kept_isic_id", "source", "reason"]),
                          (layout.QUARANTINE_CSV, ["isic_id", "source", "reason"])):
        pd.DataFrame(columns=columns).to_csv(merged / name, index=False, lineterminator="\n")


def _touch_images(data: Path, ids) -> None:
    """Empty stand-ins for the transformed images a part links (the writers check they exist)."""
    folder = data / layout.TRANSFORMED / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for isic_id in ids:
        path = folder / f"{isic_id}.jpg"
        if not path.exists():
            path.touch()


def _status_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _split_config():
    from isic_assets.core.splits.assign import SplitConfig

    return SplitConfig()


def _plan_table(path: Path, label_column: str, plan_columns) -> pd.DataFrame:
    """How balanced_splits reads its pool: ``read_plan_table``, or, in the code before it, ``read_table``."""
    try:
        from isic_assets.core.splits.planning import read_plan_table
    except ImportError:
        return layout.read_table(path, columns=plan_columns(label_column))
    return read_plan_table(path, label_column)


def run_splits(data: Path) -> None:
    """balanced_splits' own work (defs/splits.py, without Dagster), no evaluation source selected."""
    from isic_assets.core.splits.checks import original_ids
    from isic_assets.core.splits.dataset_card import write_dataset_card
    from isic_assets.core.splits.facts import licence_counts, source_facts
    from isic_assets.core.splits.near_duplicates import read_pairs
    from isic_assets.core.splits.planning import plan_columns, plan_splits
    from isic_assets.core.splits.writer import write_splits

    settings = _split_config()
    metadata_csv = data / layout.TRANSFORMED / layout.METADATA_CSV
    pool = _plan_table(metadata_csv, settings.label_column, plan_columns)
    planned = plan_splits(pool, layout.read_table(data / layout.MERGED / layout.DUPLICATES_CSV), settings, True,
                          near_duplicates=read_pairs(data), near_duplicate_mode="group", folds=0, seed=0)
    del pool
    plan = planned.plan
    ids = original_ids(plan.manifest)
    _touch_images(data, ids)
    rows = layout.read_rows_of(metadata_csv, ids)
    out_dir = data / layout.SPLITS_DIR
    write_splits(plan, rows, data / layout.TRANSFORMED, out_dir, summary_extra={"near_duplicates": "group"})
    write_dataset_card(plan.manifest, planned.metadata, out_dir, {**settings.as_dict(), "seed": 0, "folds": 0},
                       source_facts([], getattr(planned, "source_cells", planned.metadata)), {})
    plan.summary()
    licence_counts(plan.manifest, planned.metadata)


def _placed_rows(data: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """defs/checks.py's ``_placed_rows``: the leak columns of the manifest's images, a chunk at a time."""
    from isic_assets.core.splits.checks import original_ids
    from isic_assets.defs.checks import LEAK_COLUMNS

    placed = original_ids(manifest).unique()
    if not hasattr(layout, "read_table_shared"):  # the code before: every row's leak columns
        return layout.read_table(data / layout.TRANSFORMED / layout.METADATA_CSV, columns=LEAK_COLUMNS)
    from isic_assets.core.splits.grouping import stripped_text

    return pd.concat([chunk[stripped_text(chunk["isic_id"]).isin(placed).to_numpy()] for chunk in
                      layout.read_table_chunks(data / layout.TRANSFORMED / layout.METADATA_CSV, LEAK_COLUMNS)],
                     ignore_index=True)


def run_no_leakage(data: Path) -> None:
    from isic_assets.core.splits.checks import leakage
    from isic_assets.core.splits.near_duplicates import read_pairs

    manifest = layout.read_table(data / layout.SPLITS_DIR / layout.MANIFEST_CSV)
    outcome = leakage(manifest, _placed_rows(data, manifest),
                      layout.read_table(data / layout.MERGED / layout.DUPLICATES_CSV),
                      near_duplicates=read_pairs(data))
    assert outcome.passed, outcome.description


def run_evaluation_leakage(data: Path) -> None:
    """No evaluation source selected: the check reads the header only (defs/checks.py)."""
    from isic_assets.core.splits.evaluation import evaluation_leakage
    from isic_assets.core.splits.near_duplicates import read_pairs
    from isic_assets.defs.checks import LEAK_COLUMNS

    table = data / layout.TRANSFORMED / layout.METADATA_CSV
    before = not hasattr(layout, "read_table_shared")  # the code before read every row's leak columns
    offences, _ = evaluation_leakage(layout.read_table(data / layout.SPLITS_DIR / layout.MANIFEST_CSV),
                                     layout.read_table(table, columns=LEAK_COLUMNS) if before
                                     else layout.read_rows_of(table, []),
                                     layout.read_table(data / layout.MERGED / layout.DUPLICATES_CSV),
                                     read_pairs(data), [])
    assert not offences


def run_evaluation(data: Path) -> None:
    """evaluation_sets' own work with no evaluation source selected (the bench's ISIC 2024 graph):
    the header only, as defs/evaluation.py's ``compute_holdout`` reads it then."""
    from isic_assets.core.splits.evaluation import evaluation_columns, hold_out
    from isic_assets.core.splits.near_duplicates import read_pairs
    from isic_assets.core.splits.writer import write_evaluation

    settings = _split_config()
    metadata_csv = data / layout.TRANSFORMED / layout.METADATA_CSV
    before = not hasattr(layout, "read_table_shared")  # the code before read every row's columns
    holdout = hold_out(layout.read_table(metadata_csv, columns=evaluation_columns(settings.label_column)) if before
                       else layout.read_rows_of(metadata_csv, []),
                       layout.read_table(data / layout.MERGED / layout.DUPLICATES_CSV), read_pairs(data), [],
                       label_column=settings.label_column, class_map=settings.class_map)
    metadata = layout.read_rows_of(metadata_csv, holdout.manifest["isic_id"])
    write_evaluation(holdout.manifest, holdout.overlap, metadata, settings.classes, data / layout.TRANSFORMED,
                     data / layout.EVALUATION_DIR)
    holdout.summary()


def run_eda(data: Path) -> None:
    from isic_assets.core.eda.figures import make_eda
    from isic_assets.core.eda.tables import EDA_COLUMNS, MetadataFacts
    from isic_assets.core.splits.near_duplicates import read_pairs

    merged = data / layout.MERGED
    metadata_csv = merged / layout.METADATA_CSV
    make_eda(layout.read_table(metadata_csv, columns=EDA_COLUMNS), layout.read_table(merged / layout.DUPLICATES_CSV),
             layout.read_table(merged / layout.QUARANTINE_CSV), data / layout.EDA, read_pairs(data), ("bench",),
             MetadataFacts.from_chunks(layout.read_table_chunks(metadata_csv), layout.table_columns(metadata_csv)))


def run_feasibility(data: Path) -> None:
    from isic_assets.core.splits.feasibility import balanced_dataset_feasibility
    from isic_assets.core.splits.planning import plan_columns

    settings = _split_config()
    merged = data / layout.MERGED
    balanced_dataset_feasibility(_plan_table(merged / layout.METADATA_CSV, settings.label_column, plan_columns),
                                 layout.read_table(merged / layout.DUPLICATES_CSV), settings, 10)


RUNS = {"splits": run_splits, "no_leakage": run_no_leakage, "evaluation_leakage": run_evaluation_leakage,
        "evaluation": run_evaluation, "eda": run_eda, "feasibility": run_feasibility}


def _child(part: str, data: Path, trace: bool) -> None:
    # Everything a part imports, imported before the baseline is read.
    import isic_assets.core.eda.figures
    import isic_assets.core.splits.dataset_card
    import isic_assets.defs.checks  # noqa: F401
    from isic_assets.core.components import component_labels

    component_labels(2, np.array([0]), np.array([1]))  # scipy's sparse graph modules
    from sklearn.model_selection import StratifiedGroupKFold  # noqa: F401
    from sklearn.utils.class_weight import compute_class_weight  # noqa: F401

    base = _status_mib()
    if trace:
        tracemalloc.start(8)
    started = time.perf_counter()
    RUNS[part](data)
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux keeps a process's ru_maxrss across exec, so a child would report
    # at least the parent's peak (this script's, after writing the tables).
    peak = _status_mib("VmHWM")
    row = {"part": part, "seconds": round(seconds, 1), "base_mib": round(base), "peak_mib": round(peak),
           "above_base_mib": round(peak - base)}
    if trace:
        _, traced_peak = tracemalloc.get_traced_memory()
        row["traced_peak_mib"] = round(traced_peak / 2**20)
        top = tracemalloc.take_snapshot().statistics("traceback")[:10]
        for stat in top:
            print(f"  {stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks", file=sys.stderr)
            for line in stat.traceback.format()[-6:]:
                print("      " + line, file=sys.stderr)
    print(json.dumps(row), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, help="a transformed metadata.csv to repeat (first run per size)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, FULL])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slower; its own peak and top sites)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.data, args.trace)
        return 0
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; expected names from {', '.join(PARTS)}")
    for rows in args.rows:
        data = args.work / f"rows-{rows}" / "data"
        if not (data / layout.TRANSFORMED / layout.METADATA_CSV).is_file():
            if args.template is None:
                raise SystemExit(f"{data} has no tables yet: give --template")
            make_tables(args.template, rows, data)
        for part in parts:
            command = [sys.executable, __file__, "--work", str(args.work), "--child", part, "--data", str(data)]
            proc = subprocess.run(command + (["--trace"] if args.trace else []), capture_output=True, text=True,
                                  check=False, env={**os.environ, "PYTHONHASHSEED": "0"})
            if proc.returncode:
                sys.stderr.write(proc.stderr[-3000:])
                print(json.dumps({"rows": rows, "part": part, "failed": proc.returncode}), flush=True)
                continue
            sys.stderr.write(proc.stderr)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps({"rows": rows, **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
