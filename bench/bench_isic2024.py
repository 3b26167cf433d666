"""ISIC-2024-shaped benchmark: seconds and peak RSS of every pipeline stage on N synthetic TBP tiles.

    .venv/bin/python bench/bench_isic2024.py --images 100000 [--work DIR] [--layout kaggle|challenge]
    .venv/bin/python bench/bench_isic2024.py --generate-only DEST --images 401059
    .venv/bin/python bench/bench_isic2024.py --mirror DEST --images 401059   # reuses DEST when it matches

It writes an ISIC 2024 mirror (``isic_assets.demo.isic2024``: the real 55-column header, 1,042
patients and 393 malignant at full size, scaled below, distinct 3-5 KB JPEG tiles, HDF5 written
streaming), serves it on loopback, and materializes each asset with the ``dagster`` command line in
its own child process: raw_zips, merge_sources, transformed_images, eda_plots, balanced_splits. The
child reads ``RUSAGE_CHILDREN`` after the command ends: the peak RSS of the largest single process
of that stage (the command and every process it waited for), and samples the resident set of the
command's process and its workers, set against each step's start and end in the run's event log.
Prints markdown tables.
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


class _ResidentSamples:
    """Samples the resident set (``VmRSS``) of a process and of the processes below it, 10 times a second.

    ``dagster asset materialize`` runs the asset and its checks one step after another in its own
    process (the code location's default, in-process executor); the transform and near_duplicates
    fork workers below it. ``RUSAGE_CHILDREN`` only gives the stage's overall peak; the samples, set
    against the steps' start and end times in the run's event log, say which step holds the memory.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        import threading

        self.root, self.interval = root, interval
        self.samples: list[tuple[float, float, float]] = []   # time, the root's RSS, its largest worker's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @staticmethod
    def _rss(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
                return next((int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:")), 0.0)
        except OSError:
            return 0.0

    def sample(self) -> None:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                        parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        below = []
        for pid in parents:
            cursor, hops = parents[pid], 0
            while cursor in parents and cursor != self.root and hops < 20:
                cursor, hops = parents[cursor], hops + 1
            if cursor == self.root and pid != self.root:
                below.append(pid)
        self.samples.append((time.time(), self._rss(self.root), max(map(self._rss, below), default=0.0)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_step(self, spans: dict[str, tuple[float, float]]) -> dict[str, dict]:
        """Per step: the largest RSS of the stage's process and of one worker while the step ran."""
        steps = {}
        for step, (start, end) in spans.items():
            inside = [(own, worker) for when, own, worker in self.samples if start <= when <= end]
            if inside:
                steps[step] = {"step_mib": round(max(own for own, _ in inside)),
                               "worker_mib": round(max(worker for _, worker in inside))}
        return steps


def _step_spans() -> dict[str, tuple[float, float]]:
    """When each step of the instance's latest run started and ended, from its event log."""
    import dagster as dg

    spans: dict[str, list[float]] = {}
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        for entry in instance.all_logs(runs[0].run_id) if runs else ():
            kind = entry.dagster_event.event_type_value if entry.dagster_event is not None else None
            if kind == "STEP_START":
                spans[entry.step_key] = [entry.timestamp, float("inf")]
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in spans:
                spans[entry.step_key][1] = entry.timestamp
    return {step: (start, end) for step, (start, end) in spans.items()}


def _child(stage: str) -> int:
    """Inside the wrapper: run the dagster CLI for one asset and print the children's peak RSS."""
    import resource

    dagster = str(Path(sys.executable).with_name("dagster"))
    started = time.perf_counter()
    proc = subprocess.Popen([dagster, "asset", "materialize", "-m", "isic_assets", "--select", stage],
                            stdout=subprocess.DEVNULL)
    samples = _ResidentSamples(proc.pid)
    code = proc.wait()
    samples.stop()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    steps = samples.by_step(_step_spans())
    print(json.dumps({"stage": stage, "seconds": seconds, "peak_mib": peak, "code": code, "steps": steps}))
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
    steps = [(row["stage"], name, peaks) for row in rows for name, peaks in sorted((row.get("steps") or {}).items())]
    if steps:
        lines += ["", "| stage | step | RSS while it ran (MiB) | largest worker (MiB) |", "|---|---|---:|---:|"]
        lines += [f"| {stage} | {name} | {p['step_mib']} | {p['worker_mib'] or ''} |" for stage, name, p in steps]
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
