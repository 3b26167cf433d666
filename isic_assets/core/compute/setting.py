"""The ``ISIC_COMPUTE`` setting: which engine runs a step's per-image work.

Three values (README "Running on a cluster"):

- ``local`` (default): a fork pool on the machine running the step, sized by the step's ``workers``;
- ``dask-local``: a ``distributed.LocalCluster`` started for the step, same size, one thread per worker;
- ``tcp://HOST:PORT``: the scheduler of a Dask cluster the user started (``dask scheduler`` and
  ``dask worker``, dask-jobqueue, dask-kubernetes, the Dask Helm chart).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

ENV_VAR = "ISIC_COMPUTE"
LOCAL = "local"
DASK_LOCAL = "dask-local"
DASK_EXTERNAL = "dask"
INSTALL_HINT = "pip install 'isic_assets[dask]'"

_ADDRESS = re.compile(r"^(tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class ComputeSettingError(ValueError):
    """A value of ISIC_COMPUTE (or of the ``compute`` field) that names no engine."""


@dataclass(frozen=True)
class ComputeChoice:
    """A parsed setting: ``kind`` is local, dask-local or dask; ``address`` only for an external cluster."""

    kind: str
    address: str | None = None

    @property
    def uses_dask(self) -> bool:
        return self.kind != LOCAL

    @property
    def label(self) -> str:
        return self.address or self.kind


def parse_compute(value: str | None, source: str = ENV_VAR) -> ComputeChoice:
    """Parse a setting value; empty means ``local``. ``source`` names the setting in errors."""
    text = (value or "").strip()
    if text in ("", LOCAL):
        return ComputeChoice(LOCAL)
    if text == DASK_LOCAL:
        return ComputeChoice(DASK_LOCAL)
    if _ADDRESS.match(text):
        port = int(text.rsplit(":", 1)[1])
        if 0 < port < 65536:
            return ComputeChoice(DASK_EXTERNAL, text)
    raise ComputeSettingError(
        f"{source}={value!r} is not a compute engine: use 'local' (the default), 'dask-local', or the "
        "address of a running Dask scheduler such as 'tcp://10.0.0.5:8786'"
    )


def compute_from_env(explicit: str | None = None) -> ComputeChoice:
    """The choice of a run: ``explicit`` (the resource field) if set, else $ISIC_COMPUTE, else local."""
    if explicit:
        return parse_compute(explicit, source="compute (the isic resource field)")
    return parse_compute(os.environ.get(ENV_VAR), source=ENV_VAR)
