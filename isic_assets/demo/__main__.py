"""Command line for the demo mirror.

    python -m isic_assets.demo generate DEST [--seed N]
    python -m isic_assets.demo bench DEST --images N [--seed N] [--size 96x72]
    python -m isic_assets.demo serve DIR [--port N] [--host H] [--seed N]

Prints a one-screen summary; the full description is in ``DEST/MIRROR.json``. ``serve`` generates the
mirror in DIR if needed and serves it over HTTP until Ctrl-C, so that the sources sensor can watch
it (set ``ISIC_DEMO_MIRROR_URL`` to the printed URL for the daemon and the runs).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.sources.http_mirror import serve_folder
from .generate import MIRROR_FILE, generate_bench_mirror, generate_demo_mirror


def _size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m isic_assets.demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("generate", help="write the demo mirror (idempotent)")
    demo.add_argument("dest", type=Path)
    demo.add_argument("--seed", type=int, default=0, help="changes pixels only, never ids or labels")
    bench = commands.add_parser("bench", help="write a one-source 2019-format benchmark mirror")
    bench.add_argument("dest", type=Path)
    bench.add_argument("--images", type=int, required=True)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--size", type=_size, default=(96, 72), help="image size, e.g. 96x72")
    serve = commands.add_parser("serve", help="generate the demo mirror if needed, then serve it until Ctrl-C")
    serve.add_argument("dest", type=Path)
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    serve.add_argument("--seed", type=int, default=0)
    return parser


def serve(dest: Path, host: str, port: int, seed: int, on_ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Generate (if needed) and serve ``dest`` until Ctrl-C or ``stop``; prints the URL to use.

    ``on_ready`` (called with the URL) and ``stop`` let a test run it on a thread; from the shell,
    Ctrl-C ends it.
    """
    started = time.perf_counter()
    description = generate_demo_mirror(dest, seed=seed)
    print(_summary(dest, description, time.perf_counter() - started))
    with serve_folder(dest, host=host, port=port) as server:
        print(f"serving {dest} at {server.url}")
        print(f"watch it with: ISIC_DEMO_MIRROR_URL={server.url} (for the daemon and the runs); Ctrl-C stops",
              flush=True)
        if on_ready is not None:
            on_ready(server.url)
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            print("stopped")


def _summary(dest: Path, description: dict, seconds: float) -> str:
    files = description["files"]
    total_mb = sum(info["size"] for info in files.values()) / 1e6
    lines = [
        f"{dest}: {len(files)} files, {total_mb:.1f} MB, seed {description['seed']}, {seconds:.1f} s",
        f"description: {dest / MIRROR_FILE}",
    ]
    merged = description["expected"].get("merged")
    if merged:
        counts = ", ".join(f"{label or 'empty'} {n}" for label, n in merged["benign_malignant"].items())
        lines.append(f"expected after merge: {merged['kept_images']} images ({counts})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    if args.command == "serve":
        try:
            serve(args.dest, args.host, args.port, args.seed)
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        if args.command == "generate":
            description = generate_demo_mirror(args.dest, seed=args.seed)
        else:
            description = generate_bench_mirror(args.dest, args.images, seed=args.seed, size=args.size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary(args.dest, description, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
