"""Copy a SQLite job store into an empty PostgreSQL one: ``pacsman jobstore migrate``.

A site that outgrows one head node keeps its history: every table (runs, rows, studies,
series, the transition log, pushes, jobs and their transitions, service nodes, study
claims, meta) is copied with its ids, in one transaction, and the identity sequences are set
past the highest id copied, so new runs and jobs number on.  The SQLite file is opened
read-only (a store from an older release is brought to the current schema in a copy in
memory first) and is never written.  A target that already holds anything is refused: the
copy never merges two histories.  What is printed is counts per table, never a value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsman.errors import InputError, JobStoreError
from pacsman.jobstore import SCHEMA_VERSION, JobStore
from pacsman.jobstore._backend import Database, is_postgresql, redacted

__all__ = ["TABLES", "Migrated", "migrate_to_postgresql"]

#: The tables of the store, parents before children: copied first, in this order; any other
#: table of the schema (added by a later migration) follows, by name.
TABLES = (
    "meta",
    "runs",
    "rows",
    "studies",
    "series",
    "series_folders",
    "transitions",
    "pushes",
    "jobs",
    "job_transitions",
    "service_nodes",
    "study_claims",
    "dqr_studies",
)
#: Rows read and written per batch (a store of 10,000 studies has ~1 M transitions).
_BATCH = 2000


@dataclass(frozen=True)
class Migrated:
    """What a migration copied: rows per table, in :data:`TABLES` order."""

    source: Path
    target: str  # the URL without a password
    schema_version: int
    counts: tuple[tuple[str, int], ...]

    def lines(self) -> list[str]:
        """What ``pacsman jobstore migrate`` prints: counts only, no value from the store."""
        width = max(len(table) for table, _ in self.counts)
        return [
            f"copied the job store {self.source} into {self.target} "
            f"(schema version {self.schema_version}, one transaction):",
            *(f"  {table.ljust(width)}  {n}" for table, n in self.counts),
            f"{self.source} was read only and is unchanged; set 'jobstore: {self.target}' in "
            "the config of every head node",
        ]


def migrate_to_postgresql(source: Path, target: str) -> Migrated:
    """Copy the SQLite job store ``source`` into the empty PostgreSQL store at ``target``.

    Raises:
        InputError: ``source`` is no file or not a SQLite store, ``target`` is no PostgreSQL
            URL, or the target already holds runs, jobs or other rows (nothing is copied).
        JobStoreError: either store cannot be used (the message says which and how to fix it);
            nothing is copied.
    """
    if not is_postgresql(target):
        raise InputError(
            f"--to {redacted(target)}: the target must be a postgresql://user@host[:port]/db "
            "URL (the password in PGPASSWORD or ~/.pgpass, never the URL)"
        )
    if not source.is_file():
        raise InputError(
            f"job store {source}: no such file; give the SQLite job store to copy with "
            "--jobstore FILE (or the config whose 'jobstore' names it, with --config)"
        )
    with JobStore(source, read_only=True) as old, JobStore(target) as new:
        counts = _copy(old, new)
        where = new.where
    return Migrated(source, where, SCHEMA_VERSION, tuple(counts))


def _copy(old: JobStore, new: JobStore) -> list[tuple[str, int]]:
    """Every table of ``old`` into ``new``, in one transaction of ``new``."""
    counts = []
    tables = _tables(old._db)
    # One long transaction between reads of the source: the store's 10 s idle limit (meant
    # for a node stopped mid-transaction) does not apply to this copy.
    new._db.execute("SET idle_in_transaction_session_timeout = 0")
    with new._tx() as db:
        db.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
        _refuse_unless_empty(db, new.where, tables)
        db.execute("DELETE FROM meta")  # the target's own schema_version: the source's replaces it
        for table in tables:
            columns = _columns(old._db, table)
            copied = _copy_table(old._db, db, table, columns)
            found = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            if int(found[0]) != copied:
                raise JobStoreError(
                    f"job store {new.where}: {table} holds {found[0]} rows after copying "
                    f"{copied}; nothing was copied (the transaction is rolled back): report this"
                )
            counts.append((table, copied))
        for table in _identity_tables(db):
            db.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
    return counts


def _tables(db: Database) -> list[str]:
    """The tables of the SQLite store: :data:`TABLES` first, then any other by name."""
    found = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    names = {str(r[0]) for r in found}
    return [t for t in TABLES if t in names] + sorted(names - set(TABLES))


def _identity_tables(db: Database) -> list[str]:
    """The tables of the PostgreSQL store whose ``id`` is an identity column."""
    found = db.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND column_name = 'id' AND is_identity = 'YES' ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in found]


def _refuse_unless_empty(db: Database, where: str, tables: Sequence[str]) -> None:
    """Raises: InputError: the target already holds rows besides its ``meta``."""
    held = []
    for table in tables:
        if table == "meta":
            continue
        found = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if int(found[0]):
            held.append(f"{found[0]} {table}")
    if held:
        raise InputError(
            f"job store {where} already holds {', '.join(held)}: migrate copies into an empty "
            "database only, and never merges two histories; give a new database (as the "
            "postgres user: createdb -O USER DATABASE), or, if it holds only a failed earlier "
            "copy, drop and create that database again"
        )


def _columns(db: Database, table: str) -> list[str]:
    """The columns of ``table`` in the SQLite store, in their order."""
    return [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})").fetchall()]


def _copy_table(source: Database, target: Database, table: str, columns: Sequence[str]) -> int:
    names = ", ".join(columns)
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    copied = 0
    for batch in _batches(source.execute(f"SELECT {names} FROM {table} ORDER BY rowid")):
        target.executemany(insert, batch)
        copied += len(batch)
    return copied


def _batches(cursor: Any) -> Iterator[list[tuple[Any, ...]]]:
    while batch := cursor.fetchmany(_BATCH):
        yield [tuple(row) for row in batch]
