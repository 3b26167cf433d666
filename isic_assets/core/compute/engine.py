"""Open the ``BatchEngine`` a step's ISIC_COMPUTE asks for, ready to map batches.

``local``: a fork pool of ``workers`` processes, inside ``fork_safe_parent``. A Dask value: the
cluster (started for the step or reached), checked to see ``root`` at the same path before any
work; ``on_cluster`` receives its description so the step can log and record it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .batches import BatchEngine
from .dask_cluster import ClusterInfo
from .fork_pool import ForkPool, fork_safe_parent
from .setting import ComputeChoice

Log = Callable[[str], None]


@contextlib.contextmanager
def open_engine(choice: ComputeChoice, workers: int, root: Path, log: Log,
                on_cluster: Callable[[ClusterInfo], None] | None = None,
                close_fds: Sequence[int] = ()) -> Iterator[BatchEngine]:
    """The engine for one step; ``close_fds`` (a run lock) never reach a forked worker."""
    with fork_safe_parent(close_fds=close_fds):
        if not choice.uses_dask:
            yield ForkPool(workers)
            return
        from .dask_cluster import open_dask  # Dask is imported only when it is asked for

        with open_dask(choice, workers, log) as session:
            info = session.info()
            if on_cluster is not None:
                on_cluster(info)
            session.probe(Path(root))
            yield session
