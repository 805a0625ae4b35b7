"""Where a mapping table lives: a SQLite file, or a PostgreSQL job store's database.

Private to :mod:`pacsman.anonymize` (its :mod:`~pacsman.anonymize.mapping`).  One SQL,
SQLite's dialect with ``?`` parameters and ``{t}`` for the table prefix (none in a file,
``mapping_`` in the job store), translated for PostgreSQL by :func:`_postgresql_sql`.
Locks: SQLite's ``BEGIN IMMEDIATE``; PostgreSQL's transaction-scoped advisory locks
(``pg_advisory_xact_lock``), two-key form, first key :data:`_LOCK_CLASS`.  An error from
PostgreSQL is raised without the server's DETAIL, which can quote a PatientID.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from pacsman.anonymize.locations import is_postgresql, redacted
from pacsman.errors import FatalError, InputError, JobStoreError, PacsmanError

__all__ = ["Backend", "open_backend"]

#: ``{t}`` is the table prefix: none in a SQLite file, ``mapping_`` in the job store's
#: database.  Written in SQLite's dialect; :func:`_postgresql_sql` translates.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {t}subjects (
    project TEXT NOT NULL, subject TEXT NOT NULL, patient_id TEXT NOT NULL,
    date_shift_days INTEGER NOT NULL, PRIMARY KEY (project, subject))""",
    """CREATE TABLE IF NOT EXISTS {t}sessions (
    project TEXT NOT NULL, session TEXT NOT NULL, subject TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL, accession_number TEXT NOT NULL,
    PRIMARY KEY (project, session))""",
    """CREATE TABLE IF NOT EXISTS {t}labels (
    project TEXT NOT NULL, kind TEXT NOT NULL, original TEXT NOT NULL, label TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (project, kind, original){unique_n})""",
)
#: PostgreSQL only: which project key the shared table was written with.
_KEYS_SCHEMA = """CREATE TABLE IF NOT EXISTS mapping_keys (
    project TEXT NOT NULL PRIMARY KEY, key_check TEXT NOT NULL)"""
#: First key of the two-key advisory locks of the shared mapping ("pmap"): apart from any
#: other user of advisory locks in the job store's database.
_LOCK_CLASS = 0x706D6170
_CONNECT_TIMEOUT = 10


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class Backend(Protocol):
    """One connection to where the table lives; SQL in SQLite's dialect with ``{t}``."""

    #: Where the table is, for messages: the file, or the job store (URL without password).
    where: str
    #: Whether it is the job store's table, shared by every head node.
    shared: bool

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def transaction(self, *, lock: str | None = None) -> contextlib.AbstractContextManager[None]:
        """A writing transaction; ``lock`` serializes it with every other holding it."""
        ...

    def close(self) -> None: ...


class _SqliteBackend:
    """A SQLite file: tables without prefix; ``BEGIN IMMEDIATE`` is the lock."""

    shared = False

    def __init__(self, path: Path) -> None:
        _create_private(path)
        self.where = str(path)
        self._db = sqlite3.connect(path)
        self._db.executescript(";\n".join(s.format(t="", unique_n="") for s in _SCHEMA) + ";")

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql.format(t="", c=""), params).fetchall()

    @contextlib.contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[None]:
        with self._db:
            if lock is not None:
                # The write lock before any read: two runs labelling the same project at
                # once must never both take the same next number.
                self._db.execute("BEGIN IMMEDIATE")
            yield

    def close(self) -> None:
        self._db.close()


def _postgresql_sql(sql: str) -> str:
    out = sql.format(t="mapping_", c=' COLLATE "C"', unique_n=", UNIQUE (project, kind, n)")
    out = out.replace("?", "%s")
    if out.startswith("INSERT OR IGNORE"):
        out = out.replace("INSERT OR IGNORE", "INSERT", 1) + " ON CONFLICT DO NOTHING"
    return out


class _PostgresBackend:
    """The PostgreSQL job store's database: ``mapping_*`` tables; advisory locks."""

    shared = True

    def __init__(self, url: str, *, create: bool) -> None:
        import psycopg  # only a PostgreSQL job store needs it

        self.where = f"the job store {redacted(url)}"
        self._errors = (psycopg.Error,)
        try:
            self._db = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT,
                application_name="pacsman mapping",
            )
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        if self._has_tables():
            return
        if create:
            # Under a lock: two nodes creating the same table at once can collide.
            with self.transaction(lock="schema"):
                for statement in (*_SCHEMA, _KEYS_SCHEMA):
                    self.rows(statement)
        else:
            self._db.close()
            raise InputError(
                f"{self.where}: holds no mapping table; run an anonymization first "
                "or give the project's mapping path"
            )

    def _has_tables(self) -> bool:
        # The last table the schema creates, in the same transaction as the others.
        return bool(self.rows("SELECT to_regclass('mapping_keys') IS NOT NULL")[0][0])

    def _failed(self, exc: Exception) -> PacsmanError:
        """``exc`` in words.  The server's DETAIL is never passed on: it can quote a row's
        values, a PatientID among them; the exception is raised ``from None`` for that."""
        import psycopg

        if not isinstance(exc, psycopg.OperationalError):
            state = getattr(exc, "sqlstate", None) or "none"
            return FatalError(
                f"mapping table in {self.where}: PostgreSQL refused a statement "
                f"({type(exc).__name__}, SQLSTATE {state}); this is a bug in pacsman: "
                "report it (the server's detail is left out, it may name a patient)"
            )
        what = " ".join(str(exc).split()) or type(exc).__name__
        return JobStoreError(
            f"mapping table in {self.where}: {what}; check that PostgreSQL runs, that the "
            "URL in 'jobstore' is right and its password is in PGPASSWORD, ~/.pgpass or "
            "PGPASSFILE; then run again (what was recorded is kept)"
        )

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            cursor = self._db.execute(_postgresql_sql(sql), params)
            return cursor.fetchall() if cursor.description is not None else []
        except self._errors as exc:
            raise self._failed(exc) from None

    @contextlib.contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[None]:
        try:
            with self._db.transaction():
                if lock is not None:
                    self._db.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, lock)
                    )
                yield
        except self._errors as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        self._db.close()


def open_backend(location: Path | str, *, create: bool) -> Backend:
    if is_postgresql(location):
        return _PostgresBackend(str(location), create=create)
    return _SqliteBackend(Path(location))
