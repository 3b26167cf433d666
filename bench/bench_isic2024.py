"""ISIC-2024-shaped benchmark: seconds and peak RSS of every pipeline stage on N synthetic TBP tiles.

    .venv/bin/python bench/bench_isic2024.py --images 100000 [--work DIR] [--layout kaggle|challenge]
    .venv/bin/python bench/bench_isic2024.py --generate-only DEST --images 401059
    .venv/bin/python bench/bench_isic2024.py --mirror DEST --images 401059   # reuses DEST when it matches

It writes an ISIC 2024 mirror (``isic_assets.demo.isic2024``: the real 55-column header, 1,042
patients and 393 malignant at full size, scaled below, distinct 3-5 KB JPEG tiles, HDF5 written
streaming), serves it on loopback, and materializes each asset with the ``dagster`` command line in
its own child process: raw_zips, merge_sources, transformed_images, eda_plots, balanced_splits. The
child reads ``RUSAGE_CHILDREN`` after the command ends: the peak RSS of the largest single process
of that stage (the command and every process it waited for). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isic_assets.core.sources.http_mirror import serve_folder
from isic_assets.demo.isic2024 import generate_isic2024_mirror

# Every asset of the graph in dependency order (eda_plots and balanced_splits read near_duplicates'
# pairs, balanced_splits the evaluation hold-out), each with its blocking checks.
STAGES = ("raw_zips", "merged_images,merged_metadata", "transformed_images", "near_duplicates", "evaluation_sets",
          "eda_plots", "balanced_splits")
SOURCE = "bench_isic2024"


def _child(stage: str) -> int:
    """Inside the wrapper: run the dagster CLI for one asset and print the children's peak RSS."""
    import resource

    dagster = str(Path(sys.executable).with_name("dagster"))
    started = time.perf_counter()
    code = subprocess.call([dagster, "asset", "materialize", "-m", "isic_assets", "--select", stage],
                           stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"stage": stage, "seconds": time.perf_counter() - started, "peak_mib": peak, "code": code}))
    return code


FACTS = "mirror-facts.json"


def generate(mirror: Path, n_images: int, layout: str) -> dict:
    """Generate a mirror and record its facts next to it, so a later run can reuse it."""
    facts = generate_isic2024_mirror(mirror, n_images, layout=layout)
    (mirror / FACTS).write_text(json.dumps(facts), encoding="utf-8")
    return facts


def reusable(mirror: Path, n_images: int, layout: str) -> dict | None:
    """The facts of a mirror generated before with the same size and layout, else None."""
    try:
        facts = json.loads((mirror / FACTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = facts.get("images") == n_images and facts.get("layout") == layout
    return facts if same and all((mirror / name).is_file() for name in facts["files"].values()) else None


def bench(n_images: int, work: Path, layout: str, mirror: Path | None = None, again: bool = False,
          stages: tuple[str, ...] = STAGES, port: int = 0) -> list[dict]:
    mirror = mirror or work / "mirror"
    started = time.perf_counter()
    facts = reusable(mirror, n_images, layout)
    label = f"generate ({layout})"
    if facts is None:
        facts = generate(mirror, n_images, layout)
    else:
        label = f"generate ({layout}, reused)"
    generated = time.perf_counter() - started
    rows = [{"stage": label, "seconds": generated, "peak_mib": None, "code": 0}]
    with serve_folder(mirror, port=port) as server:
        catalog = work / "catalog.yaml"
        files = "\n".join(f"      {role}: {server.url}/{name}" for role, name in facts["files"].items())
        catalog.write_text(f"sources:\n  {SOURCE}:\n    format: isic2024\n    files:\n{files}\n", encoding="utf-8")
        env = {**os.environ, "DAGSTER_HOME": str(work / "dagster_home"), "ISIC_DATA_DIR": str(work / "data"),
               "ISIC_CATALOG": str(catalog), "ISIC_SOURCES": SOURCE}
        (work / "dagster_home").mkdir(parents=True, exist_ok=True)
        for stage, label in [(s, s) for s in stages] + ([(s, f"{s} (no change)") for s in stages] if again else []):
            proc = subprocess.run([sys.executable, __file__, "--child", stage], env=env, check=False,
                                  capture_output=True,
                                  text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"stage": stage, "seconds": None, "peak_mib": None,
                                                        "code": proc.returncode}
            row["stage"] = label
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row["code"]:
                # A failing blocking check (e.g. too few malignant images for the balance check at a
                # tiny size) still ran the stage; a failed download or merge leaves nothing to go on.
                sys.stderr.write(proc.stderr[-2000:])
                if stage in STAGES[:2]:
                    break
    return rows


def _table(n_images: int, rows: list[dict]) -> str:
    lines = [f"ISIC 2024 synthetic mirror, {n_images:,} images", "", "| stage | seconds | peak RSS (MiB) |",
             "|---|---:|---:|"]
    for row in rows:
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        seconds += " (failed)" if row["code"] else ""
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(f"| {row['stage']} | {seconds} | {peak} |")
    return "\n".join(lines)


def _stages(text: str) -> tuple[str, ...]:
    """The stages named on the command line; ``merged_images,merged_metadata`` is one stage."""
    wanted = {name.strip() for name in text.split(",") if name.strip()}
    chosen = tuple(stage for stage in STAGES if set(stage.split(",")) & wanted)
    unknown = wanted - {name for stage in STAGES for name in stage.split(",")}
    if unknown or not chosen:
        raise SystemExit(f"--stages: unknown stage(s) {sorted(unknown)}; expected names from {', '.join(STAGES)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--layout", choices=("kaggle", "challenge"), default="kaggle")
    parser.add_argument("--work", type=Path, default=None, help="kept afterwards when given")
    parser.add_argument("--generate-only", type=Path, default=None, metavar="DEST")
    parser.add_argument("--mirror", type=Path, default=None, metavar="DIR",
                        help="mirror folder: reused when generated before with the same --images and --layout")
    parser.add_argument("--again", action="store_true",
                        help="materialize every stage a second time with nothing changed (the re-run cost)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated stages to run, in order (default: all); with --work and --port, a "
                             "later run can redo one stage on the outputs of an earlier one")
    parser.add_argument("--port", type=int, default=0,
                        help="serve the mirror on this port (default: any free one); keep it between runs "
                             "sharing a --work folder, or the catalog's URLs change and raw_zips downloads again")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    if args.generate_only:
        print(json.dumps(generate(args.generate_only, args.images, args.layout)))
        return 0
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = bench(args.images, args.work, args.layout, args.mirror, args.again, _stages(args.stages), args.port)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-isic2024-") as tmp:
            rows = bench(args.images, Path(tmp), args.layout, args.mirror, args.again, _stages(args.stages), args.port)
    print(_table(args.images, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
