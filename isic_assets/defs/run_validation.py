"""Everything a run's settings can get wrong, found before its first step and reported in a few lines.

Dagster checks the run config's shape at launch (unknown fields, wrong types), but not the value
ranges our Config classes declare (``size >= 16``), and it knows nothing of the catalog, the source
selection or the data root: those used to fail only when a step reached them, after minutes of work,
as a hundred lines with the traceback twice. The ``isic`` resource calls :func:`problems` when a run
initialises its resources, which the in-process executor does before any step starts, and turns the
result into one short error.

Each problem names the setting or file, the bad value and what is accepted.

The error is reported without a stack trace (:class:`RunSettingsError`): it says everything a user
needs, and Dagster's frames around it (about 90 lines, twice) would bury it. Every other error keeps
its full traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from dagster._core.errors import DagsterUserCodeProcessError
from dagster._utils.error import SerializableErrorInfo

from ..core import layout
from ..core.compute.setting import INSTALL_HINT, ComputeSettingError, compute_from_env
from ..core.sources.catalog import CatalogError

# At most this many characters per problem: a pydantic error on a nested field can be long, and a
# list of every accepted name (the catalog's sources, about 420) must still show whole.
_MAX_PROBLEM_CHARS = 800


def config_classes() -> dict[str, type]:
    """Op name -> the Config class that validates ``ops.<name>.config``, for every configurable step."""
    # Imported here: these modules import the resource, which imports this module.
    from .checks import BalancedDatasetBuildableConfig, MissingDataConfig, ProportionsConfig, SplitBalanceConfig
    from .cleanup import CleanConfig
    from .merge import MergeConfig
    from .near_duplicates import NearDuplicatesConfig
    from .sources import RawZipsConfig
    from .splits import BalancedSplitsConfig
    from .transform import TransformConfig

    return {
        "raw_zips": RawZipsConfig,
        "merge_sources": MergeConfig,
        "transformed_images": TransformConfig,
        "near_duplicates": NearDuplicatesConfig,
        "balanced_splits": BalancedSplitsConfig,
        "merged_metadata_missing_data": MissingDataConfig,
        "merged_metadata_balanced_dataset_buildable": BalancedDatasetBuildableConfig,
        "balanced_splits_split_class_balance": SplitBalanceConfig,
        "balanced_splits_split_proportions": ProportionsConfig,
        "clean_intermediates": CleanConfig,
    }


def op_config_problems(run_config: Mapping[str, Any] | None, classes: Mapping[str, type]) -> list[str]:
    """``ops.<op>.config.<field> = <value>: <what is accepted>`` for every value its Config class refuses."""
    problems: list[str] = []
    ops = (run_config or {}).get("ops") or {}
    for op_name, op_block in sorted(ops.items()):
        cls = classes.get(op_name)
        config = op_block.get("config") if isinstance(op_block, Mapping) else None
        if cls is None or not isinstance(config, Mapping):
            continue
        try:
            cls(**config)
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                value = error.get("input")
                problems.append(f"ops.{op_name}.config.{where} = {value!r}: {_accepted(error)}")
        except (ValueError, TypeError) as exc:
            problems.append(f"ops.{op_name}.config: {exc}")
    return problems


def _accepted(error: Mapping[str, Any]) -> str:
    """Pydantic's reason in the words a user needs: 'must be >= 16', 'must be one of ...'."""
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']}"
    return str(error.get("msg", "invalid value")).lower()


def data_root_problem(explicit: str | None) -> str | None:
    """Why the data root cannot take this run's outputs (missing and uncreatable, not writable), or None."""
    root = layout.data_root(explicit)
    setting = "the isic resource's data_dir" if explicit else f"{layout.DATA_DIR_ENV}"
    if not explicit and not os.environ.get(layout.DATA_DIR_ENV):
        setting = f"{layout.DATA_DIR_ENV} (unset: the default data/)"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason += " (not writable)"
        return (f"{setting} = {str(root)!r}: {reason.lower()}. Point {layout.DATA_DIR_ENV} at a folder "
                "you can write (it is created if missing), or make this one writable.")
    return None


def catalog_problem(load_and_select: Callable[[], object], root_ok: bool = True) -> str | None:
    """The catalog or selection error (which file, which source, the names known), or None.

    With an unusable data root the default dropzone cannot be read either; that is the root's
    problem, already reported, so it is not repeated here.
    """
    try:
        load_and_select()
    except CatalogError as exc:
        return str(exc)
    except OSError as exc:
        return None if not root_ok else f"cannot read the catalog or the dropzone: {exc}"
    return None


def compute_problem(explicit: str | None) -> str | None:
    """A compute value that is not an engine, or a Dask one on an install without the dask extra.

    Reaching the scheduler is left to the steps that use it (a cluster may come up after launch);
    they fail before any work when it does not answer.
    """
    try:
        choice = compute_from_env(explicit)
    except ComputeSettingError as exc:
        return str(exc)
    if choice.uses_dask:
        try:
            import distributed  # noqa: F401 - the steps import it again; this only asks whether they can
        except ImportError:
            return f"compute {choice.label!r} needs Dask, which is not installed here: {INSTALL_HINT}"
    return None


def problems(run_config: Mapping[str, Any] | None, data_dir: str | None,
             load_and_select: Callable[[], object], compute: str | None = None) -> list[str]:
    """Every mistake found, data root first (nothing else matters if outputs cannot be written).

    ``compute`` is the isic resource's field (empty: $ISIC_COMPUTE, then ``local``)."""
    found: list[str] = []
    root = data_root_problem(data_dir)
    if root:
        found.append(root)
    catalog = catalog_problem(load_and_select, root_ok=root is None)
    if catalog:
        found.append(catalog)
    found.extend(op_config_problems(run_config, config_classes()))
    engine = compute_problem(compute)
    if engine:
        found.append(engine)
    return [p if len(p) <= _MAX_PROBLEM_CHARS else p[: _MAX_PROBLEM_CHARS - 3] + "..." for p in found]


def report(found: list[str]) -> str:
    """The user-facing message: one line per problem, then what happens."""
    lines = [f"  - {p}" for p in found]
    return "\n".join(["this run's settings are not usable, so it stops before any step:", *lines])


class RunSettingsError(DagsterUserCodeProcessError):
    """This run's settings are wrong: the run fails with :func:`report`'s lines and no stack trace.

    Dagster prints an error raised while resources initialise with every frame between the raise and
    the run's top level, once as the resource's failure and again as the run's cause. An error of
    the kind Dagster uses for failures relayed from another process is instead reported as the
    error info it carries, here one with no stack (docs/DAGSTER_NOTES.md, "Short settings errors").
    It is a DagsterError, so Dagster re-raises it unwrapped; the run fails before any step starts.
    """

    def __init__(self, found: list[str]) -> None:
        message = report(found)
        info = SerializableErrorInfo(message=message, stack=[], cls_name=type(self).__name__)
        super().__init__(message, user_code_process_error_infos=[info])
        self.problems = list(found)
