"""The SQLite job store: runs found again by hash, one claim per series, 0600 file."""

from __future__ import annotations

import stat
from pathlib import Path

from pacsman.jobstore import JobStore
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch


def _queryfile(tmp_path: Path, sha: str = "a" * 64) -> QueryFile:
    rows = (QueryRow(line=2, keys={"PatientID": "P1"}), QueryRow(line=3, keys={"PatientID": "P1"}))
    return QueryFile(path=tmp_path / "q.csv", sha256=sha, rows=rows)


def _study(*series_uids: str) -> StudyMatch:
    series = tuple(
        SeriesMatch("1.2.3", uid, series_number=str(n), expected_instances=n)
        for n, uid in enumerate(series_uids, start=1)
    )
    return StudyMatch("1.2.3", patient_id="P1", study_date="20240101", series=series)


def test_jobstore_file_is_private(tmp_path: Path) -> None:
    """The job store holds patient identifiers, so only its owner may read it."""
    path = tmp_path / "state" / "jobs.sqlite"
    with JobStore(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_same_queryfile_and_config_resume_the_same_run(tmp_path: Path) -> None:
    """A run is (query file hash, config hash): the same pair is found again."""
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        first = store.open_run(_queryfile(tmp_path), "c" * 64)
    with JobStore(path) as store:
        again = store.open_run(_queryfile(tmp_path), "c" * 64)
        other = store.open_run(_queryfile(tmp_path), "d" * 64)
    assert (first.resumed, again.resumed, other.resumed) == (False, True, False)
    assert first.id == again.id != other.id


def test_series_is_claimed_by_the_first_row_only(tmp_path: Path) -> None:
    """A series two rows select belongs to the first; the second row reports the duplicate."""
    queryfile = _queryfile(tmp_path)
    with JobStore(tmp_path / "jobs.sqlite") as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
        first = store.record_query(run, RowResult(queryfile.rows[0], "pacs", (_study("1.1"),)))
        second = store.record_query(
            run, RowResult(queryfile.rows[1], "pacs", (_study("1.1", "1.2"),))
        )
        states = store.row_states(run)
        records = store.info_records(run)
    assert [s.series_instance_uid for s in first.studies[0].series] == ["1.1"]
    assert [s.series_instance_uid for s in second.studies[0].series] == ["1.2"]
    assert second.duplicate_of == ((2, "1.2.3"),)
    assert states == {2: ItemState.QUERIED, 3: ItemState.QUERIED}
    assert [(r.line, r.series_instance_uid) for r in records] == [(2, "1.1"), (3, "1.2")]


def test_row_with_only_claimed_series_is_duplicate(tmp_path: Path) -> None:
    """A row whose every series is already claimed ends DUPLICATE, naming the first line."""
    queryfile = _queryfile(tmp_path)
    with JobStore(tmp_path / "jobs.sqlite") as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
        store.record_query(run, RowResult(queryfile.rows[0], "pacs", (_study("1.1"),)))
        store.record_query(run, RowResult(queryfile.rows[1], "pacs", (_study("1.1"),)))
        records = store.info_records(run)
    assert records[-1].row_state is ItemState.DUPLICATE
    assert records[-1].row_detail == "every matching series is already selected by line 2"


def test_failed_row_keeps_its_reason(tmp_path: Path) -> None:
    """A failed row is recorded with its reason and shows in the info records."""
    queryfile = _queryfile(tmp_path)
    with JobStore(tmp_path / "jobs.sqlite") as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
        store.fail_row(run, 3, "PACS refused the C-FIND: 0xC000")
        records = store.info_records(run)
    assert (records[1].row_state, records[1].row_detail) == (
        ItemState.FAILED,
        "PACS refused the C-FIND: 0xC000",
    )
