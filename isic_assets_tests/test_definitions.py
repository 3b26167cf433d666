"""The code location must load the way every entry point loads it (nothing may rot silently)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from isic_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]


def test_defs_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_zips", "merged_images", "merged_metadata"} <= keys


def test_lineage_connects_ingestion():
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("merged_metadata")).parent_keys}
    assert parents == {"raw_zips"}


def test_missing_data_check_targets_merged_metadata():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("merged_metadata", "missing_data") in checks


def test_package_module_exposes_defs_for_dash_m():
    """`dagster ... -m isic_assets` finds defs through dir()/getattr on the package."""
    import isic_assets

    assert "code_location" in dir(isic_assets)
    import isic_assets.defs  # the Dagster layer's package: importing it must not hide the Definitions

    assert isic_assets.code_location is defs


def test_core_does_not_import_dagster():
    """The pure core must be usable from training code and pool workers without the orchestrator."""
    code = (
        "import sys, importlib, pkgutil, isic_assets.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'isic_assets.core.')]\n"
        "assert len(names) > 30, names\n"
        "for name in names: importlib.import_module(name)\n"
        "import isic_assets.demo, isic_assets.summary\n"
        "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pyproject_and_workspace_point_at_the_same_module():
    import tomllib

    import yaml

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert pyproject["module_name"] == workspace["module_name"]
    assert pyproject["code_location_name"] == workspace["location_name"]


def test_loading_the_code_location_leaves_the_heavy_libraries_to_the_steps_that_use_them():
    """Every `dagster` command, the daemon and each step of the multiprocess job load the code location;
    scikit-learn, scipy, albumentations, matplotlib and seaborn cost several seconds of imports there
    (7-10 s instead of 14-19 s for the whole load, measured on a busy 2-core machine)."""
    heavy = ("sklearn", "scipy", "albumentations", "matplotlib", "seaborn")
    code = (
        "import sys, isic_assets.definitions\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "", f"loaded with the code location: {done.stdout.strip()}"
