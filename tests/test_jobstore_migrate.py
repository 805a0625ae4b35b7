"""``pacsman jobstore migrate``: a finished run's SQLite store copied into PostgreSQL.

The store comes from a real run (the pipeline against the fake PACS: query, retrieve and
verify, de-identify, push to a folder, one row without a match).  After the copy,
``pacsman status`` (text and JSON), ``runs`` and ``report`` print the same from the URL as
from the file; the file is unchanged; new runs and jobs number on past the copied ids; a
second copy into the same database is refused, and a wrong URL gets the clear error.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.errors import EXIT_BAD_INPUT, EXIT_FATAL, EXIT_OK
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobOptions
from pacsman.jobstore.migrate import TABLES
from pacsman.testing.fakepacs import FakePacs
from pacsman.testing.net import free_port
from pacsman.testing.postgres import PostgresServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec
from tests.helpers import write_config, write_queryfile

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed; pip install -e .")

pytestmark = pytest.mark.postgres

_AGE = re.compile(r'("heartbeat_age":|heartbeat) [0-9.]+')
QUERY = "PatientID,Subject,Session\nMIG0,S0,E0\nMIG1,S1,E1\nNOPE,S9,E9\n"


def _specs() -> list[StudySpec]:
    return [
        StudySpec(
            patient_id=f"MIG{i}",
            patient_name="Migrate^Test",
            study_date="20240401",
            accession_number=f"M{i}",
            study_description="migrate",
            series=(
                SeriesSpec(series_number=1, series_description="A", n_instances=2),
                SeriesSpec(series_number=2, series_description="B", n_instances=1),
            ),
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the config, the query file and the SQLite store of a finished run."""
    folder = tmp_path_factory.mktemp("finished")
    pacs = FakePacs.from_specs(_specs()).start()
    patch = pytest.MonkeyPatch()
    try:
        port = free_port()
        pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
        config = write_config(
            folder,
            port=pacs.port,
            called_ae_title=pacs.ae_title,
            node="fake",
            local_port=port,
            extra=f"push:\n  folder: {folder}/pushed\n",
        )
        queryfile = write_queryfile(folder, QUERY)
        patch.setenv("XDG_CONFIG_HOME", str(folder / "xdg"))  # the key and mapping table
        code = main(["-q", str(queryfile), "--push", "folder", "--config", str(config)])
        assert code in (EXIT_OK, 1)  # 1: the row without a match needs attention
        with JobStore(folder / "jobs.sqlite") as store:
            store.add_job(
                name="cohort", queryfile_name="q.csv", content=b"a\x00b", options=JobOptions()
            )
            store.register_node("node-a", http_url="https://a:8443")
            store.beat_node("node-a", "1 job")
        yield folder
    finally:
        pacs.stop()
        patch.undo()


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def _timeless(shown: tuple[int, str]) -> tuple[int, str]:
    """What a view printed, without the seconds since a node's heartbeat (they move on)."""
    return shown[0], _AGE.sub(r"\1 <age>", shown[1])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_status_is_the_same_after_the_migration(
    finished: Path, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status (text, JSON), runs and report read the same from the copy as from the file."""
    sqlite = finished / "jobs.sqlite"
    before = _digest(sqlite)
    code, printed = _out(capsys, "jobstore", "migrate", "--to", pg_url, "--jobstore", str(sqlite))
    assert EXIT_OK == code
    assert printed.startswith(f"copied the job store {sqlite} into {pg_url} (schema version ")
    for table in TABLES:
        assert f"  {table} " in printed
    assert re.search(r"^  series_folders +[1-9]", printed, re.M)  # the run's folders too
    assert "MIG0" not in printed  # counts only, never a value
    assert before == _digest(sqlite)
    shown: list[str] = []
    for view in (["status"], ["status", "--json"], ["runs"], ["runs", "--json"]):
        from_file = _out(capsys, *view, "--jobstore", str(sqlite))
        from_url = _out(capsys, *view, "--jobstore", pg_url)
        assert _timeless(from_file) == _timeless(from_url), view
        shown.append(from_url[1])
    for name, where in (("file", str(sqlite)), ("url", pg_url)):
        out = tmp_path / f"{name}.csv"
        assert EXIT_OK == main(["report", "--jobstore", where, "--out", str(out)])
    assert (tmp_path / "file.csv").read_bytes() == (tmp_path / "url.csv").read_bytes()
    assert "push         2 done of 2 session(s) on folder" in shown[0]  # a whole run
    assert before == _digest(sqlite)


def test_every_row_is_copied_with_its_id(finished: Path, pg_url: str) -> None:
    """Each table holds the same rows in PostgreSQL; new runs and jobs number on."""
    sqlite = finished / "jobs.sqlite"
    assert EXIT_OK == main(["jobstore", "migrate", "--to", pg_url, "--jobstore", str(sqlite)])
    source = sqlite3.connect(f"{sqlite.resolve().as_uri()}?mode=ro", uri=True)
    with psycopg.connect(pg_url) as target:
        tables = source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            old = sorted(map(repr, map(_plain, source.execute(f"SELECT * FROM {table}"))))
            new = sorted(map(repr, map(_plain, target.execute(f"SELECT * FROM {table}"))))
            assert old == new, table
        top = target.execute("SELECT MAX(id) FROM jobs").fetchone()
    source.close()
    with JobStore(pg_url) as store:
        job = store.add_job(name="next", queryfile_name="q.csv", content=b"x", options=JobOptions())
    assert top[0] + 1 == job.id


def _plain(row: tuple[object, ...]) -> tuple[object, ...]:
    """A row with bytes for memoryview/bytes and floats for numbers, comparable across drivers."""
    return tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in row)


def test_a_second_migration_into_the_same_database_is_refused(
    finished: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The target holds runs now: the copy is refused with exit 2, nothing changes."""
    sqlite = finished / "jobs.sqlite"
    assert EXIT_OK == main(["jobstore", "migrate", "--to", pg_url, "--jobstore", str(sqlite)])
    capsys.readouterr()
    with psycopg.connect(pg_url) as target:
        before = target.execute("SELECT COUNT(*) FROM transitions").fetchone()
    assert EXIT_BAD_INPUT == main(
        ["jobstore", "migrate", "--to", pg_url, "--jobstore", str(sqlite)]
    )
    err = capsys.readouterr().err
    assert f"job store {pg_url} already holds " in err
    assert "migrate copies into an empty database only" in err
    with psycopg.connect(pg_url) as target:
        assert before == target.execute("SELECT COUNT(*) FROM transitions").fetchone()


def test_a_wrong_url_names_the_problem(
    finished: Path, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """No such database: exit 3 and the fix; a password in the URL: exit 2, not shown."""
    sqlite = finished / "jobs.sqlite"
    missing = postgres.dsn("no_such_database")
    assert EXIT_FATAL == main(["jobstore", "migrate", "--to", missing, "--jobstore", str(sqlite)])
    err = capsys.readouterr().err
    assert 'database "no_such_database" does not exist; create the database' in err
    with pytest.raises(SystemExit) as stopped:
        main(["jobstore", "migrate", "--to", missing.replace("postgres@", "postgres:s3cret@")])
    err = capsys.readouterr().err
    assert EXIT_BAD_INPUT == stopped.value.code
    assert "holds a password" in err
    assert "s3cret" not in err
    code = main(["jobstore", "migrate", "--to", str(sqlite), "--jobstore", str(sqlite)])
    assert EXIT_BAD_INPUT == code
    assert "give the PostgreSQL database to copy into as a URL" in capsys.readouterr().err


def test_a_missing_source_file(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No SQLite file to copy: exit 2, and nothing is created in the target."""
    code = main(
        ["jobstore", "migrate", "--to", pg_url, "--jobstore", str(tmp_path / "none.sqlite")]
    )
    assert EXIT_BAD_INPUT == code
    assert "none.sqlite: no such file; give the SQLite job store" in capsys.readouterr().err
    with psycopg.connect(pg_url) as target:
        tables = target.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert (0,) == tables
