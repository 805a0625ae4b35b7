"""A job as the page and the API show it, read from the job store alone (private).

:func:`job_rows` reads a job's run (``store.info_records``) into one :class:`RowState` per
query row: its state per stage and the reasons it needs attention.  :func:`job_progress`
adds them up per stage (:class:`JobProgress`: counts, progress bars, the ETA).  What may be
shown without the token, and what only with it, is decided in :mod:`pacsman.service._webjson`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from pacsman.jobstore import InfoRecord, JobStore
from pacsman.jobstore.jobs import FINAL_STATES, Job, JobOptions, JobState
from pacsman.models import ItemState

__all__ = ["JobProgress", "RowState", "Stage", "job_progress", "job_rows"]

#: A row's state for a step is the worst of its series, in these orders.
_RETRIEVE_ORDER = ("FAILED", "INCOMPLETE", "RETRIEVING", "PENDING", "COMPLETE")
_DEIDENTIFY_ORDER = ("QUARANTINED", "PENDING", "ANONYMIZED")
_PUSH_ORDER = ("FAILED", "PENDING", "DONE")
_RETRIEVED = frozenset({ItemState.COMPLETE, ItemState.INCOMPLETE, ItemState.FAILED})
_FAILED_SERIES = frozenset({ItemState.INCOMPLETE, ItemState.FAILED})
#: Failed series named one by one in a row's reasons; past this, counted.
_SHOWN_SERIES = 3


@dataclass(frozen=True)
class Stages:
    """The stages a job asked for (query is always one)."""

    retrieve: bool
    deidentify: bool
    push: str

    @classmethod
    def of(cls, options: JobOptions) -> Stages:
        deidentify = options.anonymize or bool(options.push)
        return cls(options.save or deidentify, deidentify, options.push or "")


@dataclass(frozen=True)
class RowState:
    """One query row: its state per stage, what it found, and why it needs attention."""

    line: int
    pacs: str
    state: str
    retrieve: str
    deidentify: str
    push: str
    studies: int
    series: int
    expected_instances: int
    received_instances: int
    reasons: tuple[str, ...]
    #: The row's records (query values, studies, series): shown only with the token.
    records: tuple[InfoRecord, ...] = ()

    @property
    def series_records(self) -> list[InfoRecord]:
        return [r for r in self.records if r.series_state is not None]


@dataclass(frozen=True)
class Stage:
    """One progress bar: how much of a stage is settled, and how much of that failed."""

    name: str
    done: int
    total: int
    failed: int = 0

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


@dataclass(frozen=True)
class JobProgress:
    """A job's counts per stage, its progress bars, its rates and ETA (while it runs)."""

    counts: dict[str, dict[str, int]]
    stages: tuple[Stage, ...]
    rates: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None

    def json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "progress": {
                s.name: {"done": s.done, "total": s.total, "failed": s.failed} for s in self.stages
            },
            "rates_per_second": {k: round(v, 3) for k, v in self.rates.items()},
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
        }


# -- rows ------------------------------------------------------------------------------------


def job_rows(store: JobStore, job: Job) -> list[RowState]:
    """Every row of ``job``'s run, in line order (none before the job has started)."""
    if job.run_id is None:
        return []
    records = store.info_records(store.run_record(job.run_id))
    stages = Stages.of(job.options)
    settled = job.state in FINAL_STATES
    return [
        _row_state(tuple(group), stages, settled=settled)
        for _, group in groupby(records, key=lambda r: r.line)
    ]


def _row_state(records: tuple[InfoRecord, ...], stages: Stages, *, settled: bool) -> RowState:
    first = records[0]
    series = [r for r in records if r.series_state is not None]
    retrieve = [_pending(r.series_state) for r in series]
    return RowState(
        line=first.line,
        pacs=first.pacs,
        state=first.row_state.value,
        retrieve=_cell(stages.retrieve, _RETRIEVE_ORDER, retrieve),
        deidentify=_cell(
            stages.deidentify, _DEIDENTIFY_ORDER, [_pending(r.anonymization) for r in series]
        ),
        push=_cell(bool(stages.push), _PUSH_ORDER, [_pending(r.push) for r in series]),
        studies=len({r.study.study_instance_uid for r in series if r.study is not None}),
        series=len(series),
        expected_instances=sum(r.expected_instances or 0 for r in series),
        received_instances=sum(r.received_instances or 0 for r in series),
        reasons=tuple(_reasons(first, series, stages, settled=settled)),
        records=records,
    )


def _pending(state: ItemState | None) -> str:
    return "PENDING" if state in (None, ItemState.QUERIED) else state.value


def _cell(asked: bool, order: Sequence[str], cells: Sequence[str]) -> str:
    """A row's state for one stage: the worst of its series ('' when not asked, or none)."""
    if not asked or not cells:
        return ""
    return next((state for state in order if state in cells), "PENDING")


def _colon(detail: str) -> str:
    return f": {detail}" if detail else ""


def _reasons(
    row: InfoRecord, series: Sequence[InfoRecord], stages: Stages, *, settled: bool
) -> list[str]:
    """Why a row needs attention: what failed, and (once the job ended) what is not done."""
    if row.row_state in (ItemState.NO_MATCH, ItemState.FAILED):
        return [f"{row.row_state.value}{_colon(row.row_detail)}"]
    if row.row_state is ItemState.PENDING:
        return ["not queried yet"] if settled else []
    found = _series_problems(series)
    pushes = {(r.xnat_subject, r.xnat_session): r for r in series if r.push is ItemState.FAILED}
    found += [
        f"session {subject}/{session} push to {r.push_target or stages.push} FAILED"
        + _colon(r.push_detail)
        for (subject, session), r in sorted(pushes.items())
    ]
    return found + (_not_done(series, stages) if settled else [])


def _series_problems(series: Sequence[InfoRecord]) -> list[str]:
    lines = []
    for r in series:
        label = f"series {r.series_number or r.series_instance_uid}"
        if r.series_state in _FAILED_SERIES:
            lines.append(f"{label} {r.series_state}{_colon(r.series_detail)}")
        if r.anonymization is ItemState.QUARANTINED:
            lines.append(
                f"{label} QUARANTINED in de-identification{_colon(r.anonymization_detail)}"
            )
    if len(lines) > _SHOWN_SERIES:
        return [*lines[:_SHOWN_SERIES], f"{len(lines) - _SHOWN_SERIES} more failed series"]
    return lines


def _not_done(series: Sequence[InfoRecord], stages: Stages) -> list[str]:
    found = []
    if stages.retrieve:
        left = sum(1 for r in series if r.series_state not in _RETRIEVED)
        found += [f"{left} series not retrieved"] if left else []
    if stages.deidentify:
        left = sum(
            1 for r in series if r.series_state is ItemState.COMPLETE and r.anonymization is None
        )
        found += [f"{left} series not de-identified"] if left else []
    if stages.push:
        left = len(
            {(r.xnat_subject, r.xnat_session) for r in series if r.xnat_session and r.push is None}
        )
        found += [f"{left} session(s) not pushed to {stages.push}"] if left else []
    return found


# -- counts, bars, ETA ---------------------------------------------------------------------------


def job_progress(
    store: JobStore, job: Job, rows: Sequence[RowState], *, now: datetime | None = None
) -> JobProgress:
    """Counts per stage, the progress bars, and (while the job runs) rates and ETA."""
    stages = Stages.of(job.options)
    series = [r for row in rows for r in row.series_records]
    counts = _counts(rows, series)
    bars = _bars(stages, counts)
    if job.state is not JobState.RUNNING or job.run_id is None:
        return JobProgress(counts, bars)
    rates = _rates(store, job.run_id, now or datetime.now(UTC))
    return JobProgress(counts, bars, rates, _eta(stages, counts, rates))


def _counts(rows: Sequence[RowState], series: Sequence[InfoRecord]) -> dict[str, dict[str, int]]:
    sessions = {(r.line, r.study.study_instance_uid) for r in series if r.study is not None}
    pushed = {(r.xnat_subject, r.xnat_session): r.push for r in series if r.push is not None}
    retrieve = Counter(r.series_state.value for r in series if r.series_state is not None)
    return {
        "rows": {"total": len(rows), **Counter(row.state for row in rows)},
        "series": {
            "total": len(series),
            "retrieved": retrieve.get("COMPLETE", 0),
            **retrieve,
        },
        "instances": {
            "expected": sum(r.expected_instances or 0 for r in series),
            "received": sum(r.received_instances or 0 for r in series),
        },
        "deidentified": {
            "series": sum(1 for r in series if r.anonymization is ItemState.ANONYMIZED),
            "QUARANTINED": sum(1 for r in series if r.anonymization is ItemState.QUARANTINED),
            "instances": sum(r.anonymized_instances or 0 for r in series),
        },
        "pushed": {
            "sessions": len(sessions),
            **Counter(state.value for state in pushed.values()),
        },
    }


def _bars(stages: Stages, counts: dict[str, dict[str, int]]) -> tuple[Stage, ...]:
    rows, series = counts["rows"], counts["series"]
    failed_rows = rows.get("FAILED", 0) + rows.get("NO_MATCH", 0)
    bars = [Stage("query", rows["total"] - rows.get("PENDING", 0), rows["total"], failed_rows)]
    if stages.retrieve:
        failed = series.get("INCOMPLETE", 0) + series.get("FAILED", 0)
        bars.append(Stage("retrieve", series["retrieved"] + failed, series["total"], failed))
    if stages.deidentify:
        done = counts["deidentified"]
        quarantined = done["QUARANTINED"]
        bars.append(
            Stage("de-identify", done["series"] + quarantined, series["total"], quarantined)
        )
    if stages.push:
        pushed = counts["pushed"]
        failed = pushed.get("FAILED", 0)
        bars.append(Stage("push", pushed.get("DONE", 0) + failed, pushed["sessions"], failed))
    return tuple(bars)


def _rates(store: JobStore, run_id: int, now: datetime) -> dict[str, float]:
    """Per second, since the run's last start (nothing for a window under a second)."""
    record = store.run_record(run_id)
    since = record.started_at or record.created_at
    seconds = (now - datetime.fromisoformat(since)).total_seconds()
    if seconds < 1.0:
        return {}
    done = store.throughput(record, since)
    settled = {
        "rows": done.rows_queried,
        "instances": done.instances_received,
        "series_deidentified": done.series_deidentified,
        "sessions_pushed": done.sessions_pushed,
    }
    return {name: n / seconds for name, n in settled.items() if n}


def _eta(
    stages: Stages, counts: dict[str, dict[str, int]], rates: dict[str, float]
) -> float | None:
    """Seconds until the slowest stage with work left is done; None when one has no rate."""
    left = {"rows": counts["rows"].get("PENDING", 0)}
    if stages.retrieve:
        instances = counts["instances"]
        left["instances"] = max(instances["expected"] - instances["received"], 0)
    if stages.deidentify:
        done = counts["deidentified"]
        left["series_deidentified"] = (
            counts["series"]["total"] - done["series"] - done["QUARANTINED"]
        )
    if stages.push:
        pushed = counts["pushed"]
        left["sessions_pushed"] = (
            pushed["sessions"] - pushed.get("DONE", 0) - pushed.get("FAILED", 0)
        )
    waiting = {name: n for name, n in left.items() if n > 0}
    if not waiting or any(not rates.get(name) for name in waiting):
        return None
    return max(n / rates[name] for name, n in waiting.items())
