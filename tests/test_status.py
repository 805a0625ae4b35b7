"""`pacsman status` and `pacsman runs`: read-only views of the job store, while a run works,
after it was killed, and after it finished; the heartbeat that tells them apart."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pacsman.cli import main
from pacsman.errors import EXIT_OK, EXIT_RUNNING, EXIT_SOME_FAILED, InputError
from pacsman.jobstore import SCHEMA_VERSION, JobStore, RunOutcome, RunRecord
from pacsman.models import QueryFile, QueryRow
from pacsman.pipeline._runview import STALE_AFTER_SECONDS, RunActivity, activity
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.synthetic import SeriesSpec, StudySpec
from tests.helpers import kill_process_group, write_config, write_queryfile

HOST = socket.gethostname()
NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
QUERY = "PatientID,Subject,Session\nSLOW0,S0,E0\nSLOW1,S1,E1\nSLOW2,S2,E2\nNOPE,S3,E3\n"


def _specs() -> list[StudySpec]:
    """Three studies of two series of 4 instances: retrieved one series at a time."""
    return [
        StudySpec(
            patient_id=f"SLOW{i}",
            patient_name="Slow^Test",
            study_date="20240401",
            accession_number=f"S{i}",
            study_description="slow",
            series=(
                SeriesSpec(series_number=1, series_description="A", n_instances=4),
                SeriesSpec(series_number=2, series_description="B", n_instances=4),
            ),
        )
        for i in range(3)
    ]


@dataclass
class Setup:
    """A slowed fake PACS, a config and a query file for it."""

    pacs: FakePacs
    config: Path
    queryfile: Path
    jobstore: Path

    def command(self) -> list[str]:
        queryfile, config = str(self.queryfile), str(self.config)
        return [sys.executable, "-m", "pacsman", "-q", queryfile, "--save", "--config", config]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """0.15 s between C-STOREs: 24 instances take about 3 s to retrieve."""
    pacs = FakePacs.from_specs(_specs(), faults=Faults(pending_delay=0.15)).start()
    try:
        port = free_port()
        pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
        config = write_config(
            tmp_path, port=pacs.port, called_ae_title=pacs.ae_title, node="fake", local_port=port
        )
        queryfile = write_queryfile(tmp_path, QUERY)
        yield Setup(pacs, config, queryfile, tmp_path / "jobs.sqlite")
    finally:
        pacs.stop()


def _status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["status", *argv])
    return code, capsys.readouterr().out


def _status_json(capsys: pytest.CaptureFixture[str], jobstore: Path) -> tuple[int, Any]:
    code, out = _status(capsys, "--jobstore", str(jobstore), "--json")
    return code, json.loads(out)


def _start(setup: Setup) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        setup.command(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_running(
    capsys: pytest.CaptureFixture[str], setup: Setup, process: subprocess.Popen[bytes]
) -> Any:
    """Until status says running with at least one series retrieved; returns that status."""
    seen: list[Any] = []

    def retrieving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before status saw it")
        if not setup.jobstore.exists():
            return False
        code, out = _status(capsys, "--jobstore", str(setup.jobstore), "--json")
        if code != EXIT_RUNNING:  # 2 until the run is recorded
            return False
        seen[:] = [json.loads(out)]
        return bool(seen[0]["counts"]["series"].get("COMPLETE", 0) >= 1)

    wait_for(retrieving, timeout=60, what="status to show a running run with a series done")
    return seen[0]


def test_status_while_running_then_after_kill_9_then_resumed(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """While the run works: exit 4, its process, counts per step, a rate, an ETA and the row
    that failed so far.  After kill -9 the process is gone, so status says interrupted at
    once (exit 1) with the command that resumes the run; that command finishes it, and
    status then says finished, with the row that needs attention (exit 1)."""
    process = _start(setup)
    try:
        running = _wait_running(capsys, setup, process)
        code, text = _status(capsys, "--config", str(setup.config))
    finally:
        kill_process_group(process)
    assert (running["state"], running["pid"], running["host"]) == ("running", process.pid, HOST)
    assert running["counts"]["rows"] == {"total": 4, "QUERIED": 3, "NO_MATCH": 1}
    assert running["counts"]["series"]["expected_instances"] == 24
    assert running["rates_per_second"]["instances"] > 0
    assert running["eta_seconds"]["instances"] > 0
    assert [a["line"] for a in running["attention"]] == [5]
    assert running["attention"][0]["reason"].startswith("NO_MATCH: ")
    assert code == EXIT_RUNNING, text
    assert "instances/s, ETA " in text
    assert "still running (exit 4)" in text

    code, text = _status(capsys, "--jobstore", str(setup.jobstore))
    resume = text.splitlines()[-1].strip()
    assert code == EXIT_SOME_FAILED
    assert f"interrupted: process {process.pid} on {HOST} is gone" in text
    assert "resume with:" in text
    queryfile, out, config = setup.queryfile, tmp_path / "data", setup.config
    assert resume == (
        f"pacsman --queryfile {queryfile} --save --out_directory {out} --config {config}"
    )

    setup.pacs.faults = Faults()
    words = shlex.split(resume)
    assert main(words[1:]) == EXIT_SOME_FAILED  # the NO_MATCH row
    capsys.readouterr()
    code, done = _status_json(capsys, setup.jobstore)
    assert (code, done["state"], done["eta_seconds"]) == (EXIT_SOME_FAILED, "finished", {})
    assert done["counts"]["series"]["COMPLETE"] == 6
    assert [a["line"] for a in done["attention"]] == [5]


def test_status_and_runs_never_write(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """After a run: status, runs and status QUERYFILE leave the job store and the info CSV
    as they were, byte for byte."""
    setup.pacs.faults = Faults()
    assert main([*setup.command()[3:]]) == EXIT_SOME_FAILED
    capsys.readouterr()
    info = tmp_path / "data" / "q_info.csv"
    before = {p: _digest(p) for p in (setup.jobstore, info)}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    code, text = _status(capsys, str(setup.queryfile), "--config", str(setup.config))
    assert code == EXIT_SOME_FAILED
    assert text.startswith(f"run 1: {setup.queryfile}")
    assert main(["runs", "--jobstore", str(setup.jobstore)]) == EXIT_OK
    runs = capsys.readouterr().out.splitlines()
    assert runs[1].split()[:2] == ["1", "finished"]
    assert {p: _digest(p) for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in before} == mtimes


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the heartbeat, without a network --------------------------------------------------------


def _record(**fields: Any) -> RunRecord:
    base = RunRecord(
        id=1,
        queryfile="q.csv",
        created_at=NOW.isoformat(),
        started_at=(NOW - timedelta(minutes=5)).isoformat(),
        heartbeat_at=(NOW - timedelta(seconds=3)).isoformat(),
        pid=os.getpid(),
        host=HOST,
    )
    return replace(base, **fields)


def test_a_fresh_heartbeat_of_a_live_process_is_running() -> None:
    """This process, beating 3 s ago: running."""
    assert activity(_record(), now=NOW, host=HOST).state is RunActivity.RUNNING


def test_a_stale_heartbeat_is_interrupted_whatever_the_host() -> None:
    """No beat for longer than the staleness limit: interrupted, even on another host."""
    old = (NOW - timedelta(seconds=STALE_AFTER_SECONDS + 1)).isoformat()
    found = activity(_record(heartbeat_at=old, host="elsewhere"), now=NOW, host=HOST)
    assert found.state is RunActivity.INTERRUPTED
    assert "no heartbeat for 31 s from process" in found.reason


def test_a_dead_process_on_this_host_is_interrupted_at_once() -> None:
    """A fresh beat, but its process is gone from this host: interrupted without waiting."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    found = activity(_record(pid=dead.pid), now=NOW, host=HOST)
    assert found.state is RunActivity.INTERRUPTED
    assert f"process {dead.pid} on {HOST} is gone" in found.reason


def test_a_fresh_heartbeat_from_another_host_is_running() -> None:
    """The pid means nothing on another host: only the heartbeat counts."""
    found = activity(_record(pid=1 << 22, host="elsewhere"), now=NOW, host=HOST)
    assert found.state is RunActivity.RUNNING


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (RunOutcome.FINISHED, RunActivity.FINISHED),
        (RunOutcome.INTERRUPTED, RunActivity.INTERRUPTED),
        (RunOutcome.STOPPED, RunActivity.STOPPED),
    ],
)
def test_a_recorded_outcome_wins(outcome: RunOutcome, expected: RunActivity) -> None:
    """How the run stopped, once recorded, is what status says."""
    assert activity(_record(outcome=outcome), now=NOW, host=HOST).state is expected


@pytest.mark.parametrize(
    ("error", "outcome", "detail"),
    [
        (None, RunOutcome.FINISHED, ""),
        (KeyboardInterrupt(), RunOutcome.INTERRUPTED, "interrupted (Ctrl-C)"),
        (InputError("the file changed"), RunOutcome.STOPPED, "the file changed"),
        (
            ValueError("P123 leaked?"),
            RunOutcome.STOPPED,
            "unexpected error ValueError; see the log",
        ),
    ],
    ids=["finished", "ctrl-c", "error", "bug"],
)
def test_the_heartbeat_beats_and_leaving_the_store_records_the_outcome(
    tmp_path: Path, error: BaseException | None, outcome: RunOutcome, detail: str
) -> None:
    """With a short interval heartbeat_at moves on; leaving the store records how the run
    stopped (a bug's message is not recorded: it could hold anything)."""
    path = tmp_path / "jobs.sqlite"
    row = QueryRow(line=2, keys={"PatientID": "P"})
    queryfile = QueryFile(tmp_path / "q.csv", "a" * 64, (row,))

    def work() -> None:
        with JobStore(path) as store:
            run = store.open_run(queryfile, "c" * 64)
            store.start_heartbeat(run, options_json="{}", interval=0.05)
            first = store.run_record(run.id).heartbeat_at
            beat = lambda: store.run_record(run.id).heartbeat_at > first  # noqa: E731
            wait_for(beat, timeout=10, what="a heartbeat")
            if error is not None:
                raise error

    if error is None:
        work()
    else:
        with pytest.raises(type(error)):
            work()
    with JobStore(path, read_only=True) as store:
        record = store.run_record(1)
    assert (record.outcome, record.outcome_detail) == (outcome, detail)
    assert (record.pid, record.host) == (os.getpid(), HOST)


def test_an_older_store_is_read_through_a_copy_and_left_as_it_was(tmp_path: Path) -> None:
    """A store at schema version 6 (before heartbeats): status reads it, the file keeps its
    version and its bytes, and its run's activity is unknown."""
    path = tmp_path / "jobs.sqlite"
    with JobStore(path):
        pass
    with sqlite3.connect(path) as db:
        for column in ("started_at", "heartbeat_at", "pid", "host", "options_json"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        for column in ("stopped_at", "outcome", "outcome_detail"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        db.execute("DROP INDEX transitions_by_run")
        db.execute("ALTER TABLE rows DROP COLUMN pacs_cell")
        for table in ("jobs", "job_transitions", "service_nodes", "study_claims", "pacs_pace"):
            db.execute(f"DROP TABLE {table}")  # versions 8 and 9
        db.execute("DROP TABLE dqr_studies")  # version 10
        db.execute("DROP TABLE series_folders")  # version 11
        for column in ("nifti", "nifti_detail", "nifti_directory", "nifti_tool", "nifti_files"):
            db.execute(f"ALTER TABLE series DROP COLUMN {column}")
        for column in ("nifti_push", "nifti_push_detail"):
            db.execute(f"ALTER TABLE series DROP COLUMN {column}")
        db.execute(
            "INSERT INTO runs(id, queryfile, queryfile_sha256, config_sha256, created_at) "
            "VALUES (1, 'q.csv', 'k', 'c', '2026-01-01T00:00:00+00:00')"
        )
        db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    before = _digest(path)
    with JobStore(path, read_only=True) as store:
        record = store.run_record(1)
    assert activity(record, now=NOW, host=HOST).state is RunActivity.UNKNOWN
    assert _digest(path) == before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == "6"
    assert SCHEMA_VERSION == 11


def test_status_names_a_missing_job_store_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No such file: exit 3 with the path and what to give instead; nothing is created."""
    missing = tmp_path / "nope.sqlite"
    assert main(["status", "--jobstore", str(missing)]) == 3
    err = capsys.readouterr().err
    assert f"job store {missing}: no such file" in err
    assert "--jobstore PATH" in err
    assert not missing.exists()
