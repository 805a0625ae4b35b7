"""The test PostgreSQL launcher: a real Debian PostgreSQL, started and stopped by the test.

Checks what the PostgreSQL job store of issue 14 will rely on: plain SQL, ``FOR UPDATE SKIP
LOCKED`` claims across connections, ``LISTEN/NOTIFY`` wake-ups, extra databases, and a clean
stop (port closed, folder gone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsman.testing.net import accepts_tcp
from pacsman.testing.postgres import (
    POSTGRES_ROOT,
    PostgresNotInstalledError,
    PostgresServer,
    postgres_available,
)
from tests.conftest import require_peer

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed; pip install -e .[test]")

pytestmark = pytest.mark.postgres

_NOTIFY_TIMEOUT = 10.0


def _require_postgres() -> None:
    require_peer(
        postgres_available(),
        f"PostgreSQL ({POSTGRES_ROOT}/*/bin/initdb)",
        "apt-get install postgresql",
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One server for the module; each test uses its own table or database."""
    _require_postgres()
    with PostgresServer() as server:
        yield server


def test_dsn_names_user_host_port_and_database(postgres: PostgresServer) -> None:
    """The DSN is the superuser over TCP on 127.0.0.1, without a password."""
    expected = f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
    assert expected == postgres.dsn()
    assert postgres.dsn("jobs", user="pacsman").endswith(f":{postgres.port}/jobs")


def test_insert_and_select(postgres: PostgresServer) -> None:
    """A table can be created, written and read back."""
    with psycopg.connect(postgres.dsn()) as connection:
        connection.execute("CREATE TABLE study (id serial PRIMARY KEY, uid text NOT NULL)")
        connection.execute("INSERT INTO study (uid) VALUES ('1.2.3'), ('1.2.4')")
        rows = connection.execute("SELECT uid FROM study ORDER BY id").fetchall()
    assert rows == [("1.2.3",), ("1.2.4",)]


def test_skip_locked_claims_do_not_collide(postgres: PostgresServer) -> None:
    """While one connection holds a row FOR UPDATE, a second one's SKIP LOCKED claim skips it."""
    claim = "SELECT id FROM job WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    with psycopg.connect(postgres.dsn(), autocommit=True) as setup:
        setup.execute("CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL)")
        setup.execute("INSERT INTO job VALUES (1, 'queued'), (2, 'queued')")
    with psycopg.connect(postgres.dsn()) as first, psycopg.connect(postgres.dsn()) as second:
        first_claim = first.execute(claim).fetchone()
        second_claim = second.execute(claim).fetchone()
        first.rollback()
        second.rollback()
    assert first_claim == (1,)
    assert second_claim == (2,)


def test_listen_notify_wakes_the_listener(postgres: PostgresServer) -> None:
    """A NOTIFY on one connection reaches a LISTEN on another, within a bounded wait."""
    with (
        psycopg.connect(postgres.dsn(), autocommit=True) as listener,
        psycopg.connect(postgres.dsn(), autocommit=True) as notifier,
    ):
        listener.execute("LISTEN job_queued")
        notifier.execute("SELECT pg_notify('job_queued', 'job-7')")
        started = time.monotonic()
        received = list(listener.notifies(timeout=_NOTIFY_TIMEOUT, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [("job_queued", "job-7")]
    assert time.monotonic() - started < _NOTIFY_TIMEOUT


def test_create_database(postgres: PostgresServer) -> None:
    """create_database makes a database that accepts connections."""
    postgres.create_database("pacsman_jobs")
    with psycopg.connect(postgres.dsn("pacsman_jobs")) as connection:
        name = connection.execute("SELECT current_database()").fetchone()
    assert name == ("pacsman_jobs",)


def test_create_database_refuses_odd_names(postgres: PostgresServer) -> None:
    """A name that would need quoting is refused before psql runs, naming the rule."""
    with pytest.raises(ValueError, match=r"database name 'a\"b' is not allowed; use lower-case"):
        postgres.create_database('a"b')


def test_stop_closes_the_port_and_removes_the_folder() -> None:
    """After the context exits nothing listens on the port and the folder is gone."""
    _require_postgres()
    with PostgresServer() as server:
        port, workdir = server.port, server.workdir
        assert accepts_tcp(server.host, port)
        assert workdir.is_dir()
    assert not accepts_tcp("127.0.0.1", port)
    assert not workdir.exists()


def test_missing_postgresql_says_how_to_install(tmp_path: Path) -> None:
    """Without /usr/lib/postgresql/*/bin/initdb, start() names the binary and the package."""
    with pytest.raises(PostgresNotInstalledError, match=r"bin/initdb; install it with `apt-get"):
        PostgresServer(root=tmp_path).start()
    assert not postgres_available(tmp_path)
