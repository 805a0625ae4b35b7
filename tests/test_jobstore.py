"""The SQLite job store: runs found again by hash, one claim per series, 0600 file; a store
that cannot be used stops the run with one clear message and exit 3."""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import structlog

from pacsman.cli import main
from pacsman.errors import EXIT_FATAL
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
    """The job store holds patient identifiers, so only its owner may read it: the file,
    SQLite's WAL files beside it and the folder it made, whatever the umask."""
    path = tmp_path / "state" / "jobs.sqlite"
    previous = os.umask(0o022)
    try:
        with JobStore(path) as store:
            store.open_run(_queryfile(tmp_path), "c" * 64)  # a write: the WAL files exist
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert {"jobs.sqlite": 0o600, "jobs.sqlite-wal": 0o600, "jobs.sqlite-shm": 0o600} == files
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # a folder it made


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


# -- a job store that cannot be used: one clear message, exit 3 (issue 10, item 9) ----------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # main() configures logging for the process
    yield
    structlog.configure(**saved)


def _info_run(tmp_path: Path, jobstore: Path, *extra: str) -> int:
    """``pacsman -q q.csv --info`` with ``jobstore``; the job store opens before any C-ECHO."""
    config = tmp_path / "pacsman.yaml"
    config.write_text(
        "pacs:\n  main: {host: 127.0.0.1, port: 104, called_ae_title: PACS}\n"
        f"store_root: {tmp_path}/data\njobstore: {jobstore}\n"
        f"log:\n  file: {tmp_path}/logs/pacsman.jsonl\n",
        encoding="utf-8",
    )
    queryfile = tmp_path / "q.csv"
    queryfile.write_text("PatientID\nP1\n", encoding="utf-8")
    return main(["-q", str(queryfile), "--info", "--config", str(config), *extra])


def _logged_failures(tmp_path: Path) -> list[dict[str, str]]:
    lines = (tmp_path / "logs" / "pacsman.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "command_failed"]


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Names the file and the fix, exits 3, and keeps the full traceback in log.file."""
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"PatientID,Subject\n" * 64)
    assert EXIT_FATAL == _info_run(tmp_path, path)
    err = capsys.readouterr().err
    assert f"pacsman: job store {path}: the file is not an SQLite database" in err
    assert "point it at the right file, or at a new file name" in err
    assert "unexpected error" not in err
    assert "Traceback" not in err
    (failure,) = _logged_failures(tmp_path)
    assert "JobStoreError" in failure["exception"]
    assert failure["exception"].startswith("Traceback")


def test_the_traceback_is_on_the_console_at_debug_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-level debug shows where the error came from, on the console and in the file."""
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"\x00not sqlite\x00" * 100)
    assert EXIT_FATAL == _info_run(tmp_path, path, "--log-level", "debug")
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "sqlite3.DatabaseError" in err
    assert "Traceback" in _logged_failures(tmp_path)[0]["exception"]


def test_a_folder_given_as_the_job_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder is named as such, with a file path to use instead."""
    folder = tmp_path / "state"
    folder.mkdir()
    assert EXIT_FATAL == _info_run(tmp_path, folder)
    err = capsys.readouterr().err
    assert f"job store {folder}: is a folder, not a file" in err
    assert f"e.g. {folder}/pacsman-jobs.sqlite" in err


def test_a_job_store_that_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read-only file and folder: the message says so and names what must be writable."""
    folder = tmp_path / "state"
    path = folder / "jobs.sqlite"
    with JobStore(path):
        pass
    with _read_only(folder, path):
        status = _info_run(tmp_path, path)
    err = capsys.readouterr().err
    assert EXIT_FATAL == status
    assert f"job store {path}: cannot be written" in err
    assert f"write the file and its folder {folder}" in err


def test_a_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a file system with no space left: 'the disk is full', free space, run again."""
    with _full_file_system(tmp_path / "small") as small:
        path = small / "jobs.sqlite"
        status = _info_run(tmp_path, path)
    err = capsys.readouterr().err
    assert EXIT_FATAL == status
    assert f"job store {path}: the disk is full" in err
    assert "then run the same command again: it resumes where it stopped" in err


@contextmanager
def _read_only(folder: Path, path: Path) -> Iterator[None]:
    """``path`` and ``folder`` made read-only: by mode, or (as root) immutable."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o700)
            path.chmod(0o600)
        return
    chattr = Path("/usr/bin/chattr")
    done = subprocess.run([chattr, "+i", path, folder], capture_output=True, check=False)
    if not chattr.exists() or done.returncode != 0:
        pytest.skip(f"running as root and cannot make files immutable ({done.stderr!r})")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", path, folder], check=True)


@contextmanager
def _full_file_system(mount_point: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at ``mount_point``, filled up (needs root; skipped otherwise)."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["/usr/bin/mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount_point],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr!r})")
    try:
        with (mount_point / "filler").open("wb", buffering=0) as filler, suppress(OSError):
            for _ in range(1 << 12):  # bounded: 16 MiB at most
                filler.write(b"\0" * 4096)
        yield mount_point
    finally:
        subprocess.run(["/usr/bin/umount", "-l", mount_point], check=True)
