"""Speed of the core steps that run on every materialization, measured here instead of asserted in
unit tests (a busy machine must not fail the suite).

Run from the repository root::

    .venv/bin/python bench/bench_core.py

It prints one markdown table: the best of three runs of

- ``combine_sources`` on 70k rows of three overlapping releases (the shape of the real 2016-2020
  overlaps: mostly agreeing, some coarser, 1% conflicting labels); the merge's budget is 2 s;
- ``synth_dermoscopy`` at 4000x3000, the largest demo picture (the mirror must build in seconds;
  budget 1 s each);
- the demo mirror's fast path: ``generate_demo_mirror`` on a complete mirror, which must cost a few
  stat calls (budget 1 s).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isic_assets.core.merge import vocab
from isic_assets.core.merge.combine import combine_sources
from isic_assets.core.merge.harmonize import BASE_COLUMNS
from isic_assets.demo import generate_demo_mirror, synth_dermoscopy
from isic_assets.demo.synthetic import picture_rng


def time_runs(runs: int, call: Callable[[], object]) -> list[float]:
    """Wall-clock seconds of each of ``runs`` calls (bench_time_limit.py reports the worst of them)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _best_of(runs: int, call: Callable[[], object]) -> float:
    return min(time_runs(runs, call))


def _overlapping_sources(n: int = 40_000) -> list[tuple[str, pd.DataFrame]]:
    numbers = np.arange(n)
    ids = np.array([f"ISIC_{i:07d}" for i in numbers], dtype=object)
    sites = np.array(vocab.SITES_2019, dtype=object)

    def source(selected: np.ndarray, coarse_torso: bool, flip: bool) -> pd.DataFrame:
        site = sites[selected % len(sites)]
        if coarse_torso:
            site = np.where(np.char.endswith(site.astype(str), "torso"), "torso", site).astype(object)
        label = np.where(selected % 7 == 0, "malignant", "benign").astype(object)
        if flip:
            label = np.where(selected % 100 == 1, "malignant", label).astype(object)
        columns = {name: pd.Series([""] * len(selected), dtype="str") for name in BASE_COLUMNS}
        columns.update(
            isic_id=pd.Series(ids[selected], dtype="str"),
            benign_malignant=pd.Series(label, dtype="str"),
            anatom_site_general=pd.Series(site, dtype="str"),
            age_approx=pd.Series((selected % 18) * 5, dtype="Int64"),
        )
        return pd.DataFrame(columns)

    return [
        ("old", source(numbers[: n // 2], coarse_torso=True, flip=False)),
        ("mid", source(numbers[n // 4 : 3 * n // 4], coarse_torso=False, flip=True)),
        ("new", source(numbers[n // 2 :], coarse_torso=False, flip=False)),
    ]


def main() -> None:
    sources = _overlapping_sources()
    rows = sum(len(frame) for _, frame in sources)
    measured = [(f"combine_sources, {rows:,} rows", _best_of(3, lambda: combine_sources(sources)), 2.0)]
    synth_dermoscopy(picture_rng(0, "warm-up"), 4000, 3000)
    counter = iter(range(100))
    measured.append(("synth_dermoscopy 4000x3000", _best_of(
        3, lambda: synth_dermoscopy(picture_rng(0, f"big{next(counter)}"), 4000, 3000)), 1.0))
    with tempfile.TemporaryDirectory() as folder:
        generate_demo_mirror(Path(folder), seed=0)
        measured.append(("demo mirror fast path (complete mirror)",
                         _best_of(3, lambda: generate_demo_mirror(Path(folder), seed=0)), 1.0))
    print("| step | best of 3, s | budget, s |")
    print("|---|---|---|")
    for name, seconds, budget in measured:
        print(f"| {name} | {seconds:.3f} | {budget:.1f} |")


if __name__ == "__main__":
    main()
