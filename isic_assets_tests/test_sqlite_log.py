"""scan_state.SqliteLog: records on disk behind the JsonlLog interface, committed in batches.

A process killed by SIGKILL keeps every batch it committed and nothing half-written; a record that
does not parse reads as absent; key order, compaction and the SQL maximum behave as the transform
runner relies on.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from isic_assets.core.scan_state import SqliteLog, has_fields

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_killed_process_keeps_every_batch_it_committed(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    child = textwrap.dedent(f"""
        import os, signal
        from isic_assets.core.scan_state import SqliteLog
        log = SqliteLog({str(path)!r}, ("k",), batch=50)
        for i in range(130):
            log.append({{"k": f"id{{i:04d}}", "v": i}})
        os.kill(os.getpid(), signal.SIGKILL)  # 100 committed, 30 pending
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    again = SqliteLog(path, ("k",))
    assert again.damage is None
    assert [r["v"] for r in again.values()] == list(range(100))
    assert again.get("id0099") == {"k": "id0099", "v": 99} and again.get("id0100") is None


def test_a_record_that_does_not_parse_or_validate_reads_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    log = SqliteLog(path, ("k",), valid=has_fields("v"))
    for k in ("a", "b", "c"):
        log.append({"k": k, "v": 1})
    log.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE records SET record = '{\"k\": \"b\", \"v\"' WHERE key = 'b'")
        db.execute("UPDATE records SET record = '{\"k\": \"c\"}' WHERE key = 'c'")
        db.commit()
    again = SqliteLog(path, ("k",), valid=has_fields("v"))
    assert again.get("a") == {"k": "a", "v": 1}
    assert again.get("b") is None and again.get("c") is None
    assert [r["k"] for r in again.values()] == ["a"]


def test_values_come_in_key_order_across_pages_and_appends_meanwhile(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "state.sqlite", ("k",))
    log._PAGE = 7  # several pages
    keys = [f"ISIC_{i:07d}" for i in range(40)]
    for k in reversed(keys):
        log.append({"k": k, "n": 1})
    seen = []
    for record in log.values():
        seen.append(record["k"])
        log.append({"k": record["k"], "n": 2})  # rewriting the record being read does not repeat it
    assert seen == keys
    assert {r["n"] for r in log.values()} == {2}


def test_compact_keeps_only_the_given_keys_and_largest_reads_sql(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    log = SqliteLog(path, ("k",))
    for i in range(10):
        log.append({"k": f"k{i}", "size": i * 10, "status": "ok" if i % 2 else "quarantined"})
    assert log.largest("size", status="ok") == 90
    assert log.largest("size", status="quarantined") == 80
    assert log.largest("size", status="nothing") is None
    log.compact(keep=[("k1",), ("k2",), ("k9",), ("absent",)])
    log.close()
    again = SqliteLog(path, ("k",))
    assert [r["k"] for r in again.values()] == ["k1", "k2", "k9"] and len(again) == 3


def test_several_key_fields(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "state.sqlite", ("source", "crc"))
    log.append({"source": "a", "crc": 1, "v": "x"})
    log.append({"source": "a", "crc": 1, "v": "y"})
    log.append({"source": "b", "crc": 1, "v": "z"})
    assert log.get("a", 1) == {"source": "a", "crc": 1, "v": "y"} and log.get("a", 2) is None
    assert len(log) == 2
