"""A wrong setting stops a real `dagster asset materialize` before any step, in a few lines naming it.

Each case runs the CLI as a user would (the project's dagster.yaml in a temporary DAGSTER_HOME, so the
run-log handler is attached too) with the whole graph selected: had validation waited for a step,
raw_zips would have started (and downloaded) first. What the user sees is the CLI's whole output,
stdout and stderr together: about 100 lines with Dagster's stack frames printed twice before the
error became a RunSettingsError, 10 now (Dagster's CLI warning, three DEBUG lines, the run's failure
with our report, and "Error: Materialization failed.").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .tmpfs_support import read_only_bind

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).parent / "dagster"
MAX_LINES = 12
# The whole output of a bare `dagster asset materialize` that stops on a setting (10 lines measured;
# a report of several problems adds one line each).
MAX_OUTPUT_LINES = 15
HEADER = "this run's settings are not usable"


ASSET_MATERIALIZE = ["asset", "materialize", "-m", "isic_assets", "--select", "*"]
MULTIPROCESS_JOB = ["job", "execute", "-m", "isic_assets", "-j", "materialize_all_multiprocess"]


def _materialize(tmp_path: Path, *, env: dict[str, str] | None = None, config: dict | None = None,
                 data_dir: str | None = None, cli: list[str] = ASSET_MATERIALIZE
                 ) -> tuple[subprocess.CompletedProcess, Path]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    data = data_dir or str(tmp_path / "data")
    run_env = {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": data, "ISIC_SOURCES": "demo",
               "ISIC_LOGS_DIR": str(tmp_path / "logs"), **(env or {})}
    for name in ("ISIC_CATALOG", "ISIC_DROPZONE", "ISIC_DEMO_MIRROR_URL"):
        if name not in (env or {}):
            run_env.pop(name, None)
    command = [str(DAGSTER), *cli]
    if config is not None and cli[0] == "job":  # `dagster job execute` takes a config file (JSON is YAML)
        (tmp_path / "run.yaml").write_text(json.dumps(config))
        command += ["-c", str(tmp_path / "run.yaml")]
    elif config is not None:
        command += ["--config-json", json.dumps(config)]
    done = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
    return done, Path(data)


def _report(output: str) -> list[str]:
    """Our report as the resource raised it: the header line and the problem lines under it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if HEADER in line)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  - ")), len(lines))
    return lines[start:end]


def _assert_stopped_early(done: subprocess.CompletedProcess, data: Path, *expected: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "STEP_START" not in output and "RUN_FAILURE" in output, output
    # The bare CLI, as a user sees it: the report once, short, without Dagster's stack frames.
    assert len(output.splitlines()) <= MAX_OUTPUT_LINES, output
    assert output.count(HEADER) == 1, output
    assert "Stack Trace" not in output and "Traceback" not in output, output
    for produced in ("downloaded_zips", "demo_mirror", "merged_data"):
        assert not (data / produced).exists(), f"{produced} was written: a step ran\n{output}"
    report = "\n".join(_report(output))
    assert len(report.splitlines()) <= MAX_LINES, report
    for text in expected:
        assert text in report, f"{text!r} not in:\n{report}"
    # What make demo shows: the report once, in a few lines, without Dagster's stack frames.
    from isic_assets.run_progress import condense

    shown = list(condense(output.splitlines()))
    assert len(shown) <= MAX_LINES, "\n".join(shown)
    assert sum(expected[0] in line for line in shown) == 1, "\n".join(shown)
    assert not any("Stack Trace" in line or 'File "' in line for line in shown), "\n".join(shown)
    return output


def test_a_value_out_of_range_stops_before_any_step(tmp_path):
    done, data = _materialize(tmp_path, config={"ops": {"transformed_images": {"config": {"size": 5}}}})
    _assert_stopped_early(done, data, "ops.transformed_images.config.size = 5", "must be >= 16")


def test_the_multiprocess_job_checks_the_settings_before_launching_any_step_process(tmp_path):
    """On the multiprocess executor each step starts the resources in its own process: the check used
    to fail inside raw_zips' process, relayed with every other step "not executed" (about 140 lines)."""
    done, data = _materialize(tmp_path, cli=MULTIPROCESS_JOB,
                              config={"ops": {"transformed_images": {"config": {"size": 5}}}})
    output = _assert_stopped_early(done, data, "ops.transformed_images.config.size = 5", "must be >= 16")
    assert "STEP_WORKER_STARTING" not in output and "were not executed" not in output, output


def test_an_unknown_source_name_stops_before_any_step(tmp_path):
    done, data = _materialize(tmp_path, env={"ISIC_SOURCES": "demo,isic2091"})
    _assert_stopped_early(done, data, "unknown source 'isic2091'", "known names")


def test_a_compute_value_that_names_no_engine_stops_before_any_step(tmp_path):
    done, data = _materialize(tmp_path, env={"ISIC_COMPUTE": "dask"})
    _assert_stopped_early(done, data, "ISIC_COMPUTE='dask' is not a compute engine", "dask-local")


def test_a_dask_value_without_the_extra_is_a_problem_saying_how_to_install_it(monkeypatch):
    from isic_assets.defs import run_validation

    assert run_validation.compute_problem("dask-local") is None  # the dev extra installs Dask
    monkeypatch.setitem(sys.modules, "distributed", None)  # as on an install without isic_assets[dask]
    problem = run_validation.compute_problem("tcp://127.0.0.1:8786")
    assert problem is not None and "pip install 'isic_assets[dask]'" in problem and "tcp://127.0.0.1:8786" in problem
    assert run_validation.compute_problem("local") is None


def test_a_catalog_typo_stops_before_any_step(tmp_path):
    catalog = tmp_path / "my catalog.yaml"
    catalog.write_text("sources:\n  mine:\n    format: isic2091\n    files: {images: https://host/x.zip}\n")
    done, data = _materialize(tmp_path, env={"ISIC_CATALOG": str(catalog)})
    _assert_stopped_early(done, data, "unknown format 'isic2091'", str(catalog), "isic2019")


def test_an_uncreatable_data_root_stops_before_any_step_naming_the_setting(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    root = blocker / "data"
    done, _ = _materialize(tmp_path, data_dir=str(root))
    output = _assert_stopped_early(done, root, "ISIC_DATA_DIR", str(root), "Point ISIC_DATA_DIR at a folder")
    assert "Logging error" not in output  # was about 560 lines with the run log's handler tracebacks


def test_a_read_only_data_root_stops_before_any_step(tmp_path):
    root = tmp_path / "readonly"
    root.mkdir()
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(read_only_bind(root))  # root writes into a 0555 folder; not into a ro mount
        else:
            root.chmod(0o555)
            stack.callback(root.chmod, 0o755)
        assert not os.access(root, os.W_OK), "the data root is still writable"
        done, _ = _materialize(tmp_path, data_dir=str(root))
        output = _assert_stopped_early(done, root, "ISIC_DATA_DIR", str(root), "not writable")
        assert "Logging error" not in output
        assert list(root.iterdir()) == []


def test_the_run_log_handler_never_raises_or_prints_tracebacks(tmp_path, capsys):
    import logging

    from isic_assets.defs.run_log import RunLogFileHandler

    blocker = tmp_path / "a file"
    blocker.write_text("x")
    handler = RunLogFileHandler(directory=str(blocker / "logs"))
    for n in range(50):
        record = logging.LogRecord("dagster", logging.INFO, __file__, 1, f"event {n}", None, None)
        record.dagster_meta = {"run_id": "run-1", "job_name": "job"}
        handler.emit(record)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "run log" in err, err
