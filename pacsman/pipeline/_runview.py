"""One run as the operator sees it, read from the job store alone (private to the package).

Used by ``pacsman status``/``runs`` (:mod:`pacsman.pipeline.status`) and ``pacsman report``
(:mod:`pacsman.pipeline.export`):

* whether the run is working now (its heartbeat is fresh and its process alive), finished,
  interrupted or stopped by an error (:func:`activity`);
* which steps it was asked for (``--save``, ``--anonymize``, ``--push``: :class:`Stages`);
* each row with its series, its state per step and the reasons it needs attention
  (:class:`RowView`); while the run works, only what failed counts, not what is still to do.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pacsman.jobstore import JobStore, RowOutcome, RowQuery, RunOutcome, RunRecord, SeriesProblem

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER_SECONDS",
    "Activity",
    "RowView",
    "RunActivity",
    "Stages",
    "activity",
    "options_of",
    "parse_time",
    "process_alive",
    "resume_command",
    "row_views",
    "show_time",
]

#: How often a working run beats its heartbeat in the job store.
HEARTBEAT_SECONDS = 5.0
#: A heartbeat older than this means the process is gone (killed, or its machine is down).
STALE_AFTER_SECONDS = 30.0

_RETRIEVE_FAILED = frozenset({"INCOMPLETE", "FAILED"})
#: The state a row shows for a step: the worst of its series, in this order.
_RETRIEVE_ORDER = ("FAILED", "INCOMPLETE", "RETRIEVING", "PENDING", "COMPLETE")
_DEIDENTIFY_ORDER = ("QUARANTINED", "PENDING", "ANONYMIZED")
_PUSH_ORDER = ("FAILED", "PENDING", "DONE")


class RunActivity(StrEnum):
    """What a run is doing now, as far as the job store tells."""

    RUNNING = "running"
    FINISHED = "finished"
    #: Killed, Ctrl-C, or its machine went down: the same command resumes it.
    INTERRUPTED = "interrupted"
    #: An error stopped it: fix what it says, then the same command resumes it.
    STOPPED = "stopped"
    #: Recorded by a pacsman from before heartbeats: not known.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Activity:
    """A run's :class:`RunActivity` and why pacsman thinks so."""

    state: RunActivity
    reason: str = ""

    @property
    def running(self) -> bool:
        """True while the run's process works on it."""
        return self.state is RunActivity.RUNNING


def parse_time(text: str) -> datetime | None:
    """A timestamp of the job store (ISO 8601, UTC), or None when empty."""
    return datetime.fromisoformat(text) if text else None


def show_time(text: str) -> str:
    """``2026-01-05 10:00:01 UTC`` for a job-store timestamp."""
    when = parse_time(text)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "?"


def activity(record: RunRecord, *, now: datetime, host: str) -> Activity:
    """What ``record`` is doing at ``now``, seen from ``host``.

    A run counts as running only while its heartbeat is fresh (younger than
    :data:`STALE_AFTER_SECONDS`) and, when it works on this host, its process is alive.
    """
    if record.outcome is RunOutcome.FINISHED:
        took = _took(record.started_at, record.stopped_at)
        return Activity(RunActivity.FINISHED, f"at {show_time(record.stopped_at)}{took}")
    if record.outcome is RunOutcome.INTERRUPTED:
        return Activity(
            RunActivity.INTERRUPTED, f"{record.outcome_detail} at {show_time(record.stopped_at)}"
        )
    if record.outcome is RunOutcome.STOPPED:
        return Activity(RunActivity.STOPPED, record.outcome_detail)
    beat = parse_time(record.heartbeat_at)
    if beat is None:
        return Activity(RunActivity.UNKNOWN, "recorded by a pacsman without heartbeats")
    age = (now - beat).total_seconds()
    who = f"process {record.pid} on {record.host}"
    last = f"last heartbeat {show_time(record.heartbeat_at)}, {_ago(age)}"
    if age > STALE_AFTER_SECONDS:
        return Activity(
            RunActivity.INTERRUPTED, f"no heartbeat for {round(age)} s from {who} ({last})"
        )
    if record.host == host and record.pid is not None and not process_alive(record.pid):
        return Activity(RunActivity.INTERRUPTED, f"{who} is gone ({last})")
    return Activity(
        RunActivity.RUNNING, f"{who} since {show_time(record.started_at)}; heartbeat {_ago(age)}"
    )


def _took(started: str, stopped: str) -> str:
    start, stop = parse_time(started), parse_time(stopped)
    return f", after {round((stop - start).total_seconds())} s" if start and stop else ""


def _ago(seconds: float) -> str:
    return f"{max(0, round(seconds))} s ago"


def process_alive(pid: int) -> bool:
    """True while process ``pid`` of this host runs (a zombie awaiting its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


@dataclass(frozen=True)
class Stages:
    """The steps a run was asked for, over all its invocations."""

    retrieve: bool = False
    deidentify: bool = False
    push: str = ""
    nifti: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Stages:
        """From the options a run recorded (see :func:`pacsman.pipeline.status.run_options`)."""
        push = str(options.get("push") or "")
        return cls(
            retrieve=bool(options.get("save")),
            deidentify=bool(options.get("anonymize")) or bool(push),
            push=push,
            nifti=bool(options.get("nifti")),
        )

    @classmethod
    def seen_in(cls, store: JobStore, record: RunRecord) -> Stages:
        """What a run recorded before options were: the steps it left traces of."""
        targets = store.push_targets(record)
        steps = [
            key for outcome in store.row_outcomes(record, "").values() for key in outcome.steps
        ]
        return cls(
            retrieve=any(retrieve != "QUERIED" for retrieve, _, _ in steps),
            deidentify=any(deidentify for _, deidentify, _ in steps),
            push=targets[0] if targets else "",
        )

    def names(self) -> list[str]:
        """The steps, in pipeline order."""
        asked = ["query"]
        asked += ["retrieve"] if self.retrieve else []
        asked += ["de-identify"] if self.deidentify else []
        asked += ["NIfTI"] if self.nifti else []
        asked += [f"push to {self.push}"] if self.push else []
        return asked


def options_of(record: RunRecord) -> dict[str, Any]:
    """The options ``record`` recorded ({} when none, or not JSON)."""
    try:
        found = json.loads(record.options_json) if record.options_json else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def resume_command(options: Mapping[str, Any], *, here: Path | None = None) -> str:
    """The shell command that resumes a run with ``options`` (``cd`` first when the run was
    started in another directory, whose relative config paths it used)."""
    words = ["pacsman", "--queryfile", str(options.get("queryfile", "QUERYFILE"))]
    words += ["--save"] if options.get("save") else []
    if options.get("push"):
        words += ["--push", str(options["push"])]
    elif options.get("anonymize"):
        words += ["--anonymize"]
    if not (options.get("save") or options.get("anonymize") or options.get("push")):
        words += ["--info"]
    if options.get("nifti"):
        words += ["--nifti", *(["--bids", str(options["bids"])] if options.get("bids") else [])]
    if int(options.get("workers") or 1) != 1:
        words += ["--workers", str(options["workers"])]
    for flag in ("out_directory", "pacs", "sheet", "encoding", "config"):
        if options.get(flag):
            words += [f"--{flag}", str(options[flag])]
    command = shlex.join(words)
    cwd = str(options.get("cwd") or "")
    if cwd and Path(cwd) != (here or Path.cwd()):
        return f"cd {shlex.quote(cwd)} && {command}"
    return command


@dataclass(frozen=True)
class RowView:
    """One query row: its query values, what its series add up to, its state per step and
    why it needs attention."""

    query: RowQuery
    outcome: RowOutcome
    retrieve: str
    deidentify: str
    push: str
    #: Why the row needs attention (empty: it does not).
    reasons: tuple[str, ...]

    @property
    def needs_attention(self) -> bool:
        """True when something about this row failed, or (once the run stopped) is not done."""
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        """The reasons as one line."""
        return "; ".join(self.reasons)


def row_views(
    store: JobStore, record: RunRecord, stages: Stages, *, running: bool
) -> list[RowView]:
    """Every row of ``record`` with its steps and reasons, in line order."""
    outcomes = store.row_outcomes(record, stages.push)
    views = []
    for query in store.row_queries(record):
        outcome = outcomes.get(query.line, RowOutcome())
        steps = list(outcome.steps)
        views.append(
            RowView(
                query=query,
                outcome=outcome,
                retrieve=_cell(stages.retrieve, _RETRIEVE_ORDER, [_pending(k[0]) for k in steps]),
                deidentify=_cell(stages.deidentify, _DEIDENTIFY_ORDER, [k[1] or _P for k in steps]),
                push=_cell(bool(stages.push), _PUSH_ORDER, [k[2] or _P for k in steps]),
                reasons=tuple(_reasons(query, outcome, stages, settled=not running)),
            )
        )
    return views


_P = "PENDING"


def _pending(retrieve: str) -> str:
    return _P if retrieve == "QUERIED" else retrieve


def _cell(asked: bool, order: Sequence[str], cells: Sequence[str]) -> str:
    """A row's state for one step: the worst of its series ('' when not asked, or none)."""
    if not asked or not cells:
        return ""
    return next((state for state in order if state in cells), "PENDING")


def _reasons(query: RowQuery, outcome: RowOutcome, stages: Stages, *, settled: bool) -> list[str]:
    """Why a row needs attention: what failed, and (``settled``) what was asked but not done."""
    state = query.state.value
    if state in ("NO_MATCH", "FAILED"):
        return [f"{state}: {query.detail}"]
    if state == "PENDING":
        return ["not queried yet"] if settled else []
    reasons = _problems(outcome.problems)
    reasons += [
        f"session {p.subject}/{p.session} push to {stages.push} FAILED" + _colon(p.detail)
        for p in outcome.pushes
        if p.state.value == "FAILED"
    ]
    if settled:
        reasons += _not_done(outcome, stages)
    return reasons


def _colon(detail: str) -> str:
    return f": {detail}" if detail else ""


def _problems(problems: Sequence[SeriesProblem], shown: int = 3) -> list[str]:
    """One reason per failed series; past ``shown``, the rest counted."""
    lines = []
    for problem in problems:
        label = f"series {problem.series_number or problem.series_instance_uid}"
        if problem.state.value in _RETRIEVE_FAILED:
            lines.append(f"{label} {problem.state.value}" + _colon(problem.detail))
        if problem.anonymization is not None and problem.anonymization.value == "QUARANTINED":
            lines.append(
                f"{label} QUARANTINED in de-identification" + _colon(problem.anonymization_detail)
            )
    if len(lines) > shown:
        return [*lines[:shown], f"{len(lines) - shown} more failed series"]
    return lines


def _not_done(outcome: RowOutcome, stages: Stages) -> list[str]:
    """What the run was asked to do for this row and has not done, counted per step."""
    found = []
    if stages.retrieve:
        left = outcome.count(retrieve="QUERIED") + outcome.count(retrieve="RETRIEVING")
        found += [f"{left} series not retrieved"] if left else []
    if stages.deidentify:
        left = outcome.count(retrieve="COMPLETE", deidentify="")
        found += [f"{left} series not de-identified"] if left else []
    if stages.push and outcome.sessions_not_pushed:
        found += [f"{outcome.sessions_not_pushed} session(s) not pushed to {stages.push}"]
    return found
