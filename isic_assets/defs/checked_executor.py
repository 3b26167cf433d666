"""The multiprocess executor, with the run's settings checked once in the run's own process.

On the in-process executor the ``isic`` resource checks the settings as it starts, before any step
(defs/run_validation.py). On Dagster's multiprocess executor every step starts the resources in a
process of its own, so a bad setting failed inside the first step's process, and Dagster printed
that failure relayed from the child, then every other step as "not executed": about 140 lines for a
one-line mistake. This executor runs the same check in the parent before any process is launched,
so the run fails with the same few lines as on the in-process executor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

from .resources import IsicSettings


def _isic_settings(run_config: Mapping[str, Any]) -> IsicSettings:
    """The ``isic`` resource as this run will configure it (run config first, then the environment)."""
    resources = run_config.get("resources") or {}
    config = (resources.get("isic") or {}).get("config") or {}
    return IsicSettings(**config)


class SettingsCheckedExecutor(dg.Executor):
    """Delegates everything to ``inner`` after :meth:`IsicSettings.validate_run` has passed."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[Any]:
        run_config = dict(plan_context.dagster_run.run_config or {})
        _isic_settings(run_config).validate_run(run_config)
        yield from self._inner.execute(plan_context, execution_plan)


def _create(init_context: dg.InitExecutorContext) -> dg.Executor:
    return SettingsCheckedExecutor(dg.multiprocess_executor.executor_creation_fn(init_context))


checked_multiprocess_executor = dg.ExecutorDefinition(
    name="multiprocess",
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=dg.multiprocess_executor.get_requirements,
    executor_creation_fn=_create,
    description="Each step in a process of its own; the run's settings are checked before the first.",
)
