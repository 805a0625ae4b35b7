"""The job store as ``/metrics`` reads it: counts per job, a few aggregate queries in all
(private to the package; :class:`~pacsman.jobstore.JobStore` mixes it in).

Each method is one ``GROUP BY`` over the runs of the jobs asked for, so a scrape costs the
same few queries whatever the jobs' size.  Only states and counts come out: no UID, patient
identifier, label or path, so nothing here can carry patient data into a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["JobRowTotal", "JobSeriesTotal", "JobSessionTotal", "MetricsViews"]


class JobSeriesTotal(NamedTuple):
    """A job's series in one pair of states, with their instance counts."""

    job_id: int
    state: str  # retrieve state (ItemState)
    anonymization: str  # de-identification state; '' before it
    series: int
    expected_instances: int  # what the PACS said the series hold
    verified_instances: int  # received by the series that are COMPLETE (verified)


class JobRowTotal(NamedTuple):
    """A job's query rows in one state."""

    job_id: int
    state: str
    rows: int


class JobSessionTotal(NamedTuple):
    """A job's de-identified sessions (XNAT experiments) in one push state."""

    job_id: int
    state: str  # DONE, FAILED, or PENDING (no push recorded yet)
    sessions: int


class MetricsViews:
    """Read-only aggregates over jobs' runs for ``/metrics``; needs ``_read``."""

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # JobStore's

    def job_series_totals(self, job_ids: Sequence[int]) -> list[JobSeriesTotal]:
        """Series of these jobs' runs per job, retrieve state and de-identification state."""
        if not job_ids:
            return []
        found = self._read(
            "SELECT j.id, se.state, se.anonymization, COUNT(*), "
            "COALESCE(SUM(se.expected_instances), 0), "
            "COALESCE(SUM(CASE WHEN se.state = 'COMPLETE' THEN se.received_instances END), 0) "
            f"FROM jobs j JOIN series se ON se.run_id = j.run_id WHERE {_ids(job_ids)} "
            "GROUP BY 1, 2, 3",
            list(job_ids),
        )
        return [
            JobSeriesTotal(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in found
        ]

    def job_row_totals(self, job_ids: Sequence[int]) -> list[JobRowTotal]:
        """Query rows of these jobs' runs per job and state."""
        if not job_ids:
            return []
        found = self._read(
            "SELECT j.id, r.state, COUNT(*) FROM jobs j JOIN rows r ON r.run_id = j.run_id "
            f"WHERE {_ids(job_ids)} GROUP BY 1, 2",
            list(job_ids),
        )
        return [JobRowTotal(int(r[0]), str(r[1]), int(r[2])) for r in found]

    def job_session_totals(self, job_ids: Sequence[int]) -> list[JobSessionTotal]:
        """De-identified sessions of these jobs' runs per job and push state."""
        if not job_ids:
            return []
        found = self._read(
            "SELECT j.id, COALESCE(pu.state, 'PENDING'), "
            "COUNT(DISTINCT se.xnat_subject || '/' || se.xnat_session) "
            "FROM jobs j JOIN series se ON se.run_id = j.run_id "
            "LEFT JOIN pushes pu ON pu.run_id = se.run_id AND pu.subject = se.xnat_subject "
            "AND pu.session = se.xnat_session "
            f"WHERE {_ids(job_ids)} AND se.anonymization = 'ANONYMIZED' "
            "AND se.xnat_session != '' GROUP BY 1, 2",
            list(job_ids),
        )
        return [JobSessionTotal(int(r[0]), str(r[1]), int(r[2])) for r in found]


def _ids(job_ids: Sequence[int]) -> str:
    """``j.id IN (?,?,...)`` for ``job_ids``."""
    return f"j.id IN ({','.join('?' * len(job_ids))})"
