"""Where ``transformed_images`` holds memory per image: the peak RSS of each phase, in one process.

    PYTHONPATH=. .venv/bin/python bench/bench_transform_memory.py MERGED_DIR OUT_DIR [--runs N]
        [--tracemalloc] [--check]

``MERGED_DIR`` is a ``merged_data/`` folder (metadata.csv and images/), read only; ``OUT_DIR`` is
where the transformed outputs go (a ``data_transformed/``, created if missing and kept, so a second
invocation measures a no-change re-run). Each run does what the asset does without Dagster: read
the job table, ``transform_images`` on the local fork pool (2 workers, 256 px), then
``write_transform_tables`` and the data-version digest. ``--check`` then runs the
``transformed_images_readable`` check's core on the written metadata.csv (``--runs 0 --check``:
the check alone). Runs share the process, so a second run starts from the heap the first left; a
Dagster step's process has its whole code location imported (tens of MiB more at the start).

Per phase it prints the peak RSS of this process within the phase (``VmHWM`` after resetting it
with ``/proc/self/clear_refs``, Linux only), its RSS at the end, and for the phase that forks the
largest RSS a worker reached (sampled ten times a second). ``--tracemalloc`` adds the Python
allocations held at the end of each phase and at its peak, and the largest allocation sites still
held at its end (slow: use it on a small input).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _status(pid: int | str = "self") -> dict[str, int]:
    fields = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found.extend(int(child) for child in handle.read().split())
    return found


class WorkerPeak:
    """The largest RSS any descendant of this process had, sampled ten times a second."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            todo = _children(os.getpid())
            while todo:
                pid = todo.pop()
                self.peak = max(self.peak, _status(pid).get("VmRSS", 0))
                todo.extend(_children(pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Phases:
    """Prints one line per phase: seconds, peak and final RSS, worker peak, held Python memory."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.rows: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        if self.trace:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
        workers = WorkerPeak()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        worker = workers.stop()
        status = _status()
        row = (f"{name:<28} {seconds:7.1f} s  peak {status['VmHWM'] / MIB:6.0f} MiB  "
               f"after {status['VmRSS'] / MIB:6.0f} MiB  workers {worker / MIB:6.0f} MiB")
        if self.trace:
            held, peak = tracemalloc.get_traced_memory()
            row += f"  python held {(held - before) / MIB:+6.1f} peak {(peak - before) / MIB:+6.1f} MiB"
        print(row, flush=True)
        if self.trace:
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:6]:
                print(f"      {stat.size / MIB:7.1f} MiB  {stat.count:8d}  {stat.traceback}", flush=True)


def wrap(module: Any, name: str, phases: Phases, label: str) -> None:
    """Measure every call of ``module.name`` as a phase."""
    original: Callable[..., Any] = getattr(module, name)

    def measured(*args: Any, **kwargs: Any) -> Any:
        with phases.phase(label):
            return original(*args, **kwargs)

    setattr(module, name, measured)


def run(merged: Path, out: Path, phases: Phases) -> None:
    from isic_assets.core import layout
    from isic_assets.core.transform import runner
    from isic_assets.core.transform.image_ops import TransformSettings
    from isic_assets.core.transform.records import JobTable
    from isic_assets.core.transform.tables import write_transform_tables
    from isic_assets.defs.transform import data_version_digest

    settings = TransformSettings(size=256)
    with phases.phase("job table"):
        jobs = JobTable.read(merged, merged / layout.METADATA_CSV)
    with phases.phase("transform_images (all)"):
        report = runner.transform_images(jobs, out, settings, workers=2, log=lambda _m: None)
    del jobs
    print(f"  processed {report.processed}, skipped {report.skipped}, removed {report.removed}, "
          f"quarantined {report.quarantined}", flush=True)
    with phases.phase("write_transform_tables"):
        table = write_transform_tables(layout.read_table_chunks(merged / layout.METADATA_CSV), report,
                                       settings, out)
    with phases.phase("data-version digest"):
        digest = data_version_digest(report)
    print(f"  {table.rows} rows, data version {digest[:32]}", flush=True)


def check(out: Path, phases: Phases) -> None:
    """What ``transformed_images_readable`` runs: metadata.csv's rows a chunk at a time to the workers."""
    from isic_assets.core import layout
    from isic_assets.core.merge.quality import CHECK_BATCH, CHECK_PROCESSES, unreadable_images

    with phases.phase("readable check"):
        chunks = layout.read_table_chunks(out / layout.METADATA_CSV, columns=("isic_id", "image"), rows=CHECK_BATCH)
        problems = unreadable_images(chunks, out, None, processes=CHECK_PROCESSES)
    print(f"  {len(problems)} unreadable", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("merged", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    phases = Phases(args.tracemalloc)
    import dagster  # noqa: F401 - the step's process has it imported: its pages count in every worker

    from isic_assets.core.transform import runner

    if args.tracemalloc:
        tracemalloc.start()
    print(f"after imports: {_status()['VmRSS'] / MIB:.0f} MiB", flush=True)
    for label, name in (("  check jobs", "_check_jobs"), ("  remove unwanted", "_remove_unwanted_outputs"),
                        ("  plan", "_plan"), ("  run (fork pool)", "_run"),
                        ("  outputs+normalization", "outputs_and_normalization")):
        if hasattr(runner, name):
            wrap(runner, name, phases, label)
    for number in range(args.runs):
        print(f"run {number + 1}", flush=True)
        run(args.merged, args.out, phases)
    if args.check:
        check(args.out, phases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
