"""The transform stage's own costs at archive scale: transform_images on N small ISIC 2024 tiles.

    .venv/bin/python bench/bench_isic2024.py --generate-only bench-mirror-100k --images 100000
    .venv/bin/python bench/bench_transform_scale.py --mirror bench-mirror-100k --tiles bench-tiles \\
        --images 30000 100000 [--profile-worker 3000] [--profile-step]

Extracts the first N tiles of the mirror's ``train-image.hdf5`` into ``--tiles`` once (one JPEG file
each, as the merge writes them), then per size, each in a fresh child process: a first run of
``transform_images`` (the local fork pool, 2 workers, 256 px) into an empty folder, then a
no-change re-run. Prints seconds, the peak RSS of the step process (the one that holds the state,
plans and records; ``ru_maxrss``) and of the largest worker. The jobs are a ``JobTable`` as the
asset makes them; no Dagster, no tables, no checks: the stage's per-image costs alone.

``--profile-worker N`` runs ``one_image.transform_batch`` in this process on N tiles under cProfile
and prints where a worker's time goes; ``--profile-step`` profiles the step process of the first
run of the first size (the worker processes are not in that profile).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract(mirror: Path, tiles: Path, count: int) -> None:
    """The first ``count`` datasets of the mirror's HDF5 as files ``tiles/images/<id>.jpg`` plus
    ``tiles/jobs.json`` (ids, names, sha256), kept for later runs."""
    import h5py

    facts = tiles / f"jobs-{count}.json"
    if facts.is_file():
        return
    (tiles / "images").mkdir(parents=True, exist_ok=True)
    ids, names, digests = [], [], []
    with h5py.File(mirror / "train-image.hdf5", "r") as source:
        for isic_id in source:
            if len(ids) == count:
                break
            data = bytes(source[isic_id][()])
            name = f"images/{isic_id}.jpg"
            path = tiles / name
            if not path.is_file():
                path.write_bytes(data)
            ids.append(isic_id)
            names.append(name)
            digests.append(hashlib.sha256(data).hexdigest())
    if len(ids) < count:
        raise SystemExit(f"{mirror} has {len(ids)} images, fewer than {count}")
    facts.write_text(json.dumps({"ids": ids, "names": names, "sha256": digests}), encoding="utf-8")


def child(tiles: Path, count: int, out: Path, profile: Path | None) -> None:
    """One first run and one no-change re-run in this process; prints a JSON line per run."""
    from isic_assets.core.transform.image_ops import TransformSettings
    from isic_assets.core.transform.records import JobTable
    from isic_assets.core.transform.runner import transform_images

    facts = json.loads((tiles / f"jobs-{count}.json").read_text(encoding="utf-8"))
    jobs = JobTable(tiles, facts["ids"], facts["names"], facts["sha256"], [1] * count)
    del facts
    settings = TransformSettings(size=256)
    for label in ("first run", "no change"):
        profiler = cProfile.Profile() if profile is not None and label == "first run" else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report = transform_images(jobs, out, settings, workers=2, log=lambda _m: None)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
        seconds = time.perf_counter() - started
        step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"images": count, "run": label, "seconds": round(seconds, 1), "step_mib": round(step),
                          "worker_mib": round(workers), "processed": report.processed,
                          "skipped": report.skipped}), flush=True)


def profile_worker(tiles: Path, count: int) -> None:
    from isic_assets.core.transform.image_ops import TransformSettings
    from isic_assets.core.transform.one_image import transform_batch
    from isic_assets.core.transform.records import STATE_DIR, JobTable

    facts = json.loads((tiles / f"jobs-{count}.json").read_text(encoding="utf-8"))
    jobs = list(JobTable(tiles, facts["ids"], facts["names"], facts["sha256"], [1] * count))
    settings = TransformSettings(size=256)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / STATE_DIR).mkdir()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for start in range(0, len(jobs), 16):
            transform_batch(jobs[start:start + 16], out, out / STATE_DIR, settings, settings.fingerprint(), 60.0)
        profiler.disable()
        seconds = time.perf_counter() - started
    print(f"worker: {count} tiles in {seconds:.2f} s, {1000 * seconds / count:.2f} ms a tile (under cProfile)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True)
    parser.add_argument("--tiles", type=Path, required=True, help="where the extracted tiles are kept")
    parser.add_argument("--images", type=int, nargs="+", default=[30_000])
    parser.add_argument("--profile-worker", type=int, default=0, metavar="N")
    parser.add_argument("--profile-step", action="store_true")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        count, out, profile = int(args.child[0]), Path(args.child[1]), args.child[2]
        child(args.tiles, count, out, Path(profile) if profile else None)
        return 0
    largest = max([*args.images, args.profile_worker])
    extract(args.mirror, args.tiles, largest)
    for count in args.images:
        if count != largest:
            facts = json.loads((args.tiles / f"jobs-{largest}.json").read_text(encoding="utf-8"))
            (args.tiles / f"jobs-{count}.json").write_text(
                json.dumps({k: v[:count] for k, v in facts.items()}), encoding="utf-8")
    if args.profile_worker:
        profile_worker(args.tiles, args.profile_worker)
    for number, count in enumerate(args.images):
        out = Path(tempfile.mkdtemp(prefix="transform-scale-", dir=args.tiles))
        profile = str(args.tiles / "step.prof") if args.profile_step and number == 0 else ""
        try:
            subprocess.run([sys.executable, __file__, "--mirror", str(args.mirror), "--tiles", str(args.tiles),
                            "--child", str(count), str(out), profile], check=True, cwd=REPO)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
