"""What the API and the page show of a job and its rows, with and without the token (private).

Without the token: line numbers, PACS node names, states, counts and reasons, each reason
with every identifier the job store holds for the job hidden (:func:`job_redactor`).  With
it: the rows' query values and labels, and the studies and series found (PatientID,
AccessionNumber, StudyDate, descriptions).  Nothing here escapes HTML: the page's templates
do (Jinja2 autoescape), the API is JSON.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pacsman.jobstore import InfoRecord, JobStore
from pacsman.jobstore.jobs import FINAL_STATES, Job
from pacsman.service._webview import JobProgress, RowState, job_progress, job_rows
from pacsman.service.security import Redactor

__all__ = ["ProgressCache", "job_json", "job_redactor", "row_json", "shown_reasons"]

#: Query columns that are person names (hidden in every spelling).
_NAME_KEYS = ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName")


def _identifiers(records: Sequence[InfoRecord]) -> tuple[set[str], set[str]]:
    """(values, person names) the job store holds for these records."""
    values: set[str] = set()
    names: set[str] = set()
    for r in records:
        for key, value in r.query:
            (names if key in _NAME_KEYS or key.endswith("Name") else values).add(value)
        values.update((r.subject, r.session))
        if r.study is not None:
            study = r.study
            values.update((study.patient_id, study.accession_number, study.study_instance_uid))
            names.add(study.patient_name)
    return values - {""}, names - {""}


def job_redactor(rows: Sequence[RowState]) -> Redactor:
    """Hides every identifier of every row of a job: query values, labels, the PatientIDs,
    names and AccessionNumbers found (a reason of one row may name another's patient)."""
    values, names = _identifiers([r for row in rows for r in row.records])
    return Redactor(values, names)


def shown_reasons(row: RowState, hide: Redactor | None) -> list[str]:
    """The row's reasons: as recorded with the token (``hide`` None), else through ``hide``."""
    if hide is None:
        return list(row.reasons)
    return [hide(reason) for reason in row.reasons]


def job_json(job: Job, *, detail: str) -> dict[str, Any]:
    """A job as the API shows it (``detail`` as the caller may show it)."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "priority": job.priority,
        "options": asdict(job.options),
        "asks_for": job.options.describe(),
        "queryfile": job.queryfile_name,
        "source": job.source,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "node": job.owner_node,
        "run_id": job.run_id,
        "requested": job.requested,
        "detail": detail,
    }


def row_json(row: RowState, hide: Redactor | None) -> dict[str, Any]:
    """One row as ``GET /api/jobs/{id}/rows`` shows it: with its identifiers when ``hide``
    is None (a request with the token), else without them and with reasons through it."""
    shown: dict[str, Any] = {
        "line": row.line,
        "pacs": row.pacs,
        "state": row.state,
        "retrieve": row.retrieve,
        "deidentify": row.deidentify,
        "push": row.push,
        "studies": row.studies,
        "series": row.series,
        "expected_instances": row.expected_instances,
        "received_instances": row.received_instances,
        "reasons": shown_reasons(row, hide),
    }
    if hide is None and row.records:
        first = row.records[0]
        shown["query"] = dict(first.query)
        shown["subject"] = first.subject
        shown["session"] = first.session
        shown["found"] = _studies_json(row.series_records)
    return shown


def _studies_json(series: Sequence[InfoRecord]) -> list[dict[str, Any]]:
    studies: dict[str, dict[str, Any]] = {}
    for r in series:
        if r.study is None:
            continue
        study = studies.setdefault(
            r.study.study_instance_uid,
            {
                "StudyInstanceUID": r.study.study_instance_uid,
                "PatientID": r.study.patient_id,
                "AccessionNumber": r.study.accession_number,
                "StudyDate": r.study.study_date,
                "StudyDescription": r.study.study_description,
                "series": [],
            },
        )
        study["series"].append(
            {
                "SeriesInstanceUID": r.series_instance_uid,
                "SeriesNumber": r.series_number,
                "Modality": r.modality,
                "SeriesDescription": r.series_description,
                "state": r.series_state.value if r.series_state else "",
                "expected_instances": r.expected_instances,
                "received_instances": r.received_instances,
                "anonymization": r.anonymization.value if r.anonymization else "",
                "push": r.push.value if r.push else "",
                "xnat_subject": r.xnat_subject,
                "xnat_session": r.xnat_session,
                "xnat_uri": r.push_uri,
            }
        )
    return list(studies.values())


# -- a cache, so that a page refreshing every few seconds does not re-read big runs -----------


class ProgressCache:
    """Each job's progress and its detail line with identifiers hidden, kept ``ttl``
    seconds while the job may change, and as long as it does not once it ended."""

    def __init__(self, ttl: float = 2.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._kept: dict[int, tuple[tuple[object, ...], float, JobProgress, str]] = {}

    def get(self, store: JobStore, job: Job) -> tuple[JobProgress, str]:
        """``(progress, detail without identifiers)`` of ``job``."""
        key = (job.state, job.finished_at, job.run_id, job.detail)
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(job.id)
        fresh = kept is not None and (job.state in FINAL_STATES or now - kept[1] < self._ttl)
        if kept is not None and fresh and kept[0] == key:
            return kept[2], kept[3]
        with store.snapshot():
            rows = job_rows(store, job)
            progress = job_progress(store, job, rows)
        detail = job_redactor(rows)(job.detail) if job.detail else ""
        with self._lock:
            self._kept[job.id] = (key, now, progress, detail)
        return progress, detail
