"""One run's status, and how ``pacsman status``/``runs`` show it (private to the package).

:func:`run_status` reads a run in one snapshot of the job store; :class:`RunStatus` gives its
counts per step, rates, ETA, the rows that need attention and the exit code;
:func:`status_lines`, :func:`status_json` and :func:`runs_lines` are the screen and JSON.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacsman.errors import EXIT_OK, EXIT_RUNNING, EXIT_SOME_FAILED
from pacsman.jobstore import JobStore, RowOutcome, RunRecord, Throughput
from pacsman.pipeline._runview import (
    Activity,
    RowView,
    RunActivity,
    Stages,
    activity,
    options_of,
    parse_time,
    resume_command,
    row_views,
    show_time,
)

__all__ = ["RunStatus", "run_line_json", "run_status", "runs_lines", "status_json", "status_lines"]

#: Rows needing attention listed on screen; ``pacsman report --failed-only`` has them all.
_SHOWN = 20


@dataclass(frozen=True)
class RunStatus:
    """Everything ``pacsman status`` shows about one run."""

    record: RunRecord
    activity: Activity
    stages: Stages
    rows: tuple[RowView, ...]
    throughput: Throughput
    now: datetime
    resume: str

    @property
    def attention(self) -> list[RowView]:
        """The rows that need attention."""
        return [row for row in self.rows if row.needs_attention]

    @property
    def exit_code(self) -> int:
        """4 while running; 0 when finished with nothing to look at; else 1."""
        if self.activity.running:
            return EXIT_RUNNING
        finished = self.activity.state in (RunActivity.FINISHED, RunActivity.UNKNOWN)
        return EXIT_OK if finished and not self.attention else EXIT_SOME_FAILED

    def counts(self) -> dict[str, dict[str, int]]:
        """Counts per step: rows, series (retrieve), de-identification, push (experiments)."""
        outcomes = [row.outcome for row in self.rows]
        retrieve: Counter[str] = Counter()
        deidentify: Counter[str] = Counter()
        for outcome in outcomes:
            for (state, anonymization, _), n in outcome.steps.items():
                retrieve[state] += n
                deidentify[anonymization] += n if anonymization else 0
        sessions = {(p.subject, p.session): p.state.value for o in outcomes for p in o.pushes}
        studies = sum(o.studies for o in outcomes)
        return {
            "rows": {"total": len(self.rows), **Counter(r.query.state.value for r in self.rows)},
            "series": {
                "total": sum(o.series for o in outcomes),
                "studies": studies,
                "expected_instances": sum(o.expected_instances for o in outcomes),
                "received_instances": sum(o.received_instances for o in outcomes),
                **retrieve,
            },
            "deidentify": {k: n for k, n in deidentify.items() if n},
            "push": {"studies": studies, **Counter(sessions.values())},
        }

    def rates(self) -> dict[str, float]:
        """Per second, from the start of the last invocation to now (while it runs) or to the
        last thing each step settled."""
        start = parse_time(self.record.started_at)
        done = self.throughput
        settled = {
            "rows": (done.rows_queried, "row"),
            "instances": (done.instances_received, "series"),
            "series_deidentified": (done.series_deidentified, "anonymization"),
            "sessions_pushed": (done.sessions_pushed, "push"),
        }
        rates = {}
        for name, (count, kind) in settled.items():
            end = self.now if self.activity.running else parse_time(done.last_at.get(kind, ""))
            seconds = (end - start).total_seconds() if start and end else 0.0
            if count and seconds >= 1.0:  # a shorter window says nothing about speed
                rates[name] = count / seconds
        return rates

    def eta(self) -> dict[str, float | None]:
        """Seconds left per step that has work left, while running (None: no rate yet)."""
        if not self.activity.running:
            return {}
        counts, rates = self.counts(), self.rates()
        left = {"rows": counts["rows"].get("PENDING", 0)}
        if self.stages.retrieve:
            left["instances"] = sum(_expected_left(row.outcome) for row in self.rows)
        if self.stages.deidentify:
            done = sum(counts["deidentify"].values())
            left["series_deidentified"] = counts["series"]["total"] - done
        if self.stages.push:
            push = counts["push"]
            left["sessions_pushed"] = push["studies"] - push.get("DONE", 0) - push.get("FAILED", 0)
        return {
            name: (n / rates[name] if rates.get(name) else None)
            for name, n in left.items()
            if n > 0
        }


def _expected_left(outcome: RowOutcome) -> int:
    """Instances still to retrieve for a row (its series not retrieved yet), estimated from
    the row's average per series."""
    left = outcome.count(retrieve="QUERIED") + outcome.count(retrieve="RETRIEVING")
    return outcome.expected_instances * left // outcome.series if outcome.series else 0


def run_status(store: JobStore, record: RunRecord, *, now: datetime | None = None) -> RunStatus:
    """The status of ``record`` at ``now``, read in one snapshot of the store."""
    now = now or datetime.now(UTC)
    state = activity(record, now=now, host=socket.gethostname())
    options = options_of(record)
    with store.snapshot():
        stages = Stages.from_options(options) if options else Stages.seen_in(store, record)
        rows = row_views(store, record, stages, running=state.running)
        since = record.started_at or record.created_at
        throughput = store.throughput(record, since)
    return RunStatus(
        record=record,
        activity=state,
        stages=stages,
        rows=tuple(rows),
        throughput=throughput,
        now=now,
        resume=resume_command(options) if options else "the same pacsman command again",
    )


# -- text and JSON ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _states(counts: Mapping[str, int], order: Sequence[str]) -> str:
    parts = [f"{counts[s]} {s.lower().replace('_', ' ')}" for s in order if counts.get(s)]
    return ", ".join(parts) or "none yet"


def _retrieve_states(series: Mapping[str, int], order: Sequence[str], running: bool) -> str:
    text = _states(series, order).replace("queried", "to do")
    return text if running else text.replace("retrieving", "left mid-retrieval")


def _rate(status: RunStatus, name: str, unit: str, per: float = 1.0) -> str:
    rate = status.rates().get(name)
    if not rate:
        return ""
    eta = status.eta().get(name)
    left = f", ETA {_duration(eta)}" if eta is not None else ""
    return f"; {rate * per:.1f} {unit}{left}"


def status_lines(status: RunStatus, *, cluster: Sequence[str] = ()) -> list[str]:
    """``pacsman status`` as text; ``cluster`` (the head nodes, or where a job's studies
    are) goes after the counts, before the rows that need attention."""
    record, counts = status.record, status.counts()
    series = counts["series"]
    lines = [
        f"run {record.id}: {record.queryfile}",
        f"  state        {status.activity.state.value}: {status.activity.reason}",
        f"  asked for    {', '.join(status.stages.names())}",
        f"  rows         {counts['rows']['total']}: "
        + _states(counts["rows"], ("QUERIED", "DUPLICATE", "NO_MATCH", "FAILED", "PENDING"))
        + (_rate(status, "rows", "rows/s") if counts["rows"].get("PENDING") else ""),
        f"  found        {series['studies']} study(ies), {series['total']} series, "
        f"{series['expected_instances']} instance(s) expected",
    ]
    if status.stages.retrieve:
        order = ("COMPLETE", "INCOMPLETE", "FAILED", "RETRIEVING", "QUERIED")
        lines.append(
            f"  retrieve     {_retrieve_states(series, order, status.activity.running)}; "
            f"{series['received_instances']} instance(s) received"
            + _rate(status, "instances", "instances/s")
        )
    if status.stages.deidentify:
        done = counts["deidentify"]
        lines.append(
            f"  de-identify  {_states(done, ('ANONYMIZED', 'QUARANTINED'))} of "
            f"{series['total']} series" + _rate(status, "series_deidentified", "series/min", 60)
        )
    if status.stages.push:
        push = counts["push"]
        lines.append(
            f"  push         {_states(push, ('DONE', 'FAILED'))} of {push['studies']} "
            f"session(s) on {status.stages.push}"
            + _rate(status, "sessions_pushed", "sessions/min", 60)
        )
    return (
        lines + _eta_lines(status) + list(cluster) + _attention_lines(status) + _next_lines(status)
    )


def _eta_lines(status: RunStatus) -> list[str]:
    eta = status.eta()
    if not status.activity.running or not eta:
        return []
    known = [seconds for seconds in eta.values() if seconds is not None]
    if not known:
        return ["  ETA          not known yet (nothing settled since the run started)"]
    note = "" if len(known) == len(eta) else " (some steps have no rate yet)"
    return [f"  ETA          about {_duration(max(known))}{note}"]


def _attention_lines(status: RunStatus) -> list[str]:
    rows = status.attention
    if not rows:
        return []
    so_far = " so far" if status.activity.running else ""
    lines = [f"attention{so_far}: {len(rows)} row(s)"]
    for row in rows[:_SHOWN]:
        lines.append(f"  line {row.query.line}: {row.reason}")
    if len(rows) > _SHOWN:
        lines.append(f"  ... and {len(rows) - _SHOWN} more")
    return lines


def _next_lines(status: RunStatus) -> list[str]:
    """What to do next, and the exit code."""
    state, run = status.activity.state, status.record.id
    report = f"pacsman report --run {run} --failed-only --out FILE.csv"
    unfinished = unfinished_lines(state, status.resume)
    if unfinished:
        return unfinished
    done = "finished" if state is RunActivity.FINISHED else "not known whether it finished"
    if status.attention:
        retry = any(row.query.state.value != "NO_MATCH" for row in status.attention)
        return [
            f"{done}; rows need attention (exit {EXIT_SOME_FAILED})",
            *([f"  retry what failed on the way: {status.resume}"] if retry else []),
            f"  those rows as a query file, to correct and run: {report}",
        ]
    return [f"{done}; nothing needs attention (exit {EXIT_OK})"]


def unfinished_lines(state: RunActivity, resume: str) -> list[str]:
    """What next for a run still going or stopped before its end; [] for a finished one."""
    if state is RunActivity.RUNNING:
        return [f"still running (exit {EXIT_RUNNING}); ask again later"]
    if state in (RunActivity.INTERRUPTED, RunActivity.STOPPED):
        fix = "fix what stopped it, then " if state is RunActivity.STOPPED else ""
        return [f"not finished (exit {EXIT_SOME_FAILED}); {fix}resume with:", f"  {resume}"]
    return []


def status_json(status: RunStatus) -> dict[str, Any]:
    """``pacsman status --json``."""
    record = status.record
    return {
        "run": record.id,
        "queryfile": record.queryfile,
        "state": status.activity.state.value,
        "reason": status.activity.reason,
        "pid": record.pid,
        "host": record.host,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "heartbeat_at": record.heartbeat_at,
        "stopped_at": record.stopped_at,
        "asked_for": status.stages.names(),
        "counts": status.counts(),
        "rates_per_second": status.rates(),
        "eta_seconds": status.eta(),
        "attention": [
            {"line": row.query.line, "pacs": row.query.pacs, "reason": row.reason}
            for row in status.attention
        ],
        "resume": status.resume,
        "exit_code": status.exit_code,
    }


def run_line_json(status: RunStatus) -> dict[str, Any]:
    record = status.record
    return {
        "run": record.id,
        "queryfile": record.queryfile,
        "state": "retired" if record.retired_at else status.activity.state.value,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "stopped_at": record.stopped_at,
        "rows": len(status.rows),
        "attention": len(status.attention),
    }


def runs_lines(statuses: Sequence[RunStatus], jobstore: Path | str) -> list[str]:
    """``pacsman runs`` as text: one line per run."""
    if not statuses:
        return [f"the job store {jobstore} holds no run yet"]
    lines = [
        f"{'run':>4}  {'state':<12} {'last started':<24} {'rows':>6} {'attention':>9}  query file"
    ]
    for status in statuses:
        line = run_line_json(status)
        started = show_time(line["started_at"] or line["created_at"])
        lines.append(
            f"{line['run']:>4}  {line['state']:<12} {started:<24} {line['rows']:>6} "
            f"{line['attention']:>9}  {line['queryfile']}"
        )
    lines.append("details: pacsman status --run ID")
    return lines
