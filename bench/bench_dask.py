"""Benchmark of transformed_images on Dask against the local fork pool, on this machine.

Run from the repository root (needs the dask extra)::

    .venv/bin/python bench/bench_dask.py             # 64 x 4000x3000, 3 rounds: a few minutes on 2 vCPUs
    .venv/bin/python bench/bench_dask.py --quick     # 16 images, 1 round: a smoke run

Each round runs, interleaved so a noisy neighbour hurts every engine alike, and each on an idle
machine when there is one (the load seen is reported):

- ``local`` with 1 and 2 workers: the fork pool, ``transform_images`` end to end;
- ``dask-local`` with 1 and 2 workers: a LocalCluster started by the step; reported end to end
  (cluster start included) and for the processing phase alone (from "running on the cluster" to
  the end, probe and state included);
- an external cluster: a ``dask scheduler`` and two ``dask worker --nthreads 1`` processes
  started once before the rounds, as a user's cluster would be;
- ``dask-local`` with 2 workers spawned (Dask's default start method) instead of forked: what the
  step did before its workers were forked, for the before/after comparison.

The 64 jobs reuse 8 generated 4000x3000 pictures under distinct ids (bench_transform.py's
synthetic dermoscopy images), so the sources stay in the page cache and the figures are the
per-image compute, not the disk. Throughput is images/s, the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from bench_transform import _jobs, wait_for_idle, write_images

from isic_assets.core.compute.setting import parse_compute
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.runner import transform_images

SIZE = (4000, 3000)
SETTINGS = TransformSettings(size=256, mode="pad")
SPAWNED = "dask-local-spawned"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ExternalCluster:
    """A `dask scheduler` and single-threaded `dask worker` processes on loopback."""

    def __init__(self, workers: int, log_dir: Path) -> None:
        dask = str(Path(sys.executable).with_name("dask"))
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        # Started as the README advises a user to: the profiler off and the housekeeping slowed.
        from isic_assets.core.compute.dask_cluster import tuned_environment

        env = {**os.environ, "PYTHONPATH": str(BENCH.parent), **tuned_environment()}
        self.processes = []
        log = (log_dir / "cluster.log").open("ab")
        port = self.address.rsplit(":", 1)[1]
        commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]]
        commands += [[dask, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
                     for _ in range(workers)]
        for argv in commands:
            self.processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        from distributed import Client

        with Client(self.address, timeout=120, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _run(jobs, out: Path, workers: int, compute: str) -> tuple[float, float]:
    """(end-to-end seconds, processing-phase seconds) of one transform run into a fresh folder."""
    from isic_assets.core.compute import dask_cluster

    dask_cluster.LOCAL_START_METHOD = "spawn" if compute == SPAWNED else "fork"
    compute = "dask-local" if compute == SPAWNED else compute
    shutil.rmtree(out, ignore_errors=True)
    marks: dict[str, float] = {}

    def log(message: str) -> None:
        if "running on the" in message:
            marks["cluster_ready"] = time.perf_counter()

    start = time.perf_counter()
    report = transform_images(jobs, out, SETTINGS, workers=workers, log=log, compute=parse_compute(compute))
    end = time.perf_counter()
    if report.processed != len(jobs):
        raise RuntimeError(f"{compute}: processed {report.processed} of {len(jobs)}")
    return end - start, end - marks.get("cluster_ready", start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 images, 1 round")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images, rounds = (16, 1) if args.quick else (args.images, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    cluster = None
    try:
        started = time.perf_counter()
        files = write_images(work / "src", {SIZE: 8})[SIZE]
        jobs = _jobs(files, images // len(files), prefix=4)
        print(f"Generated {len(files)} {SIZE[0]}x{SIZE[1]} pictures in {time.perf_counter() - started:.1f} s; "
              f"{len(jobs)} jobs; {os.cpu_count()} CPUs\n")
        cluster = ExternalCluster(2, work)
        engines = [
            ("local, 1 worker", 1, "local"),
            ("local, 2 workers", 2, "local"),
            ("dask-local, 1 worker", 1, "dask-local"),
            ("dask-local, 2 workers", 2, "dask-local"),
            ("external scheduler, 2 workers x 1 thread", 2, cluster.address),
            ("dask-local, 2 workers, spawned (before)", 2, SPAWNED),
        ]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in engines}
        loads = []
        for _ in range(rounds):
            for name, workers, compute in engines:
                loads.append(wait_for_idle(20.0))
                times[name].append(_run(jobs, work / "out", workers, compute))
        local2 = len(jobs) / statistics.median(t[0] for t in times["local, 2 workers"])
        print(f"### {len(jobs)} x {SIZE[0]}x{SIZE[1]} -> 256 pad, median of {rounds} rounds "
              f"(other load at round starts: max {max(loads) * 100:.0f}%)\n")
        print("| engine | end to end img/s | processing phase img/s | vs local 2 workers (processing) |")
        print("|---|---|---|---|")
        for name, _, _ in engines:
            whole = len(jobs) / statistics.median(t[0] for t in times[name])
            phase = len(jobs) / statistics.median(t[1] for t in times[name])
            print(f"| {name} | {whole:.2f} | {phase:.2f} | {phase / local2:.2f}x |")
        for kind in ("local", "dask-local"):
            one = statistics.median(t[1] for t in times[f"{kind}, 1 worker"])
            two = statistics.median(t[1] for t in times[f"{kind}, 2 workers"])
            print(f"\n{kind}: 2 workers vs 1 = {one / two:.2f}x", end="")
        print()
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
