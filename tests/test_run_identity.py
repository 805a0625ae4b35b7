"""Run identity (issue 10, item 8): a lost or edited job store never re-pulls silently.

* Run and row keys come from the normalized row values: a blank line, or re-ordered rows,
  is the same run, and every row keeps its state under its new line number.
* Series folders already on disk that the job store does not know stop the run before any
  C-MOVE (exit 2, the folders named); ``--adopt-existing`` adopts those whose count matches
  C-FIND; ``--new-run`` retrieves everything again on purpose.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pacsman.cli import main
from pacsman.jobstore import JobStore
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from tests.helpers import write_config, write_queryfile


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # main() configures logging for the process
    yield
    structlog.configure(**saved)


# -- keys from values, not lines (job store) ------------------------------------------------


def _row(line: int, patient: str, subject: str | None = None) -> QueryRow:
    return QueryRow(line=line, keys={"PatientID": patient}, subject=subject)


def _file(tmp_path: Path, sha: str, *rows: QueryRow) -> QueryFile:
    return QueryFile(path=tmp_path / "q.csv", sha256=sha, rows=rows)


def _study(uid: str, patient: str) -> StudyMatch:
    series = (SeriesMatch(uid, f"{uid}.1", series_number="1", expected_instances=2),)
    return StudyMatch(uid, patient_id=patient, study_date="20240101", series=series)


def _open(store: JobStore, queryfile: QueryFile) -> tuple[int, bool]:
    run = store.open_run(queryfile, "c" * 64, default_pacs="pacs")
    store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
    return run.id, run.resumed


def test_reordered_rows_and_a_blank_line_are_the_same_run(tmp_path: Path) -> None:
    """Other bytes, other line numbers, same values: the run resumes and each row (with its
    series) keeps its state under its new line."""
    first = _file(tmp_path, "a" * 64, _row(2, "P1", "S1"), _row(3, "P2"))
    moved = _file(tmp_path, "b" * 64, _row(3, "P2"), _row(5, "P1", "S1"))  # 2 rows swapped,
    with JobStore(tmp_path / "jobs.sqlite") as store:  # a blank line and a comment added
        created, _ = _open(store, first)
        run = store.run_by_id(created)
        store.record_query(run, RowResult(first.rows[0], "pacs", (_study("1.1", "P1"),)))
        store.fail_row(run, 3, "PACS refused the C-FIND: 0xC000")
        again, resumed = _open(store, moved)
        states = store.row_states(run)
        series = [(s.line, s.series_instance_uid) for s in store.series_for_retrieve(run)]
    assert (created, True) == (again, resumed)
    assert {5: ItemState.QUERIED, 3: ItemState.FAILED} == states
    assert [(5, "1.1.1")] == series


def test_a_changed_value_or_another_pacs_is_another_run(tmp_path: Path) -> None:
    """Values define the run: an edited cell, or rows sent to another node, start anew."""
    base = _file(tmp_path, "a" * 64, _row(2, "P1"))
    edited = _file(tmp_path, "b" * 64, _row(2, "P9"))
    with JobStore(tmp_path / "jobs.sqlite") as store:
        first = store.open_run(base, "c" * 64, default_pacs="pacs")
        other = store.open_run(edited, "c" * 64, default_pacs="pacs")
        elsewhere = store.open_run(base, "c" * 64, default_pacs="other")
    assert len({first.id, other.id, elsewhere.id}) == 3


def test_a_run_recorded_before_keys_is_found_by_its_bytes(tmp_path: Path) -> None:
    """A store from an earlier release (raw file hash, rows without keys) resumes, and from
    then on the run is found by its values."""
    queryfile = _file(tmp_path, "a" * 64, _row(2, "P1"), _row(3, "P2"))
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        run_id, _ = _open(store, queryfile)
        store.fail_row(store.run_by_id(run_id), 3, "refused")
    with sqlite3.connect(path) as db:  # as the release before keys left it
        db.execute("UPDATE runs SET queryfile_sha256 = ?", ("a" * 64,))
        db.execute("UPDATE rows SET row_key = ''")
    with JobStore(path) as store:
        legacy = _open(store, queryfile)
        blank_line_added = _open(store, _file(tmp_path, "d" * 64, _row(2, "P1"), _row(4, "P2")))
        states = store.row_states(store.run_by_id(run_id))
    assert [(run_id, True), (run_id, True)] == [legacy, blank_line_added]
    assert {2: ItemState.PENDING, 4: ItemState.FAILED} == states


def test_new_run_retires_the_old_one(tmp_path: Path) -> None:
    """--new-run keeps the old run (retired, never resumed again) and starts another."""
    queryfile = _file(tmp_path, "a" * 64, _row(2, "P1"))
    with JobStore(tmp_path / "jobs.sqlite") as store:
        old = store.open_run(queryfile, "c" * 64)
        new = store.open_run(queryfile, "c" * 64, new_run=True)
        again = store.open_run(queryfile, "c" * 64)
    assert (new.resumed, again.resumed) == (False, True)
    assert old.id != new.id == again.id


# -- series already on disk (CLI, against Orthanc) ------------------------------------------

STUDY = StudySpec(
    patient_id="IDENT01",
    patient_name="Ident^Ida",
    study_date="20240301",
    accession_number="ACCID01",
    study_description="identity",
    series=(
        SeriesSpec(series_number=1, series_description="A", n_instances=3, rows=8, columns=8),
        SeriesSpec(series_number=2, series_description="B", n_instances=2, rows=8, columns=8),
    ),
)


class _Cli:
    """``pacsman -q q.csv --save --info`` against one Orthanc, with its events and output."""

    def __init__(
        self, tmp_path: Path, orthanc: OrthancServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        orthanc.upload_datasets(iter_datasets(STUDY))
        port = free_port()
        orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
        self.config = write_config(
            tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title, local_port=port
        )
        self.queryfile = write_queryfile(tmp_path, "PatientID,Subject,Session\nIDENT01,S1,E1\n")
        self.jobstore = tmp_path / "jobs.sqlite"
        self.data = tmp_path / "data"
        self._capfd = capfd
        self.out = self.err = ""

    def __call__(self, *extra: str) -> int:
        self._capfd.readouterr()
        argv = ["-q", str(self.queryfile), "--save", "--info", "--config", str(self.config)]
        status = main([*argv, *extra])
        self.out, self.err = self._capfd.readouterr()
        return status

    def events(self) -> list[str]:
        return [json.loads(x)["event"] for x in self.err.splitlines() if x.startswith("{")]

    def lose_jobstore(self) -> None:
        for path in self.jobstore.parent.glob(self.jobstore.name + "*"):
            path.unlink()

    def info(self) -> list[dict[str, str]]:
        with (self.data / "q_info.csv").open(encoding="utf-8", newline="") as stream:
            return list(csv.DictReader(stream))


@pytest.fixture
def cli(tmp_path: Path, orthanc: OrthancServer, capfd: pytest.CaptureFixture[str]) -> _Cli:
    """The pipeline's command line on a 2-series study (3 + 2 instances)."""
    return _Cli(tmp_path, orthanc, capfd)


def test_a_lost_job_store_refuses_before_any_move_then_adopts(cli: _Cli) -> None:
    """With the job store gone, the same command stops with exit 2 before the Storage SCP
    even starts, naming the folders and the fix; --adopt-existing then records both series
    COMPLETE without retrieving them."""
    assert 0 == cli()
    folders = sorted({p.parent for p in cli.data.rglob("*.dcm")})
    cli.lose_jobstore()
    assert 2 == cli()
    assert "2 series folder(s) already hold DICOM files" in cli.err
    assert all(str(folder) in cli.err for folder in folders)
    assert "--adopt-existing" in cli.err
    assert "--new-run" in cli.err
    assert "storage_scp_listening" not in cli.events()
    assert 0 == cli("--adopt-existing")
    assert "2 series adopted from disk" in cli.out
    assert "series_retrieved" not in cli.events()
    assert [("COMPLETE", "3"), ("COMPLETE", "2")] == [
        (r["state"], r["received_instances"]) for r in cli.info()
    ]
    assert all(r["detail"].startswith("adopted from disk") for r in cli.info())


def test_adopt_existing_retrieves_a_folder_that_falls_short(cli: _Cli) -> None:
    """A folder with fewer instances than C-FIND reports is retrieved; the other adopted."""
    assert 0 == cli()
    series_a = next(p.parent for p in cli.data.rglob("*.dcm") if p.parent.name == "1-A")
    next(series_a.glob("*.dcm")).unlink()
    cli.lose_jobstore()
    assert 0 == cli("--adopt-existing")
    assert 1 == cli.events().count("series_retrieved")
    assert "1 series adopted from disk" in cli.out
    assert [3, 2] == [int(r["received_instances"]) for r in cli.info()]


def test_new_run_retrieves_again_on_purpose(cli: _Cli) -> None:
    """--new-run starts over: every series is retrieved again, none refused or adopted."""
    assert 0 == cli()
    cli.lose_jobstore()
    assert 0 == cli("--new-run")
    assert 2 == cli.events().count("series_retrieved")
    assert "(new)" in cli.out


def test_a_blank_line_in_the_query_file_resumes_the_run(cli: _Cli) -> None:
    """An edited layout (blank line, columns re-ordered) finds the same run: nothing to do."""
    assert 0 == cli()
    cli.queryfile.write_text("Session,PatientID,Subject\n\nE1,IDENT01,S1\n", encoding="utf-8")
    assert 0 == cli()
    assert "(resumed)" in cli.out
    assert "nothing to do" in cli.out
    assert "series_retrieved" not in cli.events()


def test_adopt_existing_and_new_run_need_save(cli: _Cli) -> None:
    """Both options are about retrieving: without --save, exit 2 and say so."""
    argv = ["-q", str(cli.queryfile), "--info", "--config", str(cli.config)]
    assert 2 == main([*argv, "--adopt-existing"])
    assert 2 == main([*argv, "--new-run"])
