"""A study a head node takes back after another node took it over.

Node A retrieves part of a study into its own folder and gives it back (its job-store
connection was lost, the job paused); node B takes it over, which clears the series'
recorded folder so B retrieves it again on its own disk; B gives it back too; A claims it
again.  The files A's first attempt left in A's folder are the run's own: they are kept and
the series retrieved (or recorded COMPLETE when all are there), never refused as files the
job store does not know (the failure CI met in test_cluster's sessions-ended test).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.jobs import JobOptions
from pacsman.layout import raw_series_directories
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.pipeline._disk import settle_series_on_disk

PACS = "orthanc"
UID = "1.2.826.0.1.8891"
SERIES = f"{UID}.1"
EXPECTED = 3


def _job(store: JobStore, tmp_path: Path) -> tuple[Run, int]:
    row = QueryRow(line=2, keys={"StudyInstanceUID": UID})
    queryfile = QueryFile(path=tmp_path / "q.csv", sha256="d" * 64, rows=(row,))
    run = store.open_run(queryfile, "e" * 64)
    store.add_rows(run, [(row, PACS)])
    series = (SeriesMatch(UID, SERIES, series_number="1", expected_instances=EXPECTED),)
    study = StudyMatch(UID, patient_id="PID", study_date="20240101", series=series)
    store.record_query(run, RowResult(row, PACS, (study,)))
    options = JobOptions(save=True)
    job = store.add_job(name="j", queryfile_name="q.csv", content=b"x", options=options)
    assert store.claim_job("alpha") is not None
    store.attach_run(job.id, run.id)
    store.open_studies(run, job.id)
    return run, job.id


def _claim(store: JobStore, run: Run, job_id: int, node: str, out: Path) -> tuple[Run, Path]:
    """``node`` claims the study and records its folder as the pipeline does; returns the
    run seen through the lease and the series' folder on ``node``'s disk (``out``)."""
    lease = store.claim_studies(run, job_id, node, limit=1, lease_seconds=300.0)
    assert lease is not None
    scoped = replace(run, lease=lease)
    places = store.series_places(scoped)
    folder = raw_series_directories(out, places)[SERIES]
    placed = [(p, folder) for p in places if p.raw_directory is None]
    settle_series_on_disk(store, scoped, placed, adopt=False, new_run=False)
    store.record_directories(scoped, raw=placed)
    return scoped, folder


def _instances(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"1.2.3.{n}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)


@pytest.mark.parametrize("left", [1, EXPECTED])
def test_files_a_node_left_are_its_own_when_it_takes_the_study_back(
    store_location: Path | str, tmp_path: Path, left: int
) -> None:
    with JobStore(store_location) as store:
        run, job_id = _job(store, tmp_path)
        first, folder_a = _claim(store, run, job_id, "alpha", tmp_path / "alpha")
        _instances(folder_a, left)  # alpha's C-MOVE got this far
        assert first.lease is not None
        store.release_studies(first.lease, "job-store connection lost")
        second, folder_b = _claim(store, run, job_id, "beta", tmp_path / "beta")
        assert second.lease is not None
        store.release_studies(second.lease, "job-store connection lost")
        again, folder = _claim(store, run, job_id, "alpha", tmp_path / "alpha")
        (series,) = store.series_places(again)
    assert folder_a == folder != folder_b
    assert str(folder) == str(series.raw_directory)
    expected = ItemState.COMPLETE if left == EXPECTED else ItemState.QUERIED
    assert expected == series.state
