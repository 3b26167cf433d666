"""A plain-text log file per run, ``<data root>/logs/<start>_<run id>.log``, for people who skip the UI.

It is a Python logging handler that the project's ``.dagster_home/dagster.yaml`` attaches to every
Dagster log manager (``python_logs.dagster_handler_config``), so it sees every run of that instance
however it was started: ``dagster asset materialize`` in a terminal, or the daemon for the UI,
sensors and schedules. A Dagster logger definition would not do: a job's loggers run only when the
run config names them, which neither the CLI nor the UI does by default (verified with 1.13.28).

The directory is ``$ISIC_LOGS_DIR``, else ``$ISIC_DATA_DIR/logs``, else ``data/logs`` in the
repository: the handler is created by the instance, before any run config exists, so a data root
set only in the launchpad does not move the logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

from ..core import layout

_lock = threading.Lock()
# run id -> its log file, shared by every handler instance of the process (Dagster builds a new
# handler for each log manager it creates: one per run, step and resource initialisation).
_paths: dict[str, Path] = {}
# Runs whose log file could not be written in this process: given up, said once.
_unwritable: set[str] = set()


def _say_once(message: str) -> None:
    # stderr itself may be gone; then there is nowhere left to say it.
    with contextlib.suppress(Exception):
        sys.stderr.write(message + "\n")


def default_logs_dir() -> Path:
    explicit = os.environ.get("ISIC_LOGS_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data = os.environ.get("ISIC_DATA_DIR")
    if data:
        return Path(data).expanduser().resolve() / layout.LOGS
    return layout.default_data_dir() / layout.LOGS


class RunLogFileHandler(logging.Handler):
    """Appends each record of a run to that run's file; records outside any run are ignored.

    Every line is opened, appended and closed: the multiprocess executor writes one run's file from
    several processes, and ``O_APPEND`` keeps whole lines intact without any shared state.
    """

    def __init__(self, directory: str | None = None, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        self.directory = Path(directory).expanduser().resolve() if directory else None

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None)
        run_id = meta.get("run_id") if isinstance(meta, dict) else None
        if not run_id:
            return
        if run_id in _unwritable:
            return
        try:
            line = self._line(record, meta)
            path = self._path_for(run_id, record.created)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except Exception as exc:  # noqa: BLE001 - a log file must never break or flood a run
            # Not logging.Handler.handleError: it prints a traceback per record, hundreds of lines for
            # one unwritable folder (a read-only ISIC_DATA_DIR, which the isic resource reports in one
            # short error anyway). One line, once per run and process, and the file is given up.
            with _lock:
                first = run_id not in _unwritable
                _unwritable.add(run_id)
            if first:
                _say_once(f"isic run log: not writing this run's log file ({type(exc).__name__}: {exc})")

    def _path_for(self, run_id: str, created: float) -> Path:
        with _lock:
            path = _paths.get(run_id)
            if path is None:
                directory = self.directory or default_logs_dir()
                directory.mkdir(parents=True, exist_ok=True)
                # Another process of the same run (a multiprocess step) may have started the file.
                existing = sorted(directory.glob(f"*_{run_id}.log"))
                stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created))
                path = existing[0] if existing else directory / f"{stamp}_{run_id}.log"
                _paths[run_id] = path
            return path

    @staticmethod
    def _line(record: logging.LogRecord, meta: dict) -> str:
        """``<UTC time> <LEVEL> <pid - step - EVENT - message>``: Dagster's own line minus job and run id."""
        message = record.getMessage()
        prefix = f"{meta.get('job_name')} - {meta.get('run_id')} - "
        message = message.removeprefix(prefix)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        return f"{stamp}Z {record.levelname:<7} {message}"
