"""Ingestion benchmark: download MB/s against curl, merge images/s, and peak memory vs image count.

Run with ``make bench-ingest`` (or ``.venv/bin/python bench/bench_ingest.py``). For each size it
generates a 2019-format mirror of small JPEGs, serves it on loopback, downloads it with the project's
downloader and with curl from the same server, then merges it in a child process whose peak RSS is
read with ``wait4`` (so the parent's own memory never pollutes the figure). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isic_assets.core.merge.merge_sources import MergeOptions, SourceArchive, merge_sources
from isic_assets.core.sources.download import DownloadJob, DownloadPolicy, download_all
from isic_assets.core.sources.http_mirror import serve_folder
from isic_assets.demo.generate import generate_bench_mirror

FILES = {
    "images": "isic2019/ISIC_2019_Training_Input.zip",
    "ground_truth": "isic2019/ISIC_2019_Training_GroundTruth.csv",
    "metadata": "isic2019/ISIC_2019_Training_Metadata.csv",
}


def _merge_child(downloads: Path, out_dir: Path) -> None:
    files = {role: downloads / Path(rel).name for role, rel in FILES.items()}
    source = SourceArchive(name="bench2019", format="isic2019", order=0, files=files)
    started = time.perf_counter()
    report = merge_sources([source], out_dir, MergeOptions(), log=lambda _m: None)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "kept": len(report.table), "checked": report.scanned}))


def _run_merge(downloads: Path, out_dir: Path) -> tuple[dict, float]:
    """Merge in a child process; return its report and its peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, __file__, "--merge-child", str(downloads), str(out_dir)],
                            stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"merge child failed with {proc.returncode}")
    return json.loads(output.strip().splitlines()[-1]), rusage.ru_maxrss / 1024


def _download(url_base: str, dest: Path) -> tuple[float, int]:
    jobs = [DownloadJob(source="bench2019", role=role, urls=(f"{url_base}/{rel}",), dest=dest / Path(rel).name)
            for role, rel in FILES.items()]
    started = time.perf_counter()
    records = download_all(jobs, dest, DownloadPolicy(concurrency=3), log=lambda _m: None)
    return time.perf_counter() - started, sum(r.size for r in records)


def _curl(url_base: str, dest: Path) -> float:
    started = time.perf_counter()
    for rel in FILES.values():
        subprocess.run(["curl", "-sf", "-o", str(dest / Path(rel).name), f"{url_base}/{rel}"], check=True)
    return time.perf_counter() - started


def bench(n_images: int, work: Path) -> dict:
    mirror = work / f"mirror_{n_images}"
    generate_bench_mirror(mirror, n_images=n_images)
    row: dict = {"images": n_images}
    with serve_folder(mirror) as server:
        ours, size = _download(server.url, work / f"dl_{n_images}")
        curl_dir = work / f"curl_{n_images}"
        curl_dir.mkdir()
        theirs = _curl(server.url, curl_dir)
    row["MB"] = size / 1e6
    row["ours_MBps"] = size / 1e6 / ours
    row["curl_MBps"] = size / 1e6 / theirs
    out_dir = work / f"merged_{n_images}"
    first, rss = _run_merge(work / f"dl_{n_images}", out_dir)
    again, rss_again = _run_merge(work / f"dl_{n_images}", out_dir)
    row.update(merge_s=first["seconds"], merge_ips=first["checked"] / first["seconds"], peak_rss_MB=rss,
               rerun_s=again["seconds"], rerun_checked=again["checked"], rerun_rss_MB=rss_again)
    shutil.rmtree(mirror)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="5000,20000", help="image counts to compare")
    parser.add_argument("--merge-child", nargs=2, metavar=("DOWNLOADS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge_child:
        _merge_child(Path(args.merge_child[0]), Path(args.merge_child[1]))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="isic-bench-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(bench(n, Path(tmp)))
            print(f"done {n}", file=sys.stderr)
    print("| images | zip MB | download MB/s (ours) | curl MB/s | ours/curl | merge s | merge images/s "
          "| peak RSS MB | no-change re-merge s (members checked) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['MB']:.0f} | {r['ours_MBps']:.0f} | {r['curl_MBps']:.0f} | "
              f"{r['ours_MBps'] / r['curl_MBps']:.2f} | {r['merge_s']:.1f} | {r['merge_ips']:.0f} | "
              f"{r['peak_rss_MB']:.0f} | {r['rerun_s']:.2f} ({r['rerun_checked']}) |")


if __name__ == "__main__":
    main()
