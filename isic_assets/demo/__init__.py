"""The demo mirror: a deterministic, small ISIC mirror in the real file formats (no Dagster here).

``generate_demo_mirror`` writes the six demo sources the built-in catalog points at, plus
``MIRROR.json`` with every file's size and sha256 and the facts the pipeline must reproduce;
``generate_bench_mirror`` writes one large 2019-format source for throughput benchmarks;
``synth_dermoscopy`` makes one synthetic dermoscopy picture.
"""

from .generate import (
    GENERATOR_VERSION,
    MIRROR_FILE,
    generate_bench_mirror,
    generate_demo_mirror,
)
from .synthetic import synth_dermoscopy

__all__ = [
    "GENERATOR_VERSION",
    "MIRROR_FILE",
    "generate_bench_mirror",
    "generate_demo_mirror",
    "synth_dermoscopy",
]
