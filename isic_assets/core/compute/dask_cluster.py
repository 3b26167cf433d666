"""The Dask engine of ``BatchEngine`` (core/compute/batches.py): start or reach the cluster, check
shared storage, map batches.

Dask is imported here only, and only when a Dask value of ISIC_COMPUTE is chosen, so ``local`` runs
never load it and an install without the ``dask`` extra works until someone asks for a cluster.

Batches are plain picklable calls that write their outputs under the data root and return small
records: workers must see the data root at the same path as the step (checked by ``probe``).
Faults map onto what the stages already know from the local pool:

- a worker dies (SIGKILL, OOM, segfault): Dask reruns its tasks on other workers by itself;
- a task kills every worker it lands on: Dask gives up after ``allowed-failures`` + 1 deaths
  (``KilledWorker``); ``map_batches`` yields the batch as ``LostBatch`` with that reason, the stage
  decides;
- the scheduler goes away: ``ComputeLost``, naming the address, so the step fails clearly and the
  stage's journals let the next run resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .batches import LostBatch
from .setting import DASK_LOCAL, ENV_VAR, INSTALL_HINT, ComputeChoice

Log = Callable[[str], None]

# An image that kills two worker processes is quarantined by the local pool; a LocalCluster started
# for a step gets the same rule (a task may run on 1 + 1 workers). An external scheduler keeps its
# own distributed.scheduler.allowed-failures (3 by default).
LOCAL_ALLOWED_FAILURES = 1
# How a LocalCluster's nanny starts its workers (see _local_worker_config); bench/bench_dask.py sets
# "spawn" to measure Dask's default against it.
LOCAL_START_METHOD = "fork"
# Periodic callbacks of a step's own LocalCluster, from Dask's defaults to intervals a step of
# seconds to hours does not miss: the event-loop blocked-tick warning (20 ms), the system monitor's
# CPU/memory/network samples for the dashboard (500 ms), the memory monitor that pauses, spills or
# restarts a worker near its limit (100 ms; 1 s still catches a runaway decode long before the
# machine swaps) and work stealing (100 ms; batches are few and even, the step keeps two per slot).
QUIET_HOUSEKEEPING = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing-interval": "1s",
}


def tuned_environment() -> dict[str, str]:
    """``QUIET_HOUSEKEEPING`` and the profiler off, as the environment variables of a ``dask
    scheduler`` / ``dask worker`` a user starts (README "Running on a cluster")."""
    settings = {**QUIET_HOUSEKEEPING, "distributed.worker.profile.enabled": "False"}
    return {"DASK_" + key.replace(".", "__").replace("-", "_").upper(): value for key, value in settings.items()}


CONNECT_TIMEOUT_SECONDS = 10.0
WAIT_FOR_WORKERS_SECONDS = 60.0
PROBE_PREFIX = ".compute-probe-"


class DaskUnavailable(RuntimeError):
    """A Dask value of ISIC_COMPUTE on an install without the ``dask`` extra."""


class ComputeUnavailable(RuntimeError):
    """The cluster cannot be reached or has no workers; raised before any work."""


class ComputeLost(RuntimeError):
    """The scheduler went away in the middle of a step."""


class SharedStorageError(RuntimeError):
    """A worker does not see the data root the step writes to."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the step logs and records: backend, scheduler address, worker count, dashboard link."""

    backend: str
    address: str
    workers: int
    threads: int
    dashboard: str | None

    def describe(self) -> str:
        dashboard = self.dashboard or "no dashboard"
        return (f"{self.backend} cluster at {self.address}: {self.workers} workers, {self.threads} threads, "
                f"dashboard {dashboard}")


def import_distributed() -> Any:
    """``distributed``, or a clear error saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailable(
            f"{ENV_VAR} asks for a Dask cluster but Dask is not installed here: {INSTALL_HINT}"
        ) from exc
    return distributed


class DaskSession:
    """An open client (and, for dask-local, its cluster) for the length of one step."""

    def __init__(self, choice: ComputeChoice, client: Any, cluster: Any | None) -> None:
        self.choice, self.client, self.cluster = choice, client, cluster
        self.address = client.scheduler.address
        self._threads = 0

    @property
    def slots(self) -> int:
        """Worker threads of the cluster, as seen by the last ``info()`` (at least 1)."""
        if not self._threads:
            self.info()
        return max(1, self._threads)

    def info(self) -> ClusterInfo:
        scheduler = self.client.scheduler_info()
        workers = scheduler.get("workers", {})
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
        self._threads = threads
        try:
            served = self.client.run_on_scheduler(_serves_dashboard)
        except Exception:  # noqa: BLE001 - only decides whether a link is shown
            served = False
        dashboard = _dashboard(scheduler, self.address) if served else None
        return ClusterInfo(self.choice.kind, self.address, len(workers), threads, dashboard)

    def probe(self, root: Path) -> None:
        """Every worker reads a file the step just wrote under ``root``; any miss fails the step now."""
        root = Path(root)
        token = uuid.uuid4().hex
        path = root / f"{PROBE_PREFIX}{token}"
        path.write_text(token, encoding="ascii")
        try:
            seen = self._run(_read_probe, str(path), token)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        blind = {worker: problem for worker, problem in seen.items() if problem is not None}
        if blind:
            lines = "; ".join(f"worker {w} ({problem})" for w, problem in sorted(blind.items()))
            raise SharedStorageError(
                f"{len(blind)} of {len(seen)} Dask workers cannot see the data root {root}: {lines}. "
                "Workers must mount the data root at the same path as the step (shared storage such as NFS, "
                "Lustre, EFS or a ReadWriteMany volume; object storage is not supported)"
            )

    def _run(self, function: Callable[..., Any], *args: Any) -> dict[str, Any]:
        try:
            return self.client.run(function, *args)
        except (OSError, _lost_errors()) as exc:
            raise ComputeLost(_lost_message(self.address, exc)) from exc

    def map_batches(
        self, function: Callable[..., Any], queue: deque[list[Any]], args: tuple[Any, ...], in_flight: int
    ) -> Iterator[tuple[list[Any], Any]]:
        """Run ``function(batch, *args)`` for every batch taken from ``queue``, at most ``in_flight`` at
        a time; yield ``(batch, result)`` as they complete, or ``(batch, LostBatch)`` when Dask gave up
        on one. The caller may put batches back on ``queue`` while iterating (to retry them smaller).

        Exceptions raised by ``function`` propagate (they are not an image's fault: the stages catch
        per-image errors themselves). A lost scheduler raises ``ComputeLost``.
        """
        distributed = import_distributed()
        killed = distributed.KilledWorker
        pending: dict[Any, list[Any]] = {}
        done = distributed.as_completed(loop=self.client.loop)
        try:
            while len(pending) < in_flight and self._submit(function, queue, args, pending, done):
                pass
            for future in done:
                batch = pending.pop(future)
                if future.status == "cancelled":
                    raise ComputeLost(_lost_message(self.address, "its tasks were cancelled"))
                try:
                    result = future.result()
                except killed as exc:
                    result = LostBatch(str(exc))
                except _lost_errors() as exc:
                    raise ComputeLost(_lost_message(self.address, exc)) from exc
                future.release()
                yield batch, result
                while len(pending) < in_flight and self._submit(function, queue, args, pending, done):
                    pass
        finally:
            for future in pending:
                future.cancel()

    def _submit(self, function: Callable[..., Any], queue: deque[list[Any]], args: tuple[Any, ...],
                pending: dict[Any, list[Any]], done: Any) -> bool:
        if not queue:
            return False
        batch = queue.popleft()
        try:
            # pure=False: a batch sent again after Dask gave up on it must get a fresh key, not the
            # remembered failure.
            future = self.client.submit(function, batch, *args, pure=False)
        except (OSError, _lost_errors()) as exc:
            raise ComputeLost(_lost_message(self.address, exc)) from exc
        pending[future] = batch
        done.add(future)
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=5)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)


@contextlib.contextmanager
def open_dask(choice: ComputeChoice, workers: int, log: Log) -> Iterator[DaskSession]:
    """Start (dask-local) or reach (an address) the cluster and wait for its workers.

    Raises ``DaskUnavailable`` without the extra and ``ComputeUnavailable`` when the scheduler cannot
    be reached or has no workers, before any work.
    """
    distributed = import_distributed()
    cluster = None
    with contextlib.ExitStack() as stack:
        if choice.kind == DASK_LOCAL:
            stack.enter_context(_local_worker_config())
            # A free port for the dashboard: several steps (and test runs) on one machine must not fight
            # over 8787. Its workers' shutdown chatter (heartbeats to a closed scheduler) is silenced;
            # task failures still reach the step as exceptions.
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=":0", silence_logs=logging.CRITICAL,
            )
            address = cluster.scheduler_address
        else:
            address = choice.address
        yield from _connected(distributed, choice, address, cluster)


def _local_worker_config() -> contextlib.ExitStack:
    """What a LocalCluster started for a step runs under, for the whole step (the nanny forks a
    replacement when a worker dies, so the settings must outlive the start).

    - ``allowed-failures`` = 1: an image that kills two worker processes is given up, the local
      pool's rule;
    - workers are forked, like the local pool's, not spawned: a spawned worker imports Python,
      Dask, NumPy, OpenCV and the pipeline afresh before its first image, which measured 12-20 s
      for a 2-worker cluster on a loaded 2-core machine (bench/bench_dask.py) against about 6 s
      for the whole 32-image workload; a forked one inherits them. ``fork_safe_parent`` makes the
      fork as safe as the local pool's;
    - no statistical profiler in the workers: it samples the task thread's stack every 10 ms and,
      with the event loop, added about a third to the CPU time of each image's process (33 ms of
      image work, 41-44 ms of process CPU, measured with thread and process CPU clocks);
    - the periodic housekeeping of every event loop (scheduler and client in the step, each worker
      and nanny) slowed down (``QUIET_HOUSEKEEPING``): on a 2-core machine it competes with the
      images for the same cores. Total CPU (step plus workers) per 4000x3000 image, 128 images, 2
      workers, loaded machine: 47-57 ms with Dask's defaults, 42-48 ms with these, 32-37 ms for the
      local pool.
    """
    import dask

    from .fork_pool import fork_safe_parent

    stack = contextlib.ExitStack()
    stack.enter_context(dask.config.set({
        "distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
        "distributed.worker.multiprocessing-method": LOCAL_START_METHOD,
        "distributed.worker.profile.enabled": False,
        **QUIET_HOUSEKEEPING,
    }))
    stack.enter_context(fork_safe_parent())
    return stack


def _connected(distributed: Any, choice: ComputeChoice, address: str, cluster: Any | None
               ) -> Iterator[DaskSession]:
    try:
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT_SECONDS, set_as_default=False)
        except OSError as exc:
            raise ComputeUnavailable(
                f"cannot reach the Dask scheduler at {address} (set by {ENV_VAR} or the isic resource's "
                f"'compute' field) within {CONNECT_TIMEOUT_SECONDS:.0f} s: {exc}. Start it "
                "(`dask scheduler`) or choose another value; nothing was processed"
            ) from exc
        session = DaskSession(choice, client, cluster)
        try:
            try:
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
            except (TimeoutError, OSError) as exc:
                raise ComputeUnavailable(
                    f"the Dask scheduler at {address} ({ENV_VAR}) has no workers after "
                    f"{WAIT_FOR_WORKERS_SECONDS:.0f} s; start some with `dask worker {address}`"
                ) from exc
            yield session
        finally:
            session.close()
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _read_probe(path: str, token: str) -> str | None:
    """On a worker: None if the probe file holds the token, else what went wrong (and where)."""
    where = f"host {socket.gethostname()}, pid {os.getpid()}"
    try:
        found = Path(path).read_text(encoding="ascii")
    except OSError as exc:
        return f"{where}: cannot read {path}: {exc.strerror or exc}"
    if found != token:
        return f"{where}: {path} holds other content (a different file system at the same path?)"
    return None


def _serves_dashboard() -> bool:
    """On the scheduler: the dashboard pages need bokeh; without it only the bare HTTP routes run."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _dashboard(scheduler: dict[str, Any], address: str) -> str | None:
    """The dashboard link only if the scheduler really serves one (``client.dashboard_link`` is
    formatted from a template and names port 8787 even with the dashboard off)."""
    port = scheduler.get("services", {}).get("dashboard")
    if not port:
        return None
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}/status"


def _lost_errors() -> tuple[type[BaseException], ...]:
    import concurrent.futures

    from distributed.comm.core import CommClosedError

    return (concurrent.futures.CancelledError, CommClosedError)


def _lost_message(address: str, cause: object) -> str:
    return (f"lost the Dask scheduler at {address} ({ENV_VAR}) in the middle of the step: {cause}. "
            "Finished images are recorded; run again (with the cluster back) to resume")
