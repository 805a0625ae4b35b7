"""``pacsman status``, ``runs`` and ``report`` for a run of ``pacsman dqr``.

A dqr run has no series of its own: XNAT pulls each study.  Its rows and studies are read
from the job store (:class:`pacsman.jobstore.dqr.DqrLedger`) and shown by study state (done,
counts unverified, partial, failed, and in flight: pending, queued, processing, issued,
received) with the reason of each row that needs attention; ``report`` writes one line per
row with its query values, its study's state, XNAT request, attempts, files and reason.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacsman.dqr import DqrState, resume_command
from pacsman.errors import EXIT_OK, EXIT_RUNNING, EXIT_SOME_FAILED
from pacsman.jobstore import JobStore, RowOutcome, RunRecord, Throughput
from pacsman.jobstore.dqr import DqrLedger, DqrRow, DqrStudyRecord
from pacsman.pipeline._runstatus import RunStatus, _duration, unfinished_lines
from pacsman.pipeline._runview import (
    Activity,
    RowView,
    RunActivity,
    Stages,
    activity,
    options_of,
)

__all__ = [
    "DQR_REPORT_COLUMNS",
    "DqrRunStatus",
    "dqr_report_table",
    "dqr_run_status",
    "dqr_status_json",
    "dqr_status_lines",
    "is_dqr_run",
]

#: The columns of ``pacsman report`` for a dqr run, after the row's own query values.
DQR_REPORT_COLUMNS: tuple[str, ...] = (
    "pacs_node",
    "query",
    "subject",
    "session",
    "state",
    "xnat_request",
    "xnat_status",
    "attempts",
    "counts_verified",
    "expected_instances",
    "files_in_xnat",
    "detail",
    "attention",
    "reason",
)
#: Rows needing attention (and studies in flight) listed on screen.
_SHOWN = 20
_IN_FLIGHT = (DqrState.PENDING, DqrState.QUEUED, DqrState.PROCESSING, DqrState.ISSUED)


def is_dqr_run(store: JobStore, record: RunRecord) -> bool:
    """True for a run ``pacsman dqr`` made."""
    return options_of(record).get("command") == "dqr" or DqrLedger(store).is_dqr_run(record.id)


@dataclass(frozen=True)
class DqrRunStatus:
    """Everything ``pacsman status`` shows about one dqr run."""

    record: RunRecord
    activity: Activity
    rows: tuple[DqrRow, ...]
    now: datetime
    resume: str

    @property
    def studies(self) -> list[DqrStudyRecord]:
        """Every study of the run, in query-file order."""
        return [study for row in self.rows for study in row.studies]

    @property
    def settled(self) -> bool:
        """Whether the run ended for good: what it did not do is left undone (a run that is
        working, or was interrupted or stopped, resumes what is pending)."""
        return self.activity.state in (RunActivity.FINISHED, RunActivity.UNKNOWN)

    @property
    def attention(self) -> list[tuple[int, str]]:
        """(line, reason) of the rows that need attention (before the run is settled: what
        failed)."""
        settled = self.settled
        found = [(row.query.line, "; ".join(row.reasons(settled=settled))) for row in self.rows]
        return [(line, reason) for line, reason in found if reason]

    @property
    def exit_code(self) -> int:
        """4 while running; 0 when finished with nothing to look at; else 1."""
        if self.activity.running:
            return EXIT_RUNNING
        finished = self.activity.state is RunActivity.FINISHED
        return EXIT_OK if finished and not self.attention else EXIT_SOME_FAILED

    def as_run_status(self) -> RunStatus:
        """The same run as the pipeline's :class:`RunStatus` (for ``pacsman runs``)."""
        settled = self.settled
        views = [
            RowView(row.query, RowOutcome(), "", "", "", row.reasons(settled=settled))
            for row in self.rows
        ]
        return RunStatus(
            self.record, self.activity, Stages(), tuple(views), Throughput(), self.now, self.resume
        )


def dqr_run_status(
    store: JobStore, record: RunRecord, *, now: datetime | None = None
) -> DqrRunStatus:
    """The status of dqr run ``record`` at ``now``, read in one snapshot of the store."""
    now = now or datetime.now(UTC)
    with store.snapshot():
        rows = DqrLedger(store).rows(record)
    options = options_of(record)
    return DqrRunStatus(
        record=record,
        activity=activity(record, now=now, host=socket.gethostname()),
        rows=tuple(rows),
        now=now,
        resume=resume_command(options) if options else "the same pacsman dqr command again",
    )


def _state_counts(studies: Sequence[DqrStudyRecord]) -> str:
    counts = Counter(study.state for study in studies)
    words = {DqrState.UNVERIFIED: "done, counts unverified"}
    parts = [f"{counts[s]} {words.get(s, s.value)}" for s in DqrState if counts[s]]
    return ", ".join(parts) or "none yet"


def _row_counts(rows: Sequence[DqrRow]) -> str:
    counts = Counter(row.query.state.value for row in rows)
    order = ("QUERIED", "DUPLICATE", "NO_MATCH", "FAILED", "PENDING")
    words = {"QUERIED": "resolved", "PENDING": "not resolved yet"}
    parts = [f"{counts[s]} {words.get(s, s.lower().replace('_', ' '))}" for s in order if counts[s]]
    return ", ".join(parts) or "none"


def _in_flight_lines(status: DqrRunStatus) -> list[str]:
    """Studies at XNAT now (or waiting for their next attempt), oldest status first; for a
    run that was interrupted or stopped, those its resume takes up."""
    moving = [s for s in status.studies if s.in_flight or s.state is DqrState.PENDING]
    if not moving or status.settled:
        return []
    now = status.now.timestamp()
    heading = "in flight" if status.activity.running else "unfinished when it stopped"
    lines = [f"{heading}: {len(moving)} study(ies)"]
    for study in sorted(moving, key=lambda s: s.status_since or now)[:_SHOWN]:
        since = f" for {_duration(now - study.status_since)}" if study.status_since else ""
        request = f" request {study.request_id}" if study.request_id is not None else ""
        lines.append(
            f"  line {study.line}: {study.state.value}{since}{request}, attempt {study.attempts}"
        )
    return lines


def dqr_status_lines(status: DqrRunStatus) -> list[str]:
    """``pacsman status`` of a dqr run, as text."""
    record, options = status.record, options_of(status.record)
    project, pacs = options.get("project") or "?", options.get("pacs") or "?"
    lines = [
        f"run {record.id}: {record.queryfile} (pacsman dqr)",
        f"  state        {status.activity.state.value}: {status.activity.reason}",
        f"  XNAT         project {project}, PACS {pacs}",
        f"  rows         {len(status.rows)}: {_row_counts(status.rows)}",
        f"  studies      {len(status.studies)}: {_state_counts(status.studies)}",
    ]
    lines += _in_flight_lines(status)
    attention = status.attention
    if attention:
        so_far = "" if status.settled else " so far"
        lines.append(f"attention{so_far}: {len(attention)} row(s)")
        lines += [f"  line {line}: {reason}" for line, reason in attention[:_SHOWN]]
        if len(attention) > _SHOWN:
            lines.append(
                f"  ... and {len(attention) - _SHOWN} more: pacsman report --run {record.id}"
            )
    return lines + _next_lines(status)


def _next_lines(status: DqrRunStatus) -> list[str]:
    unfinished = unfinished_lines(status.activity.state, status.resume)
    if unfinished:
        return unfinished
    if status.attention:
        return [
            f"finished; rows need attention (exit {EXIT_SOME_FAILED})",
            f"  try FAILED and PARTIAL studies again: {status.resume}",
            f"  every row with its reason: pacsman report --run {status.record.id}",
        ]
    return [f"finished; nothing needs attention (exit {EXIT_OK})"]


def dqr_status_json(status: DqrRunStatus) -> dict[str, Any]:
    """``pacsman status --json`` of a dqr run (no labels or identifiers beyond lines)."""
    record = status.record
    return {
        "run": record.id,
        "command": "dqr",
        "queryfile": record.queryfile,
        "state": status.activity.state.value,
        "reason": status.activity.reason,
        "pid": record.pid,
        "host": record.host,
        "started_at": record.started_at,
        "heartbeat_at": record.heartbeat_at,
        "stopped_at": record.stopped_at,
        "rows": dict(Counter(row.query.state.value for row in status.rows)),
        "studies": dict(Counter(study.state.value for study in status.studies)),
        "in_flight": [
            {
                "line": s.line,
                "state": s.state.value,
                "request": s.request_id,
                "status_since": s.status_since,
                "attempts": s.attempts,
            }
            for s in status.studies
            if s.in_flight
        ],
        "attention": [{"line": line, "reason": reason} for line, reason in status.attention],
        "resume": status.resume,
        "exit_code": status.exit_code,
    }


def dqr_report_table(
    status: DqrRunStatus, columns: Sequence[str], *, failed_only: bool
) -> list[list[str | int | None]]:
    """One line per row (per study, when a row resolved several): ``row``, the row's query
    values for ``columns``, then :data:`DQR_REPORT_COLUMNS`."""
    reasons = dict(status.attention)
    lines: list[list[str | int | None]] = []
    for row in status.rows:
        if failed_only and row.query.line not in reasons:
            continue
        query = row.query
        own = {**query.keys, "Subject": query.subject, "Session": query.session}
        own["Pacs"] = query.pacs if query.pacs_cell is None else query.pacs_cell
        values = [own.get(column, "") for column in columns]
        reason = reasons.get(query.line, "")
        attention = "yes" if reason else ""
        for study in row.studies or (None,):
            cells = _study_cells(study, query.detail)
            lines.append([query.line, *values, query.pacs, query.state.value, *cells])
            lines[-1] += [attention, reason]
    return lines


def _study_cells(study: DqrStudyRecord | None, row_detail: str) -> list[str | int | None]:
    if study is None:
        return ["", "", "", "", "", "", "", "", "", row_detail]
    return [
        study.study.subject,
        study.study.session,
        study.state.name,
        study.request_id,
        study.request_status,
        study.attempts,
        "yes" if study.study.counts_verified else "no",
        study.study.expected_instances,
        study.files,
        study.detail,
    ]


def default_report_path(record: RunRecord, *, fmt: str, failed_only: bool) -> Path:
    """``./<query file stem>_run<N>_dqr_report.<fmt>`` (``_failed`` with --failed-only)."""
    kind = "failed" if failed_only else "report"
    return Path(f"{Path(record.queryfile).stem}_run{record.id}_dqr_{kind}.{fmt}")
