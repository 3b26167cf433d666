"""Watching the sources for changes: what the two sensors decide, without Dagster.

* Remote files: probe every watched file (conditional HEAD, concurrently, within a time budget) and
  every ``isic_api`` query, compare with the fingerprints kept in the cursor, and decide: launch one
  run (a run key that is the same for the same change), or skip with a reason that names what was
  unreachable or not watched.
* The dropzone: scan the drops, compare with the previous scan kept in the cursor, and decide which
  complete new drops to launch.

Each ``evaluate_*`` function returns a ``WatchDecision``: the sensor turns it into a run request or
a skip reason, and stores ``cursor``. Cursors are JSON with a ``version`` field.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from pathlib import Path

from . import dropzone
from .catalog import CatalogError, Source
from .demo_url import DEMO_MIRROR_URL_ENV, DEMO_PLACEHOLDER
from .download import DownloadPolicy
from .fingerprints import Fingerprint, SourceUnreachable, make_client, probe_first
from .isic_api import ApiQuery, IsicApiClient, api_token_from_env, search_fingerprint

# Dagster abandons a sensor evaluation after 60 s (DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS); probing
# stops after this budget whatever the servers do, leaving time to load the catalog and answer.
PROBE_BUDGET_S = 25.0
PROBE_THREADS = 8


@dataclass(frozen=True)
class WatchDecision:
    """One evaluation's outcome: a run to launch (``run_key`` set) or a skip, and the next cursor.

    ``selection`` is the source selection the run must use (None: the configured one); ``tags`` go on
    the run; ``log`` is a line worth logging when a run is launched.
    """

    cursor: str | None
    run_key: str | None = None
    skip_reason: str | None = None
    selection: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    log: str | None = None


# ----------------------------------------------------------------------------------------------
# remote files and API queries


@dataclass
class SourcesCheck:
    """One evaluation's findings, per file key ``<source>/<role>``."""

    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)  # the next cursor
    changed: dict[str, tuple[Fingerprint, Fingerprint]] = field(default_factory=dict)  # old, new
    recorded: list[str] = field(default_factory=list)  # first seen: recorded, not a change
    unreachable: dict[str, str] = field(default_factory=dict)  # key -> error


def watch_list(sources: list[Source], demo_url: str | None) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """URLs to probe per file key, and the sources that cannot be watched, with why."""
    watched: dict[str, tuple[str, ...]] = {}
    unwatched: dict[str, str] = {}
    for source in sources:
        if source.placeholders and demo_url and source.placeholders == {DEMO_PLACEHOLDER}:
            source = source.with_substitutions({DEMO_PLACEHOLDER: demo_url})
        if source.placeholders:
            unwatched[source.name] = "demo" if DEMO_PLACEHOLDER in source.placeholders else "placeholder"
        elif source.api is not None:
            continue  # probed through the API (probe_api_sources), not by file
        elif not source.files:
            unwatched[source.name] = "no files"
        for role, spec in source.files.items():
            if source.name not in unwatched:
                watched[f"{source.name}/{role}"] = spec.urls
    return watched, unwatched


def probe_files(watched: Mapping[str, tuple[str, ...]], previous: Mapping[str, Fingerprint],
                budget_s: float = PROBE_BUDGET_S) -> dict[str, Fingerprint | SourceUnreachable]:
    """Probe every file concurrently; none takes longer than ``budget_s`` in total."""
    deadline = time.monotonic() + budget_s
    results: dict[str, Fingerprint | SourceUnreachable] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(PROBE_THREADS, len(watched))), thread_name_prefix="probe")
    with make_client() as client:
        futures = {key: pool.submit(probe_first, urls, client, previous.get(key), deadline)
                   for key, urls in watched.items()}
        wait_all(futures.values(), timeout=budget_s + 2.0)
        for key, future in futures.items():
            if not future.done():
                results[key] = SourceUnreachable(watched[key][0], f"no answer within {budget_s:.0f} s")
                continue
            try:
                results[key] = future.result()
            except SourceUnreachable as exc:
                results[key] = exc
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def probe_api_sources(sources: list[Source]) -> dict[str, Fingerprint | SourceUnreachable]:
    """One fingerprint per ``isic_api`` source: the archive's count and total size for its query.

    Two small requests (``images/search/?limit=1`` and ``images/search/size/``) with a short retry
    policy, so an evaluation stays far inside the sensor timeout. A new image matching the query
    changes the count; the run it launches downloads and processes only the new images, because
    every stage skips what it already has.
    """
    policy = DownloadPolicy(connect_timeout=5.0, read_timeout=10.0, max_attempts=2, backoff_initial=0.5,
                            backoff_max=2.0)
    results: dict[str, Fingerprint | SourceUnreachable] = {}
    for source in sources:
        if source.api is None:
            continue
        query = ApiQuery(query=source.api.query, collections=source.api.collections, limit=source.api.limit,
                         api_url=source.api.api_url)
        url = f"{query.api_url}images/search/?query={query.query}&collections={','.join(map(str, query.collections))}"
        try:
            with IsicApiClient.for_query(query, policy=policy, token=api_token_from_env()) as client:
                version = search_fingerprint(client, query)
        except Exception as exc:  # noqa: BLE001 - any failure is "unreachable", reported, never a crash
            results[f"{source.name}/query"] = SourceUnreachable(url, f"{type(exc).__name__}: {exc}")
            continue
        results[f"{source.name}/query"] = Fingerprint(url=url, etag=version, last_modified=None, content_length=None)
    return results


def compare(previous: Mapping[str, Fingerprint],
            probes: Mapping[str, Fingerprint | SourceUnreachable]) -> SourcesCheck:
    """Sort each probed file into unchanged, changed, first seen or unreachable.

    A file answered by another mirror than last time is recorded, not counted as a change: ETags of
    two servers are not comparable, and the downloader decides with its own manifest anyway.
    """
    check = SourcesCheck()
    for key, result in sorted(probes.items()):
        old = previous.get(key)
        if isinstance(result, SourceUnreachable):
            check.unreachable[key] = str(result)
            if old is not None:
                check.fingerprints[key] = old  # not advanced: the next reachable probe decides
            continue
        check.fingerprints[key] = result
        if old is None or old.url != result.url:
            check.recorded.append(key)
        elif not result.same_version(old):
            check.changed[key] = (old, result)
    return check


def change_run_key(changed: Mapping[str, tuple[Fingerprint, Fingerprint]], launch: int) -> str:
    """Same change, same key (Dagster launches a run_key once); a later change gets a new key.

    ``launch`` is the cursor's launch counter: the same tick evaluated twice has the same counter,
    while a file whose content goes back and forth (S3 ETags are content hashes, so A, B, A, B) gets a
    new key each time instead of being deduplicated away.
    """
    payload = {"launch": launch,
               "files": {key: [old.to_dict(), new.to_dict()] for key, (old, new) in sorted(changed.items())}}
    return "isic-sources-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def read_sources_cursor(cursor: str | None) -> tuple[dict[str, Fingerprint], int]:
    """(fingerprint per file key, number of runs requested so far)."""
    if not cursor:
        return {}, 0
    data = json.loads(cursor)
    files = {key: Fingerprint.from_dict(value) for key, value in data.get("files", {}).items()}
    return files, int(data.get("launches", 0))


def write_sources_cursor(fingerprints: Mapping[str, Fingerprint], launches: int) -> str:
    return json.dumps({"version": 1, "launches": launches,
                       "files": {k: v.to_dict() for k, v in sorted(fingerprints.items())}}, sort_keys=True)


def _by_source(keys: list[str] | Mapping[str, str]) -> str:
    """``source (role: error; role: error)`` summaries, one per source."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        source, role = key.split("/", 1)
        detail = f"{role}: {keys[key]}" if isinstance(keys, Mapping) else role
        grouped.setdefault(source, []).append(detail)
    return "; ".join(f"{source} ({', '.join(parts)})" for source, parts in grouped.items())


def _unwatched_note(unwatched: Mapping[str, str]) -> str:
    demo = [name for name, why in unwatched.items() if why == "demo"]
    other = [name for name, why in unwatched.items() if why != "demo"]
    note = ""
    if demo:
        note += (f" Not watched: {', '.join(demo)}: the demo mirror exists only while raw_zips runs. To watch "
                 f"it, serve it with `python -m isic_assets.demo serve data/demo_mirror --port 8765` and set "
                 f"{DEMO_MIRROR_URL_ENV}=http://127.0.0.1:8765 for the daemon and the runs.")
    if other:
        note += f" Not watched (no file URLs to fingerprint): {', '.join(other)}."
    return note


def evaluate_sources(sources: list[Source], cursor: str | None, demo_url: str | None, selection: str,
                     probe_budget_s: float = PROBE_BUDGET_S) -> WatchDecision:
    """One evaluation of the sources sensor: probe, compare with ``cursor``, decide.

    The first evaluation (no cursor) only records fingerprints. While any source is unreachable no
    run is launched (it would fail in raw_zips) and every change stays pending in the cursor.
    """
    watched, unwatched = watch_list(sources, demo_url)
    note = _unwatched_note(unwatched)
    has_api = any(source.api is not None for source in sources)
    if not watched and not has_api:
        return WatchDecision(cursor=cursor,
                             skip_reason=f"no selected source can be watched ({selection}).{note}")
    first = cursor is None
    previous, launches = read_sources_cursor(cursor)
    probes = probe_files(watched, previous, probe_budget_s) if watched else {}
    probes.update(probe_api_sources(sources))
    check = compare(previous, probes)
    if check.unreachable:
        pending = {**check.fingerprints, **{key: old for key, (old, _new) in check.changed.items()}}
        waiting = f" {len(check.changed)} changed file(s) wait for them." if check.changed else ""
        return WatchDecision(
            cursor=write_sources_cursor(pending, launches),
            skip_reason=f"unreachable: {_by_source(check.unreachable)}. No run until every selected source "
                        f"answers.{waiting}{note}",
        )
    if check.changed:
        changed = sorted(check.changed)
        return WatchDecision(
            cursor=write_sources_cursor(check.fingerprints, launches + 1),
            run_key=change_run_key(check.changed, launches + 1),
            tags={"isic/trigger": "isic_sources_sensor", "isic/changed": ",".join(changed)[:500]},
            log=f"changed: {', '.join(changed)}",
        )
    if first:
        message = f"first evaluation: recorded the fingerprints of {len(check.fingerprints)} file(s); no run"
    elif check.recorded:
        message = f"recorded {len(check.recorded)} newly watched file(s) ({_by_source(check.recorded)}); no run"
    else:
        message = f"{len(check.fingerprints)} file(s) unchanged"
    return WatchDecision(cursor=write_sources_cursor(check.fingerprints, launches), skip_reason=message + "." + note)


# ----------------------------------------------------------------------------------------------
# the dropzone


def read_dropzone_cursor(cursor: str | None) -> tuple[dict[str, dropzone.Snapshot], dict[str, str], int]:
    """(snapshot of every drop at the previous scan, fingerprint of every drop launched, launch count)."""
    if not cursor:
        return {}, {}, 0
    data = json.loads(cursor)
    return data.get("seen", {}), data.get("launched", {}), int(data.get("launches", 0))


def write_dropzone_cursor(seen: Mapping[str, dropzone.Snapshot], launched: Mapping[str, str], launches: int) -> str:
    return json.dumps({"version": 1, "launches": launches, "seen": dict(sorted(seen.items())),
                       "launched": dict(sorted(launched.items()))}, sort_keys=True)


def _rejected_if_unusable(status: dropzone.DropStatus) -> dropzone.DropStatus:
    """A complete drop whose sidecar the catalog refuses (an unknown format, a missing role) is rejected
    here, so it neither blocks the launch of the other drops nor goes unmentioned."""
    if status.state != "complete":
        return status
    try:
        status.drop.source()
    except CatalogError as exc:
        return dropzone.DropStatus(status.drop, "invalid", str(exc).removeprefix(f"{status.drop.sidecar}: "),
                                   status.snapshot)
    return status


def drops_report(statuses: list[dropzone.DropStatus], launched: dict[str, str]) -> str:
    """Every drop with its state, one clause each: complete (new or already ingested), waiting and
    why, rejected and why. A bad sidecar is named even when another drop launches a run."""
    parts = []
    for status in statuses:
        name = status.drop.name
        if status.state == "complete":
            ingested = launched.get(status.drop.name) == status.fingerprint
            parts.append(f"{name}: complete, {'already ingested' if ingested else 'new'} ({status.reason})")
        elif status.state == "invalid":
            parts.append(f"{name}: rejected, {status.reason}")
        else:
            parts.append(f"{name}: waiting, {status.reason.removeprefix('waiting for ')}"
                         if status.reason.startswith("waiting for ") else f"{name}: waiting, {status.reason}")
    return "; ".join(parts) if parts else "no drop"


def evaluate_dropzone(folder: Path, cursor: str | None, selection: str,
                      validate_selection: Callable[[str], object]) -> WatchDecision:
    """One evaluation of the dropzone sensor: which complete drops are new since the last launch.

    ``validate_selection`` resolves the selection the run would use (configured sources plus every
    complete drop) and raises ``CatalogError`` when it cannot: then nothing is launched and the
    cursor is kept, since no run could fix it.
    """
    if not folder.is_dir():
        return WatchDecision(cursor=cursor, skip_reason=f"no dropzone folder at {folder}: create it and drop "
                                                        "files with a sidecar YAML (README, 'The dropzone')")
    seen, launched, launches = read_dropzone_cursor(cursor)
    statuses = [_rejected_if_unusable(dropzone.check_drop(drop, seen.get(drop.name)))
                for drop in dropzone.discover_drops(folder)]
    present = {s.drop.name for s in statuses}
    seen = {s.drop.name: s.snapshot for s in statuses if s.snapshot}
    launched = {name: fp for name, fp in launched.items() if name in present}
    complete = [s for s in statuses if s.state == "complete"]
    new = [s for s in complete if launched.get(s.drop.name) != s.fingerprint]
    report = drops_report(statuses, launched)
    if not new:
        message = (f"nothing new to ingest ({len(complete)} drop(s) already ingested, "
                   f"{len(statuses) - len(complete)} not ready): {report}")
        return WatchDecision(cursor=write_dropzone_cursor(seen, launched, launches), skip_reason=message)
    run_selection = ",".join([selection, *(s.drop.name for s in complete)])
    try:
        validate_selection(run_selection)
    except CatalogError as exc:  # e.g. ISIC_SOURCES names an unknown source: nothing a run could fix
        return WatchDecision(cursor=cursor, skip_reason=f"cannot launch {run_selection!r}: {exc}")
    for status in new:
        launched[status.drop.name] = status.fingerprint
    names = [s.drop.name for s in new]
    # The launch counter makes a drop removed and put back unchanged a new request, not a duplicate.
    payload = [launches + 1, sorted((s.drop.name, s.fingerprint) for s in new)]
    digest = hashlib.sha256(json.dumps(payload).encode()).hexdigest()
    return WatchDecision(
        cursor=write_dropzone_cursor(seen, launched, launches + 1),
        run_key=f"dropzone-{digest[:24]}",
        selection=run_selection,
        tags={"isic/trigger": "dropzone_sensor", "isic/drops": ",".join(names)[:500]},
        log=f"launching with sources {run_selection}: {report}",
    )
