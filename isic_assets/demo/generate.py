"""The demo mirror: a small, deterministic ISIC mirror in the real file formats.

Why it exists: the real sources are tens of gigabytes behind slow buckets, so tests and first runs
use this mirror instead. It is served over loopback HTTP and downloaded exactly like the real files,
so every byte of the pipeline (download, zip streaming, per-year harmonizing, merge, dedup) runs on
it. To be a fair stand-in it copies the real formats (names, headers, line endings, missing-value
spellings; docs/ISIC_SOURCES.md 1.2-1.5 and 2.2-2.5) and it plants every quirk the real data has, each
recorded in ``MIRROR.json`` under ``expected`` so tests can check the pipeline found it.

Determinism: the layout (ids, labels, quirks) comes from a fixed internal seed and never changes with
``seed``; ``seed`` only changes pixels, hence bytes. Each picture has its own Generator
(``synthetic.picture_rng``), zips have fixed timestamps, attributes and member order, and encoders
have fixed settings, so one seed gives byte-identical files on a given set of library versions.

Layout of the package: :mod:`.plan` (file names, headers, the plan dataclasses), one module per
format family (:mod:`.isic2016_2017`, :mod:`.isic2018_2019`, :mod:`.isic2020`, :mod:`.archive`),
:mod:`.writing` (pixels, zips, MIRROR.json), :mod:`.expected` (the facts a correct merge must
reproduce) and :mod:`.bench_mirror`; this module assembles the demo mirror from them. The names
the tests and tools use (file paths, headers, entry points) are importable from here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..core.atomic import remove_stale_temporaries
from . import isic2024
from .archive import _plan_archive
from .bench_mirror import generate_bench_mirror
from .evaluation_sets import plan_evaluation_sources, render_evaluation_pictures
from .expected import expected_facts
from .isic2016_2017 import _plan_isic2016, _plan_isic2017
from .isic2018_2019 import _plan_isic2018, _plan_isic2019
from .isic2020 import _plan_isic2020
from .plan import (
    _LAYOUT_SEED,
    HEADER_2017_GT,
    HEADER_2017_META,
    HEADER_2018_GT,
    HEADER_2019_GT,
    HEADER_2019_META,
    HEADER_2020_DUPLICATES,
    HEADER_2020_GT,
    HEADER_HAM,
    PATH_2016_GT,
    PATH_2016_ZIP,
    PATH_2017_GT,
    PATH_2017_ZIP,
    PATH_2018_GT_ZIP,
    PATH_2018_HAM,
    PATH_2018_ZIP,
    PATH_2019_GT,
    PATH_2019_META,
    PATH_2019_ZIP,
    PATH_2020_DUPLICATES,
    PATH_2020_GT,
    PATH_2020_ZIP,
    PATH_ARCHIVE_ZIP,
    ZIP_DATE_TIME,
    Picture,
    SourcePlan,
    _Layout,
)
from .writing import (
    GENERATOR_VERSION,
    MIRROR_FILE,
    _check_seed,
    _current_description,
    _finish,
    _render_all,
    _write_plan_files,
    render_picture,
)

# The mirror's public vocabulary (file paths, headers, entry points), importable from this module.
__all__ = [
    "GENERATOR_VERSION",
    "HEADER_2017_GT",
    "HEADER_2017_META",
    "HEADER_2018_GT",
    "HEADER_2019_GT",
    "HEADER_2019_META",
    "HEADER_2020_DUPLICATES",
    "HEADER_2020_GT",
    "HEADER_HAM",
    "MIRROR_FILE",
    "PATH_2016_GT",
    "PATH_2016_ZIP",
    "PATH_2017_GT",
    "PATH_2017_ZIP",
    "PATH_2018_GT_ZIP",
    "PATH_2018_HAM",
    "PATH_2018_ZIP",
    "PATH_2019_GT",
    "PATH_2019_META",
    "PATH_2019_ZIP",
    "PATH_2020_DUPLICATES",
    "PATH_2020_GT",
    "PATH_2020_ZIP",
    "PATH_ARCHIVE_ZIP",
    "ZIP_DATE_TIME",
    "build_demo_plan",
    "generate_bench_mirror",
    "generate_demo_mirror",
    "render_picture",
]


def build_demo_plan() -> list[SourcePlan]:
    """Every source of the demo mirror in catalog order; pure layout, no pixels yet."""
    lay = _Layout()
    plan_2016, cases_2016, roles = _plan_isic2016(lay)
    plan_2017, cases_2017 = _plan_isic2017(lay, cases_2016, roles)
    plan_2018, ham = _plan_isic2018(lay)
    plan_2019, roles_2019 = _plan_isic2019(lay, cases_2016, cases_2017, ham, roles)
    plan_2020, roles_2020, republished = _plan_isic2020(lay)
    plan_archive = _plan_archive(lay, republished)
    plan_2016.facts["ids_without_gt_row"] = [roles["no_gt_row"]]
    plan_2019.facts["ids_missing_image"] = [roles_2019["missing_image"]]
    plan_2020.facts["images_4000x3000"] = roles_2020["large"].split(",")
    return [plan_2016, plan_2017, plan_2018, plan_2019, plan_2020, plan_archive]


# --------------------------------------------------------------------------------------------------
def generate_demo_mirror(dest: Path, seed: int = 0) -> dict:
    """Write the demo mirror under ``dest`` (idempotent) and return its MIRROR.json description.

    If ``dest/MIRROR.json`` already describes this generator version and seed and every file has its
    recorded size, nothing is written. Otherwise the description is removed first (so a half-written
    mirror is never taken as complete), every file is rewritten atomically, and a new one is written.
    """
    dest = Path(dest)
    seed = _check_seed(seed)
    params = {"layout_seed": _LAYOUT_SEED}
    current = _current_description(dest, "demo", seed, params)
    if current is not None:
        return current
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MIRROR_FILE).unlink(missing_ok=True)
    remove_stale_temporaries(dest)
    plans = build_demo_plan()
    pictures = [d for plan in plans for c in plan.files.values() if not isinstance(c, bytes) for _, d in c]
    rendered = _render_all((d for d in pictures if isinstance(d, Picture)), seed)
    _write_plan_files(dest, plans, rendered)
    shas = {picture: hashlib.sha256(data).hexdigest() for picture, data in rendered.items()}
    expected = expected_facts(plans, shas)
    # The evaluation sources (group demo_evaluation) overlap the training sources on purpose; their
    # facts stay out of the training-side expectations above.
    eval_plans, expected["evaluation"] = plan_evaluation_sources(
        plans, {c["isic_id"] for c in expected["label_conflicts"]})
    render_evaluation_pictures(eval_plans, rendered, seed)
    _write_plan_files(dest, eval_plans, rendered)
    rel_paths = [rel for plan in plans + eval_plans for rel in plan.files]
    tiles, expected["isic2024"] = isic2024.write_demo_source(dest, seed)  # demo_isic2024, not in "demo"
    return _finish(dest, "demo", seed, params, rel_paths + tiles, expected)


# --------------------------------------------------------------------------------------------------
