"""Two backends, one SQL: SQLite (the stdlib's, the default) and PostgreSQL (psycopg 3).

Private to :mod:`pacsman.jobstore`.  The job store writes one dialect, SQLite's with
``?`` parameters, that both databases accept once :func:`postgresql_sql` has translated the
few differences (parameters, ``INSERT OR IGNORE``, ``CAST(... AS INTEGER)`` of text, the
identity column, ``BLOB``), and one PostgreSQL-only clause that SQLite drops:
``FOR UPDATE SKIP LOCKED`` (SQLite's ``BEGIN IMMEDIATE`` already serializes writers).
psycopg 3 with this thin layer, rather than SQLAlchemy Core: the store's SQL is already
written and tested, a claim needs exact control of the transaction and its locks, and
LISTEN/NOTIFY is psycopg's own.

A :class:`Database` is one connection, used under the job store's lock by all threads of
a process; transactions are explicit (``begin``, ``commit``, ``rollback``).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "Cursor",
    "Database",
    "PostgresDatabase",
    "SqliteDatabase",
    "is_postgresql",
    "postgresql_sql",
    "redacted",
]

#: Milliseconds a transaction may sit idle before the server ends its session (and locks).
IDLE_IN_TRANSACTION_MS = 10_000
#: URL schemes that name a PostgreSQL job store.
SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: object) -> bool:
    """Whether ``location`` (a path or a URL) names a PostgreSQL job store."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def redacted(url: str) -> str:
    """``url`` without a password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}{port}".replace("@***@", ":***@")))


class Cursor(Protocol):
    """What both drivers' cursors give."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database(ABC):
    """One connection to the job store's database."""

    #: "sqlite" or "postgresql".
    kind: str
    #: The store as messages name it (a path, or a URL without its password).
    where: str
    #: The driver's exceptions.
    errors: tuple[type[Exception], ...]

    @abstractmethod
    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        """Run one statement (SQLite dialect, ``?`` parameters)."""

    @abstractmethod
    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        """Run one statement once per parameter tuple."""

    @abstractmethod
    def begin(self) -> None:
        """Start a writing transaction."""

    def begin_snapshot(self) -> None:
        """Start a reading transaction that sees one state of the store."""
        self.execute("BEGIN")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    @property
    @abstractmethod
    def in_transaction(self) -> bool: ...

    @abstractmethod
    def has_table(self, name: str) -> bool: ...

    def notify(self, channel: str) -> None:  # noqa: B027 - SQLite has nobody to wake
        """Wake the nodes listening on ``channel`` when this transaction commits."""

    @abstractmethod
    def changed_elsewhere(self, channel: str) -> bool:
        """Whether another connection committed since the last call (PostgreSQL: a NOTIFY on
        ``channel``)."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    """A SQLite file (or ``:memory:``), autocommit with explicit transactions."""

    kind = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, connection: sqlite3.Connection, where: str) -> None:
        self.connection = connection
        self.where = where
        self._data_version: int | None = None

    def changed_elsewhere(self, channel: str) -> bool:
        found = self.connection.execute("PRAGMA data_version").fetchone()
        version = int(found[0]) if found else 0
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self.connection.execute(sqlite_sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        self.connection.executemany(sqlite_sql(sql), params)

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def has_table(self, name: str) -> bool:
        found = self.connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None

    def close(self) -> None:
        self.connection.close()


class PostgresDatabase(Database):
    """A PostgreSQL database through psycopg 3, autocommit with explicit transactions."""

    kind = "postgresql"

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        import psycopg  # only a PostgreSQL store needs it

        self.where = redacted(url)
        self.errors = (psycopg.Error,)
        self.url = url
        self._connect_timeout = connect_timeout
        self._explicit = False  # inside begin() ... commit() or rollback()
        self.connection = self._connect()
        self._listener: Any = None

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        connection = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="pacsman",
        )
        # The store's transactions never wait on anything but the database; one that sits
        # idle is a node that was stopped (SIGSTOP) or hangs in the middle of it.  The server
        # ends its session, so the row locks it held do not stop the other nodes.
        connection.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        return connection

    def _reconnect_if_lost(self) -> None:
        """Outside a transaction, a connection the server dropped (a restart, a network
        cut) is opened again: work resumes once the server is back.  Inside one, the
        error stands: the transaction is lost, and the caller's rollback ends it."""
        if not self._explicit and (self.connection.closed or self.connection.broken):
            self.connection.close()
            self.connection = self._connect()

    def _once_more_if_lost(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        """``sql``, run again on a new connection if the old one turns out to be lost.

        Only for what the server keeps nothing of: ``BEGIN``, or a ``SELECT`` outside a
        transaction.  psycopg learns that a connection is gone (the server ended its
        session, or restarted) only from the next statement on it, so without this one
        lost connection would fail one call of every process that held one.
        """
        import psycopg

        self._reconnect_if_lost()
        try:
            return self.connection.execute(sql, params)
        except psycopg.OperationalError:
            if self._explicit or not self.connection.broken:
                raise
        self._reconnect_if_lost()
        return self.connection.execute(sql, params)

    def changed_elsewhere(self, channel: str) -> bool:
        import psycopg

        if self._listener is None:  # the first call starts listening: nothing seen yet
            self._listener = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="pacsman-listen",
            )
            self._listener.execute(f"LISTEN {channel}")
            return False
        try:
            return any(True for _ in self._listener.notifies(timeout=0))
        except psycopg.OperationalError:  # the server dropped it: listen again next time
            self._listener.close()
            self._listener = None
            return True  # what was sent meanwhile is lost: look at the store

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        if not self._explicit and sql.lstrip()[:6].upper() == "SELECT":
            return self._once_more_if_lost(postgresql_sql(sql), params)
        self._reconnect_if_lost()
        return self.connection.execute(postgresql_sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(postgresql_sql(sql), params)

    def begin(self) -> None:
        self._once_more_if_lost("BEGIN")
        self._explicit = True

    def begin_snapshot(self) -> None:
        self._once_more_if_lost("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._explicit = True

    def commit(self) -> None:
        try:
            self.connection.execute("COMMIT")
        finally:
            self._explicit = False

    def rollback(self) -> None:
        try:
            if not self.connection.broken and self.in_transaction:
                self.connection.execute("ROLLBACK")
        finally:
            self._explicit = False

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.connection.info.transaction_status != TransactionStatus.IDLE

    def has_table(self, name: str) -> bool:
        found = self.connection.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (name,),
        ).fetchone()
        return found is not None

    def notify(self, channel: str) -> None:
        self.connection.execute("SELECT pg_notify(%s, '')", (channel,))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.connection.close()


_ROW_LOCK = re.compile(r"\s+FOR (UPDATE|SHARE)( OF \w+)?( SKIP LOCKED)?", re.IGNORECASE)
#: The database's clock in epoch seconds (leases are timed by the database, never by a
#: node's own clock, so nodes whose clocks disagree still agree on who holds what).
EPOCH_NOW = "EPOCH_NOW()"
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_POSTGRESQL_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@functools.lru_cache(maxsize=512)
def sqlite_sql(sql: str) -> str:
    """The statement for SQLite: without PostgreSQL's row-lock clauses; its clock."""
    out = _ROW_LOCK.sub("", sql) if "FOR " in sql else sql
    return out.replace(EPOCH_NOW, _SQLITE_NOW)


_CAST_INTEGER = re.compile(r"CAST\(([\w.]+) AS INTEGER\)")
_IDENTITY = re.compile(r"\bid INTEGER PRIMARY KEY\b")
#: Statements that define columns; their TEXT columns compare byte by byte, as SQLite's do,
#: whatever the database's locale (ORDER BY of UIDs and labels gives the same order).
_DEFINES_COLUMNS = re.compile(r"\s*(CREATE TABLE|ALTER TABLE)\b", re.IGNORECASE)
_TEXT = re.compile(r"\bTEXT\b")


@functools.lru_cache(maxsize=512)
def postgresql_sql(sql: str) -> str:
    """The SQLite-dialect statement ``sql`` as PostgreSQL takes it.

    - ``?`` parameters become ``%s`` (and a literal ``%`` is doubled);
    - ``INSERT OR IGNORE`` becomes ``INSERT ... ON CONFLICT DO NOTHING``;
    - ``CAST(text AS INTEGER)`` keeps SQLite's meaning: the leading digits, else 0;
    - ``id INTEGER PRIMARY KEY`` becomes an identity column, ``BLOB`` is ``BYTEA``;
    - ``EPOCH_NOW()`` is the server's clock in epoch seconds.
    """
    out = sql.replace("%", "%%").replace("?", "%s")
    if out.lstrip().upper().startswith("INSERT OR IGNORE"):
        out = _ignore_conflicts(out.replace("INSERT OR IGNORE", "INSERT", 1))
    if _DEFINES_COLUMNS.match(out):
        out = _TEXT.sub('TEXT COLLATE "C"', out)
    out = _CAST_INTEGER.sub(_leading_integer, out).replace(EPOCH_NOW, _POSTGRESQL_NOW)
    out = _IDENTITY.sub("id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", out)
    return out.replace(" BLOB ", " BYTEA ")


def _ignore_conflicts(insert: str) -> str:
    """``ON CONFLICT DO NOTHING`` at the end of ``insert``, before a ``RETURNING``."""
    head, returning, tail = insert.rpartition(" RETURNING ")
    if not returning:
        return f"{insert} ON CONFLICT DO NOTHING"
    return f"{head} ON CONFLICT DO NOTHING RETURNING {tail}"


def _leading_integer(match: re.Match[str]) -> str:
    column = match.group(1)
    return f"COALESCE(CAST(substring({column} from '^\\s*([-+]?[0-9]{{1,18}})') AS BIGINT), 0)"


def open_sqlite(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    """A SQLite connection as the store uses it: autocommit, shared by threads."""
    return sqlite3.connect(
        path, uri=uri, timeout=30.0, isolation_level=None, check_same_thread=False
    )
