"""The job store on PostgreSQL: the same public API, the same answers as on SQLite.

A real Debian PostgreSQL (pacsman.testing.postgres), one server for the module and a fresh
database per test.  The conformance test runs one scenario over every part of the API (runs,
rows, series, de-identification, pushes, the operator's views, jobs, service nodes, metrics)
against SQLite and against PostgreSQL and compares the answers; the rest checks what only a
server has: migrations run once (also when two nodes open a new database at once), claims
from two connections never collide, byte-wise text order whatever the database's locale,
connection problems named with the fix and without the password, a dropped connection
reopened, and no password ever taken from the config or the command line.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pacsman.cli import main
from pacsman.config import load_config
from pacsman.errors import ConfigError, InputError, JobStoreConnectionLost, JobStoreError
from pacsman.jobstore import SCHEMA_VERSION, JobStore
from pacsman.jobstore.jobs import JobAction, JobOptions, JobState
from pacsman.jobstore.migrate import TABLES
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.testing.net import free_port
from pacsman.testing.postgres import PostgresServer

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed; pip install -e .")

pytestmark = pytest.mark.postgres

_NAMES = itertools.count(1)
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")


# -- one scenario, both backends, the same answers ---------------------------------------------


def _queryfile(tmp_path: Path, sha: str = "a" * 64) -> QueryFile:
    rows = (
        QueryRow(line=2, keys={"PatientID": "P1"}, subject="S1", session="E1"),
        QueryRow(line=3, keys={"PatientID": "P1"}),
        QueryRow(line=4, keys={"PatientID": "P2"}),
    )
    return QueryFile(path=tmp_path / "q.csv", sha256=sha, rows=rows)


def _study(study_uid: str, *series_uids: str, date: str = "20240101") -> StudyMatch:
    series = tuple(
        SeriesMatch(study_uid, uid, series_number=str(n), modality="CT", expected_instances=n)
        for n, uid in enumerate(series_uids, start=1)
    )
    return StudyMatch(study_uid, patient_id="P1", study_date=date, series=series)


def _scenario(store: JobStore, tmp_path: Path) -> list[tuple[str, Any]]:
    """Every part of the public API once; the answers, in order."""
    out: list[tuple[str, Any]] = []
    queryfile = _queryfile(tmp_path)
    run = store.open_run(queryfile, "c" * 64, default_pacs="main")
    out.append(("resumed", store.open_run(queryfile, "c" * 64, default_pacs="main").resumed))
    store.add_rows(run, [(row, "main") for row in queryfile.rows])
    # UIDs whose byte order differs from a locale's order: 1.2.10 < 1.2.9 < 1.21
    studies = (_study("1.2.10", "1.2.10.1", "1.2.10.2"), _study("1.2.9", "1.2.9.10", "1.2.9.9"))
    out.append(("query", store.record_query(run, RowResult(queryfile.rows[0], "main", studies))))
    again = (_study("1.21", "1.21.1"), _study("1.2.9", "1.2.9.9"))
    out.append(("duplicate", store.record_query(run, RowResult(queryfile.rows[1], "main", again))))
    store.fail_row(run, 4, "PACS refused the C-FIND: 0xC000")
    out.append(("row_states", store.row_states(run)))
    places = store.series_places(run)
    store.record_directories(
        run,
        raw=[(p, tmp_path / "raw" / p.series_instance_uid) for p in places],
        anonymized=[(places[0], tmp_path / "anon")],
    )
    raw0 = tmp_path / "raw" / places[0].series_instance_uid
    out.append(("placed_before", store.placed_before([(places[0], raw0), (places[1], raw0)])))
    for n, series in enumerate(store.series_for_retrieve(run)):
        state = ItemState.FAILED if n == 3 else ItemState.COMPLETE
        store.update_series(run, series, state, received=n, reported=(n, 0), new_pass=True)
    store.record_adopted(run, [(places[-1], 7, "found complete on disk")])
    for n, series in enumerate(store.series_for_anonymize(run)):
        state = ItemState.QUARANTINED if n == 1 else ItemState.ANONYMIZED
        store.record_anonymization(
            run,
            series,
            state,
            written=n,
            detail="",
            experiment=("SUBJ", "SESS"),
            directory=tmp_path / "anon",
        )
    store.record_push(run, "xnat", ("SUBJ", "SESS"), ItemState.FAILED, detail="503")
    store.record_push(run, "xnat", ("SUBJ", "SESS"), ItemState.DONE, uri="/x", files_on_target=3)
    out += [
        ("places", store.series_places(run)),
        ("retrieve", store.series_for_retrieve(run)),
        ("push", store.series_for_push(run)),
        ("push_states", store.push_states(run, "xnat")),
        ("info", store.info_records(run)),
        ("count", store.count_series(run)),
        ("by_id", store.run_by_id(run.id)),
    ]
    store.start_heartbeat(run, options_json='{"save": true}', interval=60.0)
    with store.snapshot():
        out += [
            ("records", store.run_records()),
            ("record", store.run_record(run.id)),
            ("runs_of", store.runs_of(queryfile)),
            ("row_queries", store.row_queries(run)),
            ("outcomes", store.row_outcomes(run, "xnat")),
            ("targets", store.push_targets(run)),
            ("throughput", store.throughput(run, "2000-01-01")),
        ]
    retired = store.open_run(queryfile, "c" * 64, default_pacs="main", new_run=True)
    out.append(("retired", [(r.id, bool(r.retired_at)) for r in store.run_records()]))
    out += _jobs_scenario(store, retired.id)
    return out


def _jobs_scenario(store: JobStore, run_id: int) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    first = store.add_job(
        name="cohort", queryfile_name="q.csv", content=b"PatientID\nP1\n\x00", options=JobOptions()
    )
    second = store.add_job(
        name="urgent",
        queryfile_name="u.xlsx",
        content=b"\x50\x4b",
        options=JobOptions(save=True, anonymize=True, push="xnat"),
        priority=10,
        source="http",
    )
    out.append(("queued", store.jobs([JobState.QUEUED])))
    out.append(("bytes", store.job_queryfile(first.id)))
    claimed = store.claim_job("node-a", skip=[first.id])
    out.append(("claimed", claimed))
    store.attach_run(second.id, run_id)
    out.append(("pause", store.request_job(second.id, JobAction.PAUSE)))
    out.append(("requests", store.requests_for("node-a")))
    out.append(("progress", store.series_progress([run_id, 999])))
    store.settle_job(second.id, JobState.DONE, "every row settled")
    out.append(("cancel", store.request_job(first.id, JobAction.CANCEL)))
    out.append(("requeued", store.requeue_owned("node-a")))
    out.append(("transitions", store.job_transitions(second.id)))
    out.append(("all", store.jobs()))
    store.register_node("node-a", http_url="https://a:8443")
    store.register_node("node-a", http_url="https://a:8444")
    store.beat_node("node-a", "2 jobs")
    store.stop_node("node-a", "stopped")
    out.append(("nodes", store.service_nodes()))
    out.append(("metrics", store.job_series_totals([first.id, second.id])))
    out.append(("rows", store.job_row_totals([first.id, second.id])))
    out.append(("sessions", store.job_session_totals([first.id, second.id])))
    return out


def _comparable(answers: list[tuple[str, Any]], tmp_path: Path) -> list[str]:
    """The answers as text, timestamps and the test's folder left out."""
    return [
        f"{name}: {_TIMESTAMP.sub('<time>', repr(value)).replace(str(tmp_path), '<tmp>')}"
        for name, value in answers
    ]


def test_every_answer_is_the_same_on_both_backends(pg_url: str, tmp_path: Path) -> None:
    """The whole public API, run once on SQLite and once on PostgreSQL, answers the same."""
    with JobStore(tmp_path / "jobs.sqlite") as store:
        on_sqlite = _comparable(_scenario(store, tmp_path), tmp_path)
    with JobStore(pg_url) as store:
        assert "postgresql" == store.backend
        on_postgresql = _comparable(_scenario(store, tmp_path), tmp_path)
    assert on_sqlite == on_postgresql
    assert len(on_sqlite) > 30  # the scenario ran to its end


def test_read_only_views_of_a_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    """``JobStore(url, read_only=True)`` (status, runs, report) reads what a writer wrote."""
    with JobStore(pg_url) as store:
        answers = _comparable(_scenario(store, tmp_path), tmp_path)
        run = store.run_by_id(1)
    with JobStore(pg_url, read_only=True) as store, store.snapshot():
        assert 2 == len(store.run_records())
        assert [a for a in answers if a.startswith("info:")] == _comparable(
            [("info", store.info_records(run))], tmp_path
        )


# -- the behaviour of test_jobstore.py, on both backends ----------------------------------------


def test_same_queryfile_and_config_resume_the_same_run(
    store_location: Path | str, tmp_path: Path
) -> None:
    """A run is (query file hash, config hash): the same pair is found again."""
    with JobStore(store_location) as store:
        first = store.open_run(_queryfile(tmp_path), "c" * 64)
    with JobStore(store_location) as store:
        again = store.open_run(_queryfile(tmp_path), "c" * 64)
        other = store.open_run(_queryfile(tmp_path), "d" * 64)
    assert (first.resumed, again.resumed, other.resumed) == (False, True, False)
    assert first.id == again.id != other.id


def test_series_is_claimed_by_the_first_row_only(
    store_location: Path | str, tmp_path: Path
) -> None:
    """A series two rows select belongs to the first; the second row reports the duplicate."""
    queryfile = _queryfile(tmp_path)
    rows = queryfile.rows
    with JobStore(store_location) as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, "pacs") for row in rows])
        first = store.record_query(run, RowResult(rows[0], "pacs", (_study("1.2.3", "1.1"),)))
        second = store.record_query(
            run, RowResult(rows[1], "pacs", (_study("1.2.3", "1.1", "1.2"),))
        )
        store.record_query(run, RowResult(rows[2], "pacs", (_study("1.2.3", "1.1"),)))
        states = store.row_states(run)
        records = store.info_records(run)
    assert [s.series_instance_uid for s in first.studies[0].series] == ["1.1"]
    assert [s.series_instance_uid for s in second.studies[0].series] == ["1.2"]
    assert second.duplicate_of == ((2, "1.2.3"),)
    assert states == {2: ItemState.QUERIED, 3: ItemState.QUERIED, 4: ItemState.DUPLICATE}
    assert records[-1].row_detail == "every matching series is already selected by line 2"


def test_reordered_rows_keep_their_state(store_location: Path | str, tmp_path: Path) -> None:
    """Rows are found by their values: re-ordered, each keeps its state under its new line."""
    queryfile = _queryfile(tmp_path)
    with JobStore(store_location) as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
        store.fail_row(run, 4, "no such patient")
        moved = [replace(r, line=6 - r.line) for r in queryfile.rows]
        store.add_rows(run, [(row, "pacs") for row in moved])
        states = store.row_states(run)
    assert ItemState.FAILED == states[2]
    assert {3, 4} == {line for line, s in states.items() if s is ItemState.PENDING}


# -- what only a server has ------------------------------------------------------------------------


def test_open_creates_the_schema_once(pg_url: str) -> None:
    """The first open creates every table at the current version; later opens (another
    process, another connection) find it there and apply nothing."""
    with JobStore(pg_url):
        pass
    with psycopg.connect(pg_url) as connection:
        version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert (str(SCHEMA_VERSION),) == version.fetchone()
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        changes = connection.execute("SELECT n_tup_ins FROM pg_stat_user_tables").fetchall()
    assert set(TABLES) <= {t for (t,) in tables}
    for _ in range(2):
        with JobStore(pg_url) as store:
            assert [] == store.run_records()
    with psycopg.connect(pg_url) as connection:
        meta = connection.execute("SELECT key, value FROM meta").fetchall()
    assert [("schema_version", str(SCHEMA_VERSION))] == meta
    assert changes is not None


def test_two_nodes_opening_a_new_database_at_once(pg_url: str) -> None:
    """Two head nodes starting together on a new database: one migrates, the other waits
    and finds the schema there; both open."""
    problems: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait(timeout=10)
        try:
            JobStore(pg_url).close()
        except BaseException as exc:  # reported below
            problems.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [] == problems


def test_a_store_from_a_newer_release_is_refused(pg_url: str) -> None:
    """A database written by a newer pacsman is refused, writing or reading, with the fix."""
    with JobStore(pg_url):
        pass
    with psycopg.connect(pg_url) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for read_only in (False, True):
        with pytest.raises(InputError, match=r"schema version 99 was written by a newer pacsman"):
            JobStore(pg_url, read_only=read_only)


def test_text_columns_compare_byte_by_byte(postgres: PostgresServer, tmp_path: Path) -> None:
    """In a database whose locale sorts '1.21' before '1.2.9', the store still sorts UIDs
    byte by byte, as SQLite does: the same order in reports on both backends."""
    try:
        postgres.psql(
            "CREATE DATABASE store_locale TEMPLATE template0 ENCODING 'UTF8' "
            "LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'"
        )
    except Exception:  # the OS has no such locale: the collation check remains
        url = postgres.dsn("postgres")
    else:
        url = postgres.dsn("store_locale")
    with JobStore(url) as store:
        run = store.open_run(_queryfile(tmp_path), "c" * 64)
        store.add_rows(run, [(r, "pacs") for r in _queryfile(tmp_path).rows])
        studies = (_study("1.2.9", "1.21", "1.2.9", "1.2.10"),)
        store.record_query(run, RowResult(_queryfile(tmp_path).rows[0], "pacs", studies))
        store.update_series(run, store.series_for_retrieve(run)[0], ItemState.COMPLETE)
        uids = [r.series_instance_uid for r in store.info_records(run) if r.line == 2]
    with psycopg.connect(url) as connection:
        collations = connection.execute(
            "SELECT DISTINCT collation_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = 'text'"
        ).fetchall()
    assert ["1.21", "1.2.9", "1.2.10"] == uids  # series number 1, 2, 3
    assert [("C",)] == collations


def test_claims_from_two_connections_never_collide(pg_url: str, tmp_path: Path) -> None:
    """Two stores (two connections, as two head nodes) claiming in parallel threads: every
    job is claimed once, by one of them."""
    with JobStore(pg_url) as store:
        queued = [
            store.add_job(name=f"j{n}", queryfile_name="q.csv", content=b"x", options=JobOptions())
            for n in range(40)
        ]
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def claim_all(node: str) -> None:
        with JobStore(pg_url) as mine:
            barrier.wait(timeout=10)
            for _ in range(len(queued) + 1):
                job = mine.claim_job(f"node-{node}")
                if job is None:
                    return
                claimed[node].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(node,)) for node in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    both = claimed["a"] + claimed["b"]
    assert sorted(j.id for j in queued) == sorted(both)
    with JobStore(pg_url, read_only=True) as store:
        owners = {j.id: j.owner_node for j in store.jobs()}
    assert all(owners[i] == "node-a" for i in claimed["a"])
    assert all(owners[i] == "node-b" for i in claimed["b"])


# -- connection problems, named with the fix and without the password --------------------------


def test_a_server_that_is_not_running(postgres: PostgresServer) -> None:
    """Nothing listens on the port: the message names the store and what to check."""
    url = f"postgresql://pacsman@127.0.0.1:{free_port('127.0.0.1')}/jobs"
    with pytest.raises(JobStoreError) as raised:
        JobStore(url)
    message = str(raised.value)
    assert message.startswith(f"job store {url}: ")
    assert "Connection refused" in message
    assert message.endswith(
        "check that PostgreSQL runs there and that the host and port in "
        "'jobstore' (or --jobstore) are right, then run the command again"
    )


def test_a_database_that_does_not_exist(postgres: PostgresServer) -> None:
    """The server runs, the database is missing: the fix says how to create it."""
    with pytest.raises(
        JobStoreError,
        match=r'database "nothing_here" does not exist; create '
        r"the database \(as the postgres user: createdb -O USER DATABASE\)",
    ):
        JobStore(postgres.dsn("nothing_here"))


@pytest.fixture
def password_user(postgres: PostgresServer) -> Iterator[str]:
    """A user that must log in with the password 'right' (scram-sha-256), owner of the
    database of the same name; its name."""
    name = f"pw_{next(_NAMES)}"
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD 'right'")
    postgres.psql(f"CREATE DATABASE {name} OWNER {name}")
    hba = postgres.data_dir / "pg_hba.conf"
    before = hba.read_text(encoding="utf-8")
    hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n{before}", encoding="utf-8")
    postgres.psql("SELECT pg_reload_conf()")
    try:
        yield name
    finally:
        hba.write_text(before, encoding="utf-8")
        postgres.psql("SELECT pg_reload_conf()")


def test_a_wrong_password(
    postgres: PostgresServer, password_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong or missing password: the fix names where a password goes; a password that
    was (wrongly) put in the URL is never repeated."""
    url = postgres.dsn(password_user, user=password_user)
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(JobStoreError) as raised:
        JobStore(url)
    assert "password authentication failed" in str(raised.value)
    assert "PGPASSWORD, in ~/.pgpass, in the file PGPASSFILE names" in str(raised.value)
    assert "LoadCredential=pgpass:" in str(raised.value)
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(JobStoreError, match="no password supplied; check the user in the URL"):
        JobStore(url)
    secret_url = url.replace(f"{password_user}@", f"{password_user}:s3cret@")
    with pytest.raises(JobStoreError) as raised:
        JobStore(secret_url)
    assert "s3cret" not in str(raised.value)
    assert f"{password_user}:***@" in str(raised.value)
    monkeypatch.setenv("PGPASSWORD", "right")
    with JobStore(url) as store:
        assert "postgresql" == store.backend


def test_a_user_that_may_not_create_tables(
    postgres: PostgresServer, password_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login works, but the user does not own the database (PostgreSQL 15 lets only the
    owner create tables in it): the fix says to make it the owner."""
    monkeypatch.setenv("PGPASSWORD", "right")
    with pytest.raises(
        JobStoreError,
        match=r"permission denied for schema public; the user in "
        r"the URL must own the job store's database",
    ):
        JobStore(postgres.dsn("postgres", user=password_user))


def _end_sessions(postgres: PostgresServer, url: str) -> None:
    """pg_terminate_backend of the store's own connection(s) (a restart, a fail-over)."""
    postgres.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{url.rsplit('/', 1)[1]}' AND application_name = 'pacsman'"
    )


def test_a_dropped_connection_is_opened_again(postgres: PostgresServer, pg_url: str) -> None:
    """The server drops the connection (restart, network cut) between two calls: psycopg
    learns it only from the next statement, and a read or a transaction's BEGIN (nothing
    the server keeps) is run again on a new connection.  No call fails."""
    with JobStore(pg_url) as store:
        assert [] == store.run_records()
        _end_sessions(postgres, pg_url)
        assert [] == store.run_records()
        _end_sessions(postgres, pg_url)
        job = store.add_job(name="j", queryfile_name="q", content=b"x", options=JobOptions())
        assert 1 == job.id


def test_a_connection_lost_inside_a_transaction_is_named_and_recorded_nowhere(
    postgres: PostgresServer, pg_url: str
) -> None:
    """The connection is ended while a write waits inside its transaction: that call fails
    with JobStoreConnectionLost (the service waits it out), nothing of it is recorded, and
    the next call connects again."""
    with JobStore(pg_url) as store:
        store.add_job(name="first", queryfile_name="q", content=b"x", options=JobOptions())
        failed: list[BaseException] = []

        def add() -> None:
            try:
                store.add_job(name="lost", queryfile_name="q", content=b"x", options=JobOptions())
            except BaseException as exc:
                failed.append(exc)

        with psycopg.connect(pg_url, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            writer = threading.Thread(target=add)
            writer.start()
            _wait_for_lock_wait(blocker, pg_url)
            _end_sessions(postgres, pg_url)
            writer.join(timeout=30)
            blocker.execute("ROLLBACK")
        assert not writer.is_alive()
        assert [JobStoreConnectionLost] == [type(e) for e in failed]
        assert str(failed[0]).startswith(f"job store {pg_url}: ")
        assert ["first"] == [job.name for job in store.jobs()]
        store.add_job(name="again", queryfile_name="q", content=b"x", options=JobOptions())
        assert ["again", "first"] == sorted(job.name for job in store.jobs())


def _wait_for_lock_wait(blocker: Any, url: str, timeout: float = 30.0) -> None:
    """Until the store's connection waits for the blocker's lock."""
    deadline = time.monotonic() + timeout
    database = url.rsplit("/", 1)[1]
    while time.monotonic() < deadline:
        found = blocker.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'pacsman' AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
        if found and found[0]:
            return
        time.sleep(0.02)
    raise AssertionError(f"the store never waited for the lock in {timeout:g} s")


# -- no password in the config or on the command line -------------------------------------------


def _config(tmp_path: Path, jobstore: str) -> Path:
    path = tmp_path / "pacsman.yaml"
    path.write_text(
        "local:\n  ae_title: PACSMAN\n  port: 11112\n"
        "pacs:\n  main:\n    called_ae_title: ORTHANC\n    host: 127.0.0.1\n    port: 4242\n"
        f"jobstore: {jobstore}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://pacsman@db.example.org/pacsman",
        "postgres://pacsman@db:5433/jobs?sslmode=require",
    ],
)
def test_the_config_takes_a_postgresql_url(tmp_path: Path, url: str) -> None:
    """``jobstore:`` may be a PostgreSQL URL (kept as text) or a file path (a Path)."""
    assert url == load_config(_config(tmp_path, url)).jobstore
    assert Path("state/jobs.sqlite") == load_config(_config(tmp_path, "state/jobs.sqlite")).jobstore


def test_a_password_in_the_config_is_refused(tmp_path: Path) -> None:
    """A password in the URL is refused when the config is read, naming the key, the rule
    and where the password goes instead; the password itself is not repeated."""
    path = _config(tmp_path, "postgresql://pacsman:s3cret@db.example.org/pacsman")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert (
        "jobstore: the URL 'postgresql://pacsman:***@db.example.org/pacsman' holds a password"
        in message
    )
    assert "a password never goes in the config or on the command line" in message
    for where in (
        "PGPASSWORD",
        "~/.pgpass",
        "PGPASSFILE",
        "LoadCredential=",
        "PGPASSFILE=%d/pgpass",
    ):
        assert where in message
    assert "postgresql://pacsman@db.example.org/pacsman" in message  # the URL to write instead
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("postgresql://u@h/db?password=s3cret", "holds a password"),
        ("mysql://u@h/db", "is not a job store; use a file path, or postgresql://"),
        ("postgresql://u@h/", "names no database"),
    ],
)
def test_other_urls_are_refused(tmp_path: Path, value: str, rule: str) -> None:
    """A password in the query string, another database, no database name: refused."""
    with pytest.raises(ConfigError, match=re.escape(rule)) as raised:
        load_config(_config(tmp_path, value))
    assert "s3cret" not in str(raised.value)


def test_a_password_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """``--jobstore`` with a password in the URL: exit 2, the rule, the password not shown."""
    with pytest.raises(SystemExit) as stopped:
        main(["status", "--jobstore", "postgresql://u:s3cret@127.0.0.1/db"])
    err = capsys.readouterr().err
    assert 2 == stopped.value.code
    assert "argument --jobstore: the URL 'postgresql://u:***@127.0.0.1/db' holds a password" in err
    assert "s3cret" not in err


def test_status_reads_a_postgresql_store(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pacsman runs --jobstore URL`` reads the store (read-only) like a file."""
    with JobStore(pg_url) as store:
        store.open_run(_queryfile(tmp_path), "c" * 64)
    assert 0 == main(["runs", "--jobstore", pg_url])
    assert "q.csv" in capsys.readouterr().out
