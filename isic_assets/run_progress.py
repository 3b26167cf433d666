"""Turn a terminal run's Dagster console log into a few lines a person reads (the middle of ``make demo``).

``dagster asset materialize`` prints one line per Dagster event (about 200 for the demo), most of them
DEBUG bookkeeping. This filter reads that output on stdin and keeps, per step, when it starts and
ends (with its duration), the pipeline's own progress and result messages, each check's verdict,
and every warning and error in full. Nothing is lost: the UI and ``<data root>/logs/`` keep the whole
event log. Usage::

    dagster asset materialize -m isic_assets --select '*' 2>&1 | python -m isic_assets.run_progress
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator

# "<date> <time> <tz> - dagster - LEVEL - <job> - <run id> - <step> - <EVENT> - <message>"; the step
# and event parts are absent on run-level lines, the event part on a step's own log messages.
_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? [+-]\d{4} - dagster - (?P<level>[A-Z]+) - "
    r"(?P<job>\S+) - (?P<run>[0-9a-f-]{36}) - (?P<rest>.*)$"
)
_EVENT = re.compile(r"^(?:(?P<pid>\d+) - )?(?:(?P<step>[\w.\[\]]+) - )?(?P<event>[A-Z_]{4,}) - (?P<message>.*)$")
_STEP_MESSAGE = re.compile(r"^(?P<step>[\w.\[\]]+) - (?P<message>.*)$")
_DURATION = re.compile(r" in (?P<duration>[\d.]+(?:ms|s|m)?)\.?$")
_CHECK = re.compile(r"check[^'\"]*['\"](?P<name>\w+)['\"].*?(?P<verdict>did not pass|passed|failed|succeeded)"
                    r"(?:.*?Description: '(?P<why>.*?)'?$)?", re.IGNORECASE)
_DOWNLOADED = re.compile(r" downloaded from .*\((?P<mb>[\d.]+) MB")
_COUNT = re.compile(r"\b(?P<done>\d+)/(?P<total>\d+)\b(?! *%)")

# Lines of Dagster's failure reports that only say where, not what.
_NOISE = ("The above exception was caused by", "dagster._core.errors.Dagster", "Stack Trace:")
# Warnings a `make demo` user cannot act on: the CLI's advice to use `dg launch` (make demo is the
# entry point; both run the same graph) and Dagster's beta notices.
_UNACTIONABLE = ("SupersessionWarning: Function `asset_materialize_command`", "BetaWarning: ")
_FAILURES = {"STEP_FAILURE", "RUN_FAILURE", "PIPELINE_FAILURE", "ENGINE_EVENT_FAILURE"}
_LONGEST = 220


def _short(text: str) -> str:
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def _with_percent(message: str) -> str:
    """``385/585`` -> ``385/585 (66%)``: progress a person can read at a glance."""
    def add(match: re.Match) -> str:
        total = int(match["total"])
        return match[0] if not total else f"{match[0]} ({100 * int(match['done']) // total}%)"

    return _COUNT.sub(add, message, count=1)


def _strip_class(text: str) -> str:
    """``dagster._core.definitions.events.Failure: msg`` -> ``msg``: the class says nothing to a user."""
    return re.sub(r"^[\w.]*(?:Failure|Error|Exception): ", "", text)


def condense(lines: Iterable[str]) -> Iterator[str]:
    """The lines worth showing, in order."""
    continuing = False  # the lines after an error header belong to it (a message on several lines)
    in_stack = False  # Dagster's stack frames: in the UI and the run log, not here
    skip_source_line = False
    shown: set[str] = set()
    check_steps: set[str] = set()  # a check's verdict is its whole story: no "done" line
    downloads: dict[str, tuple[int, float]] = {}  # an error's text, once, though Dagster repeats it as the run's cause
    for raw in lines:
        line = raw.rstrip("\n")
        match = _LINE.match(line)
        if not match:
            text = line.strip()
            if text == "Stack Trace:":
                in_stack = True
            elif not text:
                in_stack = False
            elif any(fragment in text for fragment in _UNACTIONABLE):
                skip_source_line = True
            elif skip_source_line and line.startswith("  "):
                skip_source_line = False  # the source line Python prints under a warning
            elif in_stack or text.startswith(_NOISE) or text in shown:
                pass
            elif continuing:
                shown.add(text)
                yield "    " + _strip_class(text)
            elif not line.startswith(" ") and not text.startswith("Error: "):
                yield line  # not Dagster's log: anything else the process printed
            continue
        continuing = in_stack = False
        level, rest = match["level"], match["rest"]
        event = _EVENT.match(rest)
        if event:
            kind, step, message = event["event"], event["step"] or "run", event["message"]
            if kind == "STEP_START":
                pass  # the step's first message, or its end, says it runs
            elif kind == "STEP_SUCCESS":
                if step in downloads:
                    files, megabytes = downloads.pop(step)
                    yield f"[{step}] {files} file(s) downloaded, {megabytes:.1f} MB"
                if step not in check_steps:
                    duration = _DURATION.search(message)
                    yield f"[{step}] done" + (f" in {duration['duration']}" if duration else "")
            elif kind == "ASSET_CHECK_EVALUATION":
                check_steps.add(step)
                check = _CHECK.search(message)
                if check:
                    verdict = "FAILED" if check["verdict"].lower() in ("did not pass", "failed") else "passed"
                    why = f": {check['why']}" if check["why"] and verdict == "FAILED" else ""
                    yield _short(f"check {check['name']} {verdict}{why}")
                else:
                    yield f"[{step}] {_short(message)}"
            elif kind in _FAILURES or level in ("ERROR", "CRITICAL"):
                yield f"[{step}] {kind}: {message}"
                continuing = True
            elif kind == "RUN_SUCCESS":
                yield "run finished: success"
            elif level == "WARNING":
                yield f"[{step}] warning: {_short(message)}"
            continue
        plain = _STEP_MESSAGE.match(rest)
        step, message = (plain["step"], plain["message"]) if plain else ("run", rest)
        if level in ("ERROR", "CRITICAL"):
            yield f"[{step}] error: {message}"
            continuing = True
        elif level == "WARNING":
            yield f"[{step}] warning: {_short(message)}"
        elif level == "INFO":
            downloaded = _DOWNLOADED.search(message)
            if downloaded:  # one line per file is the run log's job; here a count at the step's end
                files, megabytes = downloads.get(step, (0, 0.0))
                downloads[step] = (files + 1, megabytes + float(downloaded["mb"]))
                continue
            yield f"[{step}] {_short(_with_percent(message))}"


def main() -> int:
    for line in condense(sys.stdin):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
