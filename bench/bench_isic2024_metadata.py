"""Memory of the merge's metadata side for one ISIC 2024 source: harmonize + combine, per row count.

    .venv/bin/python bench/bench_isic2024_metadata.py --rows 100000 401059
    .venv/bin/python bench/bench_isic2024_metadata.py --rows 100000 401059 --whole   # the whole-file functions

For each size it writes a ``train-metadata.csv`` of that many rows (``isic_assets.demo.isic2024``:
the real 55-column header, no images needed), then in a fresh child process harmonizes and combines
it as the merge does (a chunk of rows, then a range of ids at a time, the combined rows read back
once as the table writing does; ``--whole``: ``harmonize_isic2024`` and ``combine_sources`` on the
whole file) and prints the peak RSS above the RSS after imports. The difference between two sizes
divided by their row difference is the per-row cost, the number that decides whether 401,059 rows fit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _status(field: str) -> int:
    """A VmRSS / VmHWM figure of this process, in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0]) // 1024


def _child(csv_path: Path, whole: bool) -> None:
    from isic_assets.core.merge.combine import combine_sources
    from isic_assets.core.merge.harmonize.isic2024 import harmonize_isic2024, with_image_type
    from isic_assets.core.merge.merge_sources import SourceArchive, _harmonized_metadata
    from isic_assets.core.merge.state_store import MergeState
    from isic_assets.core.merge.zip_stream import ZipLimits

    base = _status("VmRSS")
    started = time.perf_counter()
    if whole:
        harmonized = harmonize_isic2024(csv_path)
        harmonize_peak = _status("VmHWM")
        combine_sources([("bench", with_image_type("isic2024", harmonized.frame))])
    else:
        import h5py

        images = csv_path.with_suffix(".hdf5")
        h5py.File(images, "w").close()  # told apart by content: an empty HDF5 file, no images needed
        source = SourceArchive(name="bench", format="isic2024", order=0,
                               files={"images": images, "metadata": csv_path})
        state = MergeState(csv_path.parent / "_state", lambda _m: None, False)
        try:
            with _harmonized_metadata([source], {"bench": 0}, state, ZipLimits()) as metadata:
                harmonize_peak = _status("VmHWM")
                rows = sum(len(chunk) for chunk in metadata.chunks())
                assert rows == metadata.rows["bench"], (rows, metadata.rows)
        finally:
            state.close()
    print(json.dumps({"seconds": time.perf_counter() - started, "base_mib": base, "peak_mib": _status("VmHWM"),
                      "harmonize_peak_mib": harmonize_peak}))


def _write_csv(path: Path, rows: int) -> None:
    from isic_assets.demo import isic2024

    ids = isic2024.isic_ids(rows, 0)
    patients, malignant = isic2024.scaled(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        isic2024._csv_text(isic2024.HEADER_2024, isic2024.metadata_rows(ids, patients, malignant, 0), handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 40_000])
    parser.add_argument("--whole", action="store_true", help="the whole-file functions, not the merge's chunks")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.whole)
        return 0
    lines = ["| rows | CSV MB | harmonize (and combine, chunked) peak above imports (MiB) | with combine (MiB) "
             "| seconds |",
             "|---:|---:|---:|---:|---:|"]
    previous = None
    with tempfile.TemporaryDirectory(prefix="bench-isic2024-metadata-") as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"train-metadata-{rows}.csv"
            _write_csv(path, rows)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), *(["--whole"] * args.whole)],
                                 check=True,
                                 capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            growth = result["peak_mib"] - result["base_mib"]
            harmonizing = result["harmonize_peak_mib"] - result["base_mib"]
            lines.append(f"| {rows:,} | {path.stat().st_size / 1e6:.0f} | +{harmonizing} | +{growth} "
                         f"| {result['seconds']:.0f} |")
            if previous is not None:
                per_row = (growth - previous[1]) * 1024 * 1024 / (rows - previous[0])
                lines.append(f"| slope | | | {per_row / 1000:.1f} KB per row | |")
            previous = (rows, growth)
            for leftover in Path(tmp).iterdir():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
