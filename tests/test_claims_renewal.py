"""A head node renews only the study leases its job threads work on (LiveLeases).

A claim no thread works on any more (the thread ended before it could settle or give the
studies back, or the claim's commit reached the database while the connection was lost) must
expire and be taken over, as a dead node's would; renewing it by node name kept such studies
held for ever, and the job's coordinator waited for them for ever.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

from pathlib import Path

from pacsman.jobstore import JobStore
from pacsman.jobstore.claims import LiveLeases, StudyState
from pacsman.jobstore.jobs import JobOptions
from pacsman.models import QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch

PACS = "orthanc"
UIDS = ("1.2.826.0.1.8881", "1.2.826.0.1.8882")


def _study(uid: str) -> StudyMatch:
    series = (SeriesMatch(uid, f"{uid}.1", series_number="1", expected_instances=2),)
    return StudyMatch(uid, patient_id="PID", study_date="20240101", series=series)


def test_only_the_leases_worked_on_are_renewed(store_location: Path | str, tmp_path: Path) -> None:
    """Two claims of one node, 5 s each; a thread works on the first only.  Renewing for
    300 s extends the first; the second keeps its 5 s and expires, to be taken over."""
    leases = LiveLeases()
    with JobStore(store_location) as store:
        rows = tuple(QueryRow(line=n + 2, keys={"StudyInstanceUID": u}) for n, u in enumerate(UIDS))
        queryfile = QueryFile(path=tmp_path / "q.csv", sha256="b" * 64, rows=rows)
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, PACS) for row in rows])
        for row, uid in zip(rows, UIDS, strict=True):
            store.record_query(run, RowResult(row, PACS, (_study(uid),)))
        job = store.add_job(
            name="j", queryfile_name="q.csv", content=b"x", options=JobOptions(save=True)
        )
        assert store.claim_job("alpha") is not None
        store.attach_run(job.id, run.id)
        store.open_studies(run, job.id)
        worked = store.claim_studies(run, job.id, "alpha", limit=1, lease_seconds=5.0)
        orphan = store.claim_studies(run, job.id, "alpha", limit=1, lease_seconds=5.0)
        assert worked is not None
        assert orphan is not None
        with leases.working_on(worked):
            renewed = store.renew_leases("alpha", 300.0, generations=leases.generations())
        assert frozenset() == leases.generations()  # the block ended: no longer worked on
        places = {p.generation: p for p in store.study_places(job.id)}
    assert {worked.generation} == renewed
    assert StudyState.CLAIMED == places[worked.generation].state
    assert places[worked.generation].expires_in > 200
    assert places[orphan.generation].expires_in <= 5
