"""Peak RSS of each phase of one merge, in this process, on an ISIC-2024-shaped mirror.

    .venv/bin/python bench/bench_isic2024.py --generate-only bench-mirror-30k --images 30000
    .venv/bin/python bench/bench_merge_phases.py --mirror bench-mirror-30k --out bench-merge-30k   # first run
    .venv/bin/python bench/bench_merge_phases.py --mirror bench-mirror-30k --out bench-merge-30k   # re-run

Wraps the merge's phase functions (harmonizing the formats read whole, combining a range of ids,
listing, scan, duplicate resolution, sync, metadata, tables; an ISIC 2024 CSV's chunks count under
"other") and samples the resident set every 20 ms, so each phase shows the RSS it started
at, its peak and where it ended: the phase whose peak rises with the number of images is the one
holding per-image state. The Dagster process around a real run adds its own ~350 MiB; this measures
the merge alone. Seconds are wall time and mean little on a loaded machine; the MiB do not depend on load.
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_PAGE = resource.getpagesize()
PHASES = ("harmonize_source", "combine_sources", "_open_scan", "scan_source", "resolve_duplicates", "quarantine",
          "_sync_images", "build_metadata", "write_metadata", "write_tables")


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True, help="a kaggle-layout mirror (train-image.hdf5 ...)")
    parser.add_argument("--out", type=Path, required=True, help="merged_data folder; keep it to measure a re-run")
    args = parser.parse_args()
    stack = ["other"]
    peaks: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}

    def sample() -> None:
        while True:
            rss, phase = _rss_mib(), stack[-1]
            start_peak_end = peaks.setdefault(phase, [rss, rss, rss])
            start_peak_end[1] = max(start_peak_end[1], rss)
            start_peak_end[2] = rss
            time.sleep(0.02)

    from isic_assets.core.merge import duplicates, id_ranges, merge_sources

    def wrap(module: object, name: str) -> None:
        real = getattr(module, name)

        @functools.wraps(real)
        def timed(*a: object, **k: object) -> object:
            stack.append(name)
            started = time.monotonic()
            try:
                return real(*a, **k)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.monotonic() - started
                stack.pop()
        setattr(module, name, timed)

    for name in PHASES:
        for module in (merge_sources, duplicates, id_ranges):
            if hasattr(module, name):
                wrap(module, name)
    after_imports = _rss_mib()
    threading.Thread(target=sample, daemon=True).start()
    source = merge_sources.SourceArchive(
        name="bench_isic2024", format="isic2024", order=0,
        files={"images": args.mirror / "train-image.hdf5", "metadata": args.mirror / "train-metadata.csv"})
    started = time.monotonic()
    report = merge_sources.merge_sources([source], args.out, log=lambda _m: None)
    total = time.monotonic() - started
    time.sleep(0.1)
    print(f"{len(report.table):,} images, {report.scanned:,} checked this run, {total:.0f} s; "
          f"RSS after imports {after_imports:.0f} MiB")
    print("| phase | start MiB | peak MiB | end MiB | seconds |\n|---|---:|---:|---:|---:|")
    for phase, (start, peak, end) in peaks.items():
        print(f"| {phase} | {start:.0f} | {peak:.0f} | {end:.0f} | {seconds.get(phase, 0.0):.1f} |")
    print(f"peak RSS (VmHWM) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
