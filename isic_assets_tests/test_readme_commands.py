"""Every ```bash block of the README runs as written, so the README cannot drift from the code.

A block that cannot run here says why in the line above it, for example
``<!-- readme-runner: skip (needs the internet) -->``; every other block runs, in README order, with
``bash -eo pipefail`` in a sandbox: a folder that links the repository's package, virtualenv,
Makefile and project files, with its own ``.dagster_home`` (the project's dagster.yaml) and
``data/``, so ``data/...`` paths and ``make`` targets in the blocks touch only the sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from isic_assets_tests.demo_support import copy_demo_mirror

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_BLOCK = re.compile(r"(?P<marker><!-- readme-runner: (?P<verdict>[^>]*?) -->\n)?(?P<indent>[ \t]*)```bash\n"
                    r"(?P<body>.*?)\n(?P=indent)```", re.DOTALL)
LINKED = (".venv", "isic_assets", "pyproject.toml", "workspace.yaml", "Makefile")


def readme_blocks() -> list[tuple[int, str | None, str]]:
    """(line number, skip reason or None, commands) of every bash block in the README."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("indent")) + 1
        verdict = match["verdict"]
        reason = None
        if verdict is not None:
            skip = re.fullmatch(r"skip \((?P<reason>.+)\)", verdict)
            assert skip, f"README line {line}: a readme-runner marker is 'skip (<reason>)', got {verdict!r}"
            reason = skip["reason"]
        body = "\n".join(row.removeprefix(match["indent"]) for row in match["body"].splitlines())
        blocks.append((line, reason, body))
    return blocks


def test_every_bash_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    fences = README.read_text(encoding="utf-8").count("```bash")
    assert len(blocks) == fences, "a ```bash block the runner could not parse"
    assert any(reason is None for _, reason, _ in blocks), "the runner runs nothing"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, generated_demo_mirror) -> Path:
    root = tmp_path_factory.mktemp("readme")
    copy_demo_mirror(generated_demo_mirror, root / "data")  # raw_zips takes the generator's fast path
    for name in LINKED:
        (root / name).symlink_to(REPO / name)
    (root / ".dagster_home").mkdir()
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", root / ".dagster_home" / "dagster.yaml")
    return root


@pytest.mark.e2e
@pytest.mark.parametrize("line, reason, body", readme_blocks(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_readme_block_runs(sandbox, line, reason, body):
    if reason is not None:
        pytest.skip(f"README line {line}: {reason}")
    env = {**os.environ, "DAGSTER_HOME": str(sandbox / ".dagster_home"), "ISIC_DATA_DIR": str(sandbox / "data")}
    for name in ("ISIC_CATALOG", "ISIC_SOURCES", "ISIC_DROPZONE", "ISIC_DEMO_MIRROR_URL", "ISIC_LOGS_DIR"):
        env.pop(name, None)
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", body], cwd=sandbox, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"README line {line} failed ({done.returncode}):\n{body}\n{done.stdout}\n{done.stderr}"
