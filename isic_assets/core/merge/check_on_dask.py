"""The merge's per-image check (decode, sha256, dimensions) on a Dask cluster (ISIC_COMPUTE).

It goes through the stage-neutral engine interface (core/compute/batches.py). On the local engine
the merge keeps streaming each zip once in the step and checking members on a thread pool
(image_check.inspect_many): the checks release the GIL (2.0x on two cores), and threads avoid
staging every member as a file for a worker process to hand back. On Dask, workers read the members
themselves from the zip (or API folder) on the shared data root, check them, and stage each good
image as a ``.tmp-`` file in ``images/``; the step keeps every decision (which copy is the best, the
incremental state) and renames a staged file into place or deletes it. Results are handed back in
member order, so the state and the outputs are those of a local run. Staged leftovers of a killed
run are ``.tmp-`` files, removed by the next merge like any other temporary.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..atomic import TMP_PREFIX
from ..compute.batches import BATCHES_IN_FLIGHT_PER_SLOT, BatchEngine, LostBatch, batches_of, item_time_limit
from .image_check import ImageFacts, ImageRejected, inspect_image
from .member_source import MemberSource
from .zip_stream import ZipEntry

_BATCH = 16


@dataclass(frozen=True)
class Checked:
    """One member's outcome: facts and the staged copy, or the error and its reason code."""

    facts: ImageFacts | None
    staged: Path | None
    error: str | None
    reason: str | None


def check_batch_on_worker(items: list[tuple[int, ZipEntry]], members: MemberSource, staging: Path,
                          time_limit_s: float = 0.0) -> list[tuple[int, Checked]]:
    """On a worker: read, check and stage each member of the batch; return small outcomes.

    A check still running after ``time_limit_s`` ends its worker process (compute/batches.py), which
    the engine reports as a lost batch: a member that hangs every worker is then rejected as one
    that kills them."""
    index_of = {entry.header_offset: index for index, entry in items}
    results = []
    for read in members.iter_bytes([entry for _, entry in items]):
        index = index_of[read.entry.header_offset]
        if read.error is not None:
            results.append((index, Checked(None, None, read.error, "read_error")))
            continue
        try:
            with item_time_limit(time_limit_s):
                facts = inspect_image(read.data, read.entry.name)
        except ImageRejected as rejected:
            results.append((index, Checked(None, None, str(rejected), rejected.reason)))
            continue
        staged = Path(staging) / f"{TMP_PREFIX}stage-{uuid.uuid4().hex}"
        with staged.open("wb") as handle:
            handle.write(read.data)
            handle.flush()
            os.fsync(handle.fileno())  # durable before the step renames it into place
        results.append((index, Checked(facts, staged, None, None)))
    return results


def check_members_on_dask(engine: BatchEngine, members: MemberSource, todo: list[ZipEntry], staging: Path,
                          time_limit_s: float = 0.0) -> Iterator[tuple[ZipEntry, Checked]]:
    """Check ``todo`` on the engine and yield outcomes in member order as they become available."""
    items = list(enumerate(todo))
    queue: deque[list[tuple[int, ZipEntry]]] = batches_of(items, _BATCH)
    ready: dict[int, Checked] = {}
    next_index = 0
    in_flight = BATCHES_IN_FLIGHT_PER_SLOT * engine.slots
    args = (members, staging, time_limit_s)
    for batch, result in engine.map_batches(check_batch_on_worker, queue, args, in_flight):
        if isinstance(result, LostBatch):
            if len(batch) > 1:
                queue.extend([item] for item in batch)  # find the member that kills its workers
            else:
                index, entry = batch[0]
                ready[index] = Checked(None, None, f"{entry.name}: every worker that checked it died "
                                                   f"(a crash, or past the per-image time limit of "
                                                   f"{time_limit_s:g} s; {result.reason})", "worker_died")
        else:
            ready.update(result)
        while next_index in ready:
            yield todo[next_index], ready.pop(next_index)
            next_index += 1
