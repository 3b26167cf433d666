"""Real Dask clusters for the tests: a `dask scheduler` and `dask worker` processes on loopback.

Everything started here runs in its own session and is stopped by its process group id. The
worker plugins below are how a test makes an image misbehave *inside* a worker process: Dask
re-applies registered plugins to every worker a nanny restarts, as a patched function would not be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from isic_assets_tests.e2e_support import free_port

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))


class Cluster:
    """One scheduler and its workers, each `dask worker --nthreads 1 --no-dashboard`."""

    def __init__(self, log_dir: Path, allowed_failures: int = 1) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures),
        }
        self.processes: list[subprocess.Popen] = []
        self.scheduler = self._start("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                                   str(self.port), "--no-dashboard"])

    def _start(self, name: str, argv: list[str], wrap: list[str] | None = None) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen([*(wrap or []), *argv], cwd=REPO, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def add_worker(self, name: str, wrap: list[str] | None = None) -> subprocess.Popen:
        argv = [DASK, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                "--name", name, "--death-timeout", "30"]
        return self._start(name, argv, wrap)

    def wait_for_workers(self, count: int, timeout: float = 120.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=timeout)

    def kill_scheduler(self) -> None:
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=30)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


class Misbehave(WorkerPlugin):
    """A worker plugin: ``transform_bytes`` of one image's bytes misbehaves in every worker process.

    ``mode``: ``exit`` (the process dies at once, as on a segfault, every time), ``kill_once``
    (SIGKILL of its own process the first time in the whole cluster, then normal: an OOM kill), or
    ``hang`` (waits until ``marker`` exists, up to two minutes).
    """

    name = "isic-test-misbehave"

    def __init__(self, sha256: str, mode: str, marker: str) -> None:
        self.sha256, self.mode, self.marker = sha256, mode, marker

    def setup(self, worker=None) -> None:
        import hashlib

        from isic_assets.core.transform import one_image as runner

        real = getattr(runner, "_real_transform_bytes", runner.transform_bytes)
        runner._real_transform_bytes = real
        sha256, mode, marker = self.sha256, self.mode, Path(self.marker)

        def patched(data, settings, exif_orientation=1):
            if hashlib.sha256(data).hexdigest() == sha256:
                if mode == "exit":
                    os._exit(70)
                if mode == "kill_once":
                    try:
                        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        pass
                    else:
                        os.close(fd)
                        os.kill(os.getpid(), signal.SIGKILL)
                if mode == "hang":
                    deadline = time.monotonic() + 120
                    while not marker.exists() and time.monotonic() < deadline:
                        time.sleep(0.1)
            return real(data, settings, exif_orientation)

        runner.transform_bytes = patched

    def teardown(self, worker=None) -> None:
        from isic_assets.core.transform import one_image as runner

        if hasattr(runner, "_real_transform_bytes"):
            runner.transform_bytes = runner._real_transform_bytes
