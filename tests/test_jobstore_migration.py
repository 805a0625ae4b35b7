"""A job store written by an earlier release is migrated when opened, and its run resumes.

The schema SQL of releases 1 and 4 is copied here as it shipped; the end-to-end tests run the
previous release itself (commit :data:`PREVIOUS_COMMIT`, unpacked from this repository's own
history with ``git archive``, or a checkout named by ``PACSMAN_PREVIOUS_RELEASE``) for the first
part of a run, then this release for the rest.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.errors import InputError
from pacsman.jobstore import MIGRATIONS, SCHEMA_VERSION, JobStore
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

#: The last commit before the package-per-stage layout (schema version 4, no recorded paths).
PREVIOUS_COMMIT = "33bfad4"
REPOSITORY = Path(__file__).resolve().parents[1]
QUERY = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,,\n"

#: Release 1's series table (the other tables are unchanged since): schema_version 1.
_SERIES_V1 = """CREATE TABLE series (
    run_id INTEGER NOT NULL REFERENCES runs(id), pacs TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL, line INTEGER NOT NULL,
    series_number TEXT NOT NULL, modality TEXT NOT NULL, series_description TEXT NOT NULL,
    expected_instances INTEGER, received_instances INTEGER, state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (run_id, pacs, series_instance_uid))"""


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def _release_1_store(path: Path) -> None:
    """An empty job store as release 1 left it."""
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0].statements:
            if "CREATE TABLE IF NOT EXISTS series" not in statement:
                db.execute(statement)
        db.execute(_SERIES_V1)
        db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")


def test_migrations_are_ordered_and_end_at_the_schema_version() -> None:
    """Versions only grow, and the last one is the version stores are brought to."""
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[-1] == SCHEMA_VERSION


def test_a_release_1_store_is_brought_to_the_current_schema(tmp_path: Path) -> None:
    """Every column added since release 1 is there after opening, and the version says so."""
    path = tmp_path / "jobs.sqlite"
    _release_1_store(path)
    with JobStore(path):
        pass
    assert {"passes", "anonymization", "raw_directory", "anonymized_directory"} <= _columns(
        path, "series"
    )
    assert {"state", "files_on_target"} <= _columns(path, "pushes")
    assert _version(path) == SCHEMA_VERSION


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    """The migrations run in one transaction: one failing statement leaves the store as it was."""
    path = tmp_path / "jobs.sqlite"
    _release_1_store(path)
    with sqlite3.connect(path) as db:  # makes migration 5's second statement fail
        db.execute("ALTER TABLE series ADD COLUMN anonymized_directory TEXT")
    with pytest.raises(sqlite3.OperationalError, match="duplicate column"):
        JobStore(path)
    assert "passes" not in _columns(path, "series")
    assert _version(path) == 1


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    """A schema this release does not know is not touched; the message says what to do."""
    path = tmp_path / "jobs.sqlite"
    with JobStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(InputError, match="schema version 99 was written by a newer pacsman"):
        JobStore(path)


def test_push_state_is_stored_as_before(tmp_path: Path) -> None:
    """Push and de-identification states are enums in code and the same strings on disk."""
    path = tmp_path / "jobs.sqlite"
    queryfile = QueryFile(
        tmp_path / "q.csv", "a" * 64, (QueryRow(line=2, keys={"PatientID": "P"}),)
    )
    series = SeriesMatch("1.2", "1.2.1", series_number="1", expected_instances=1)
    with JobStore(path) as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(queryfile.rows[0], "pacs")])
        store.record_query(
            run, RowResult(queryfile.rows[0], "pacs", (StudyMatch("1.2", series=(series,)),))
        )
        store.record_push(run, "xnat", ("S1", "E1"), ItemState.DONE, files_on_target=1)
        states = store.push_states(run, "xnat")
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT state FROM pushes").fetchone()[0]
    assert (stored, states[("S1", "E1")].state) == ("DONE", ItemState.DONE)


# -- the previous release, then this one -----------------------------------------------------


def _config(tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator) -> Path:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    extra = f"xnat:\n  url: {xnat.url}\n  project: PROJ\n"
    return write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        extra=extra,
    )


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's source tree, or skip when it cannot be had."""
    if given := os.environ.get("PACSMAN_PREVIOUS_RELEASE"):
        return Path(given)
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", PREVIOUS_COMMIT, "pacsman"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_COMMIT} is not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def _previous_release(previous: Path, argv: list[str], cwd: Path) -> None:
    """Run the previous release's ``pacsman`` (its own code only) with ``argv`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(previous)}
    done = subprocess.run(
        [sys.executable, "-m", "pacsman", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: Path) -> None:
    """Key, mapping table and credentials shared by both releases."""
    if not (previous / "pacsman" / "jobstore.py").is_file():
        pytest.skip(f"no previous release at {previous}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")


def _resume_and_check(tmp_path: Path, xnat: XnatEmulator, argv: list[str]) -> None:
    assert main(argv) == 0
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {s.label: s.file_count for s in xnat.sessions("PROJ")} == {
        "SESS01": 23,
        "PROJ_E00001": 13,
    }
    assert {(r["state"], r["anonymization"], r["push"]) for r in rows} == {
        ("COMPLETE", "ANONYMIZED", "DONE")
    }


def test_retrieved_and_de_identified_by_the_previous_release_then_pushed(
    previous: Path, environment: None, tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    """The previous release retrieves and de-identifies; this one migrates its job store,
    finds the de-identified files where that release put them, and pushes every session."""
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        config = str(_config(tmp_path, demo_orthanc, xnat))
        queryfile = str(write_queryfile(tmp_path, QUERY))
        _previous_release(
            previous, ["-q", queryfile, "--save", "--anonymize", "--config", config], tmp_path
        )
        assert _version(tmp_path / "jobs.sqlite") == 4
        _resume_and_check(
            tmp_path, xnat, ["-q", queryfile, "--save", "--push", "--info", "--config", config]
        )
    assert _version(tmp_path / "jobs.sqlite") == SCHEMA_VERSION


def test_retrieved_by_the_previous_release_then_de_identified_and_pushed(
    previous: Path, environment: None, tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    """The previous release only retrieves; this one, without --save, finds the raw series
    where that release put them, de-identifies and pushes them."""
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        config = str(_config(tmp_path, demo_orthanc, xnat))
        queryfile = str(write_queryfile(tmp_path, QUERY))
        _previous_release(previous, ["-q", queryfile, "--save", "--config", config], tmp_path)
        _resume_and_check(tmp_path, xnat, ["-q", queryfile, "--push", "--info", "--config", config])
