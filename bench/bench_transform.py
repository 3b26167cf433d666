"""Benchmark of transformed_images: fast path vs the naive notebook baseline, quality, re-run cost.

Run from the repository root::

    .venv/bin/python bench/bench_transform.py            # about two minutes on 2 vCPUs
    .venv/bin/python bench/bench_transform.py --quick    # fewer images and rounds, a smoke run

It writes synthetic dermoscopy-like JPEGs (skin shading, an irregular pigmented lesion with a
network pattern, hairs, a dermoscope vignette on half of them, sensor noise; Pillow baseline q90
4:2:0) into a temporary folder, then prints markdown tables. Method as in docs/PERFORMANCE.md:

- 1 core: the process is pinned to one CPU, OpenCV to one thread; naive and fast run interleaved
  round by round and the speedup is the median of per-round ratios (robust to a noisy shared box).
  "fast" is ``one_image.transform_job``: read + sha256 + power-of-two DCT decode + resize + q95
  encode + atomic write + pixel sums, i.e. everything a worker does per image. "naive" is
  ``naive_baseline.naive_transform`` (checked first to make the same geometry): cv2.imread +
  full-size cvtColor + INTER_AREA + cv2.imwrite q95.
- 2 processes: ``transform_images`` end to end (pool start, state, normalization.json included)
  with 1 and 2 workers, against the naive function on a 2-process fork pool. Each round waits
  for the rest of the machine to be idle (docs/PERFORMANCE.md 7), and reports the load it saw.
- Quality: mean absolute error (0-255) of the fast path's pixels against a full decode + float
  INTER_AREA reference of the same geometry.
- Re-run: a no-change second ``transform_images`` over every image, relative to the first run.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

try:
    from isic_assets.core.transform import runner as transform
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from isic_assets.core.transform import runner as transform

from naive_baseline import check_same_geometry, naive_transform

from isic_assets.core.transform.image_ops import TransformSettings, pad_to_square, transform_bytes
from isic_assets.core.transform.one_image import transform_job

SIZES = [(6000, 4000), (4000, 3000), (1024, 768), (600, 450)]
COUNTS = {(6000, 4000): 3, (4000, 3000): 3, (1024, 768): 8, (600, 450): 8}
TARGET = 256
IDLE_BUSY_MAX = 0.15

Row = list[str]


# ---------------------------------------------------------------------------------------------
# Synthetic images


def synth_dermoscopy(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB uint8 picture with dermoscopy's structure at every scale.

    Smooth structure is computed at quarter resolution and upscaled once (cheap); hairs and sensor
    noise are full resolution, because they are what makes entropy decoding cost what it costs.
    """
    rng = np.random.default_rng(seed)
    qw, qh = max(16, width // 4), max(16, height // 4)
    yy, xx = np.mgrid[0:qh, 0:qw].astype(np.float32)
    nx, ny = xx / qw * 2 - 1, yy / qh * 2 - 1
    skin = np.array(rng.uniform([185, 130, 105], [225, 170, 145]), np.float32)
    shading = cv2.resize(
        rng.normal(0, 0.06, (6, 8)).astype(np.float32), (qw, qh), interpolation=cv2.INTER_CUBIC
    )
    texture = cv2.GaussianBlur(rng.normal(0, 9, (qh, qw)).astype(np.float32), (0, 0), 1.5)
    picture = skin * (1 + shading)[..., None] + texture[..., None]
    theta = np.arctan2(ny, nx * qw / qh)
    radius = np.hypot(nx * qw / qh, ny)
    edge = 0.45 + sum(rng.uniform(0.02, 0.07) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in range(2, 7))
    alpha = 1 / (1 + np.exp(-(edge - radius) * 40))
    period = rng.uniform(6, 12)
    network = 0.5 + 0.5 * np.sin(xx / period * 6.28) * np.sin(yy / period * 6.28)
    lesion = (
        np.array(rng.uniform([90, 45, 25], [150, 95, 60]), np.float32) * (0.75 + 0.35 * network)[..., None]
    )
    picture = picture * (1 - alpha[..., None]) + (lesion + texture[..., None]) * alpha[..., None]
    if seed % 2 == 0:  # the dark ring of a dermoscope on half of the pictures
        vignette = np.clip((1.05 - np.hypot(nx, ny)) * 6, 0, 1)
        picture *= (0.04 + 0.96 * vignette)[..., None]
    full = cv2.resize(
        np.clip(picture, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR
    )
    thickness = max(1, width // 1500)
    for _ in range(int(rng.integers(5, 26))):
        angles = rng.uniform(0, 6.3) + np.cumsum(rng.normal(0, 0.12, 30))
        steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (width / 70)
        points = np.cumsum(steps, axis=0) + rng.uniform(0, [width, height])
        colour = tuple(int(c) for c in rng.uniform([20, 12, 8], [70, 50, 40]))
        cv2.polylines(full, [points.astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
    _add_sensor_noise(rng, full)
    return full


def _add_sensor_noise(rng: np.random.Generator, image: np.ndarray, sigma: float = 3.5) -> None:
    """Luma + chroma noise from a prime-sized tile (not 8-aligned, so every JPEG block differs)."""
    tile_side = 509
    luma = rng.normal(0, sigma, (tile_side, tile_side, 1))
    chroma = rng.normal(0, sigma / 2, (tile_side, tile_side, 3))
    tile = (luma + chroma).astype(np.int16)
    height, width = image.shape[:2]
    reps_x = math.ceil(width / tile_side)
    band_tile = np.tile(tile, (1, reps_x, 1))[:, :width]
    for y in range(0, height, tile_side):
        band = image[y : y + tile_side]
        noisy = band.astype(np.int16) + band_tile[: band.shape[0]]
        np.clip(noisy, 0, 255, out=noisy)
        band[...] = noisy.astype(np.uint8)


def write_images(folder: Path, counts: dict[tuple[int, int], int]) -> dict[tuple[int, int], list[Path]]:
    """Generate the bench pictures once; return their paths by size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[tuple[int, int], list[Path]] = {}
    seed = 0
    for size, count in counts.items():
        paths[size] = []
        for _ in range(count):
            seed += 1
            path = folder / f"bench_{size[0]}x{size[1]}_{seed:03d}.jpg"
            Image.fromarray(synth_dermoscopy(*size, seed)).save(
                path, format="JPEG", quality=90, subsampling=2
            )
            paths[size].append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Measurement helpers


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


IDLE_WAIT = {"enabled": True}


def wait_for_idle(max_wait: float = 30.0) -> float:
    """Wait until the machine is idle (other load < 15%), at most ``max_wait`` s; return the load seen."""
    if not Path("/proc/stat").exists():
        return float("nan")
    deadline = time.monotonic() + (max_wait if IDLE_WAIT["enabled"] else 0.0)
    while True:
        total0, idle0 = _cpu_times()
        time.sleep(0.5)
        total1, idle1 = _cpu_times()
        busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
        if busy < IDLE_BUSY_MAX or time.monotonic() > deadline:
            return busy


def _jobs(paths: list[Path], repeat: int, prefix: int) -> list[transform.TransformJob]:
    """Jobs over ``paths`` repeated ``repeat`` times under distinct ids (files stay in page cache)."""
    hashes = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}
    jobs = []
    for index in range(repeat * len(paths)):
        path = paths[index % len(paths)]
        jobs.append(transform.TransformJob(f"ISIC_{prefix:02d}{index:05d}", path, hashes[path]))
    return jobs


def _timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _naive_all(jobs: list[transform.TransformJob], out: Path, mode: str) -> None:
    for job in jobs:
        _naive_task((job.src, out / f"{job.isic_id}.jpg", mode))


def _fast_all(jobs: list[transform.TransformJob], out: Path, settings: TransformSettings) -> None:
    fingerprint = settings.fingerprint()
    for job in jobs:
        transform_job(job, out, settings, fingerprint)


def _naive_pool(args: list[tuple[Path, Path, str]], chunk: int) -> None:
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context, initializer=_init_naive_worker) as pool:
        list(pool.map(_naive_task, args, chunksize=chunk))


def _naive_task(args: tuple[Path, Path, str]) -> None:
    naive_transform(args[0], args[1], TARGET, mode=args[2])


def _init_naive_worker() -> None:
    cv2.setNumThreads(1)


# ---------------------------------------------------------------------------------------------
# Sections


def per_core(paths: dict[tuple[int, int], list[Path]], work: Path, rounds: int, mode: str) -> list[dict]:
    """Naive vs fast on one pinned core, interleaved rounds, median of per-round ratios."""
    settings = TransformSettings(size=TARGET, mode=mode)
    results = []
    for size, files in paths.items():
        # Enough work per round for a stable timer: ~0.5 s of naive work.
        probe = _timed(_naive_task, (files[0], work / "probe.jpg", mode))
        jobs = _jobs(files, max(1, math.ceil(0.5 / (probe * len(files)))), prefix=1)
        naive_times, fast_times, loads = [], [], []
        for _ in range(rounds):
            loads.append(wait_for_idle(10.0))
            # Fresh folders each round, as in a first materialization: replacing an existing file
            # by rename makes ext4 flush it first (auto_da_alloc), ~0.5 ms that is not decode work.
            for folder in (work / "naive", work / "fast"):
                shutil.rmtree(folder, ignore_errors=True)
            (work / "naive").mkdir()
            (work / "fast" / transform.IMAGES_DIR).mkdir(parents=True)
            naive_times.append(_timed(_naive_all, jobs, work / "naive", mode))
            fast_times.append(_timed(_fast_all, jobs, work / "fast", settings))
        ratios = [n / f for n, f in zip(naive_times, fast_times, strict=True)]
        results.append(
            {
                "size": size,
                "naive": len(jobs) / statistics.median(naive_times),
                "fast": len(jobs) / statistics.median(fast_times),
                "speedup": statistics.median(ratios),
                "load": max(loads),
            }
        )
    return results


def two_processes(paths: dict[tuple[int, int], list[Path]], work: Path, rounds: int) -> list[dict]:
    """transform_images with 1 and 2 workers vs the naive function on 2 fork processes."""
    settings = TransformSettings(size=TARGET, mode="stretch")
    results = []
    for size, files in paths.items():
        per_image = _timed(_fast_all, _jobs(files[:1], 1, 9), work, settings)
        repeat = max(2, math.ceil(1.5 / (per_image * len(files))))  # ~1.5 s of fast work per run
        jobs = _jobs(files, repeat, prefix=2)
        naive_args = [(job.src, work / "naive2" / f"{job.isic_id}.jpg", "stretch") for job in jobs]
        chunk = max(1, min(16, math.ceil(len(jobs) / 8)))
        one, two, naive, loads = [], [], [], []
        for _ in range(rounds):
            for workers, times in ((1, one), (2, two)):
                out = work / f"run{workers}"
                shutil.rmtree(out, ignore_errors=True)
                loads.append(wait_for_idle())
                times.append(_timed(transform.transform_images, jobs, out, settings, workers, _silent))
            shutil.rmtree(work / "naive2", ignore_errors=True)
            (work / "naive2").mkdir()
            loads.append(wait_for_idle())
            naive.append(_timed(_naive_pool, naive_args, chunk))
        n = len(jobs)
        results.append(
            {
                "size": size,
                "images": n,
                "fast1": n / statistics.median(one),
                "fast2": n / statistics.median(two),
                "naive2": n / statistics.median(naive),
                "gain": statistics.median(o / t for o, t in zip(one, two, strict=True)),
                "vs_naive2": statistics.median(nv / t for nv, t in zip(naive, two, strict=True)),
                "load": max(loads),
            }
        )
    return results


def reference(full_rgb: np.ndarray, mode: str) -> np.ndarray:
    """Full decode + INTER_AREA in float (no uint8 rounding inside), same geometry as the fast path."""
    source = full_rgb.astype(np.float32)
    height, width = source.shape[:2]
    if mode == "stretch":
        return cv2.resize(source, (TARGET, TARGET), interpolation=cv2.INTER_AREA)
    scale = TARGET / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    content = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    return pad_to_square(content, TARGET).astype(np.float32)


def quality(paths: dict[tuple[int, int], list[Path]]) -> list[dict]:
    """MAE and p99 |error| of the fast path's pixels against the float full-decode reference."""
    results = []
    for size, files in paths.items():
        row: dict = {"size": size}
        for mode in ("stretch", "pad"):
            errors = []
            for path in files:
                data = path.read_bytes()
                fast = transform_bytes(data, TransformSettings(size=TARGET, mode=mode))[1].astype(np.float32)
                full = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                errors.append(np.abs(fast - reference(full, mode)).ravel())
            error = np.concatenate(errors)
            row[mode] = (float(error.mean()), float(np.percentile(error, 99)))
        results.append(row)
    return results


def rerun(paths: dict[tuple[int, int], list[Path]], work: Path) -> dict:
    """First run vs a no-change second run over every bench image (2 workers)."""
    files = [path for group in paths.values() for path in group]
    jobs = _jobs(files, 3, prefix=3)
    out = work / "rerun"
    settings = TransformSettings()
    first_start = time.perf_counter()
    first = transform.transform_images(jobs, out, settings, workers=2, log=_silent)
    first_seconds = time.perf_counter() - first_start
    second_start = time.perf_counter()
    second = transform.transform_images(jobs, out, settings, workers=2, log=_silent)
    second_seconds = time.perf_counter() - second_start
    return {
        "images": len(jobs),
        "first": first_seconds,
        "second": second_seconds,
        "processed": (first.processed, second.processed),
        "skipped": second.skipped,
    }


def _silent(_message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Report


def _label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} -> {TARGET}"


def _check(ok: bool) -> str:
    return "yes" if ok else "NO"


def _table(header: Row, rows: list[Row]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _speed_targets(size: tuple[int, int]) -> float | None:
    return {(6000, 4000): 5.0, (1024, 768): 1.5}.get(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (smoke run)")
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    args = parser.parse_args()
    IDLE_WAIT["enabled"] = not args.no_wait
    counts = {size: (1 if args.quick else n) for size, n in COUNTS.items()}
    rounds = 2 if args.quick else 5
    check_same_geometry()
    cv2.setNumThreads(1)
    all_cpus = os.sched_getaffinity(0)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_transform_"))
    try:
        started = time.perf_counter()
        paths = write_images(work / "src", counts)
        generated = time.perf_counter() - started
        bpp = {
            size: statistics.mean(p.stat().st_size * 8 / (size[0] * size[1]) for p in files)
            for size, files in paths.items()
        }
        print(
            f"Generated {sum(counts.values())} images in {generated:.1f} s "
            f"({', '.join(f'{s[0]}x{s[1]}: {n} at {bpp[s]:.2f} bits/px' for s, n in counts.items())}); "
            f"{os.cpu_count()} CPUs; cv2 {cv2.__version__}\n"
        )

        os.sched_setaffinity(0, {min(all_cpus)})  # 1-core section: pinned
        stretch = per_core(paths, work, rounds, "stretch")
        pad = per_core(paths, work, rounds, "pad")
        os.sched_setaffinity(0, all_cpus)

        rows = []
        for s_row, p_row in zip(stretch, pad, strict=True):
            target = _speed_targets(s_row["size"])
            rows.append(
                [
                    _label(s_row["size"]),
                    f"{s_row['naive']:.1f}",
                    f"{s_row['fast']:.1f}",
                    f"**{s_row['speedup']:.2f}x**",
                    f"{p_row['naive']:.1f} / {p_row['fast']:.1f}",
                    f"{p_row['speedup']:.2f}x",
                    f">= {target}x: {_check(s_row['speedup'] >= target)}" if target else "-",
                    f"{max(s_row['load'], p_row['load']) * 100:.0f}%",
                ]
            )
        print(
            "### 1 core (pinned, cv2 1 thread; rounds start on an idle machine): img/s, "
            "speedup = median of per-round ratios\n"
        )
        print(
            _table(
                [
                    "input",
                    "naive stretch",
                    "fast stretch",
                    "speedup stretch",
                    "pad naive / fast",
                    "speedup pad",
                    "target (stretch)",
                    "max other load",
                ],
                rows,
            )
        )

        multi = two_processes(paths, work, max(2, rounds - 2))
        rows = [
            [
                _label(r["size"]),
                str(r["images"]),
                f"{r['naive2']:.1f}",
                f"{r['fast1']:.1f}",
                f"{r['fast2']:.1f}",
                f"**{r['gain']:.2f}x**",
                f"{r['vs_naive2']:.2f}x",
                f"{r['load'] * 100:.0f}%",
                f">= 1.6x: {_check(r['gain'] >= 1.6)}",
            ]
            for r in multi
        ]
        print("\n### 2 processes, stretch (transform_images end to end; rounds start on an idle machine)\n")
        print(
            _table(
                [
                    "input",
                    "images/run",
                    "naive 2 procs",
                    "fast 1 worker",
                    "fast 2 workers",
                    "2-core gain",
                    "fast 2 vs naive 2",
                    "max other load",
                    "target",
                ],
                rows,
            )
        )

        rows = [
            [
                _label(r["size"]),
                f"{r['stretch'][0]:.2f}",
                f"{r['stretch'][1]:.1f}",
                f"{r['pad'][0]:.2f}",
                f"{r['pad'][1]:.1f}",
                f"< 1.5: {_check(max(r['stretch'][0], r['pad'][0]) < 1.5)}",
            ]
            for r in quality(paths)
        ]
        print("\n### Quality vs full decode + float INTER_AREA (0-255 scale, before JPEG encoding)\n")
        print(_table(["input", "MAE stretch", "p99 stretch", "MAE pad", "p99 pad", "target"], rows))

        r = rerun(paths, work)
        ratio = r["second"] / r["first"]
        print("\n### No-change re-run of transform_images (default settings, 2 workers)\n")
        print(
            _table(
                ["images", "first run", "no-change re-run", "ratio", "processed (1st, 2nd)", "target"],
                [
                    [
                        str(r["images"]),
                        f"{r['first']:.2f} s",
                        f"{r['second'] * 1000:.0f} ms",
                        f"**{ratio * 100:.1f}%**",
                        f"{r['processed'][0]}, {r['processed'][1]}",
                        f"< 5%: {_check(ratio < 0.05)}",
                    ]
                ],
            )
        )
        print(f"\nTotal bench time {time.perf_counter() - started:.0f} s.")
    finally:
        os.sched_setaffinity(0, all_cpus)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
