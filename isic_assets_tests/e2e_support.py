"""Helpers for end-to-end tests that run real Dagster processes (`dagster dev`) and a real browser.

`dagster dev` starts a webserver, a daemon and a code server as child processes. Signalling only the
parent leaves the webserver and code server running (docs/DAGSTER_NOTES.md section 3), so it is started in a
process group of its own, and stopping it signals that whole group, then kills whatever of the group
(or of its recorded descendants) is still alive, and reaps the parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"

# The flags this machine kind needs for a headless Chromium: no sandbox as root, and no background
# connections to Google hosts, which a closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# What the instance in a temporary DAGSTER_HOME needs: the same settings as the project's own
# .dagster_home/dagster.yaml (read at run time, so an edit there reaches the tests too).
REPO = Path(__file__).resolve().parents[1]
PROJECT_DAGSTER_YAML = REPO / ".dagster_home" / "dagster.yaml"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_dagster_home(path: Path) -> Path:
    """A fresh DAGSTER_HOME holding a copy of the project's dagster.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    text = PROJECT_DAGSTER_YAML.read_text() if PROJECT_DAGSTER_YAML.is_file() else "telemetry:\n  enabled: false\n"
    (path / "dagster.yaml").write_text(text)
    return path


def tail(path: Path, lines: int = 80) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {path}: {exc})"


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc, no psutil)."""
    children, found, todo = _children_of(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class DagsterDev:
    """A running `dagster dev`: its URL, its log file and its process group."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    known: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the webserver answers /server_info; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited with {self.proc.returncode} before it served the UI; "
                    f"log tail:\n{self.log_tail()}"
                )
            self.known |= descendants(self.proc.pid)
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(
            f"dagster dev did not answer {self.url}/server_info within {timeout:.0f}s "
            f"(last error: {last_error}); log tail:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left of it and of its descendants.

        Measured with dagster 1.13.28: after SIGTERM (or SIGINT) to the group only the daemon threads
        stop; `dagster dev`, the webserver and the code servers were all still running 10 s later.
        Hence a short grace period, then SIGKILL; the instance is a throw-away one.
        """
        pgid = self.proc.pid  # start_new_session=True: the leader's pid is the group id
        self.known |= descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not _group_alive(pgid) and not any(_alive(p) for p in self.known):
                break
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        for pid in self.known:  # a child that left the group (setsid) is still ours to end
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log_path: Path, cwd: Path = REPO,
                ready_timeout: float = 90.0) -> Iterator[DagsterDev]:
    """`dagster dev -h 127.0.0.1 -p <free port>` from ``cwd`` in its own process group.

    Yields once /server_info answers; always tears every process down on exit, failure included.
    """
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")  # the venv's own, whatever PATH says
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DagsterDev(proc=proc, port=port, log_path=log_path)
    try:
        server.wait_ready(ready_timeout)
        yield server
    finally:
        server.stop()
