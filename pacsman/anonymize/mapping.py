"""The mapping table: original <-> pseudonym for subjects, sessions and date shifts.

Two places, one behaviour:

- a local SQLite file (the default, ``<state dir>/<project>.mapping.sqlite``), created with
  mode 0600 (its journal inherits the mode);
- with a PostgreSQL job store (``jobstore: postgresql://...``), the job store's database, in
  the tables ``mapping_subjects``, ``mapping_sessions``, ``mapping_labels`` and
  ``mapping_keys`` (created on first use), shared by every head node of a cluster so that a
  patient gets one subject label and one date shift whichever node de-identifies it.

It holds PHI: it never goes into the output and its content is never logged.
``export_mapping`` writes it as CSV (mode 0600, formulas neutralized:
:func:`pacsman.layout.write_private_csv`) for the data manager (``pacsman mapping export``).

It also numbers labels made from a naming template (``{project}_{n:04d}``): an original
seen before gets the same label on every run and every node.  Concurrency: SQLite takes its
write lock (``BEGIN IMMEDIATE``) before reading the next number; PostgreSQL takes a
transaction-scoped advisory lock per project and kind (``pg_advisory_xact_lock``), and
``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT`` makes two nodes recording the same
patient at once read the same row.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pacsman.anonymize.locations import is_postgresql, redacted
from pacsman.errors import FatalError, InputError, ItemFailed, JobStoreError, PacsmanError
from pacsman.layout import write_private_csv

__all__ = ["MappingTable", "check_template", "export_mapping", "same_patient_id"]

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
#: Byte order (``COLLATE "C"`` on PostgreSQL, SQLite's own), so both export the same CSV.
_EXPORT = """
SELECT s.project, s.subject, s.patient_id, s.date_shift_days,
       e.session, e.study_instance_uid, e.accession_number
FROM {t}subjects s LEFT JOIN {t}sessions e ON e.project = s.project AND e.subject = s.subject
ORDER BY s.project{c}, s.subject{c}, e.session{c} NULLS FIRST
"""
_COLUMNS = (
    "project",
    "subject",
    "PatientID",
    "date_shift_days",
    "session",
    "StudyInstanceUID",
    "AccessionNumber",
)
#: First key of the two-key advisory locks of the shared mapping ("pmap"): apart from any
#: other user of advisory locks in the job store's database.
_LOCK_CLASS = 0x706D6170
_CONNECT_TIMEOUT = 10


def _normalized_id(value: str) -> str:
    return "".join(c for c in value.casefold() if c.isalnum()).lstrip("0")


def same_patient_id(recorded: str, given: str) -> bool:
    """True when two PatientIDs name the same patient: equal once case, spaces, separators
    and leading zeros are ignored (an SR that drops the zeros of ``0012345``)."""
    return recorded == given or _normalized_id(recorded) == _normalized_id(given)


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def check_template(template: str) -> str | None:
    """Why ``template`` is not a valid label template (fields: project, n), or ``None``."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        template.format(project="P", n=1)
    except (ValueError, IndexError, KeyError) as exc:
        return f"{template!r} is not a valid template ({exc}); use e.g. '{{project}}_{{n:04d}}'"
    if "n" not in fields:
        return f"{template!r} has no {{n}}: every label would be the same; add e.g. {{n:04d}}"
    return None


def key_check(key: bytes) -> str:
    """What the shared table records of a project key: an HMAC of a fixed text, not the key."""
    return hmac.new(key, b"pacsman mapping key check", hashlib.sha256).hexdigest()


class _Backend(Protocol):
    """One connection to where the table lives; SQL in SQLite's dialect with ``{t}``."""

    where: str

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def transaction(self, *, lock: str | None = None) -> contextlib.AbstractContextManager[None]:
        """A writing transaction; ``lock`` serializes it with every other holding it."""
        ...

    def close(self) -> None: ...


class _SqliteBackend:
    """A SQLite file: tables without prefix; ``BEGIN IMMEDIATE`` is the lock."""

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


def _backend(location: Path | str, *, create: bool) -> _Backend:
    if is_postgresql(location):
        return _PostgresBackend(str(location), create=create)
    return _SqliteBackend(Path(location))


class MappingTable:
    """The project's mapping table: a SQLite file (created 0600 on first use), or the
    ``mapping_*`` tables of a PostgreSQL job store when ``location`` is its URL.

    Raises:
        JobStoreError: the PostgreSQL job store cannot be reached (the message says why).
    """

    def __init__(self, location: Path | str) -> None:
        self._store = _backend(location, create=True)
        self.location = location

    @classmethod
    def _existing(cls, location: Path | str) -> MappingTable:
        table = cls.__new__(cls)
        table._store, table.location = _backend(location, create=False), location
        return table

    @property
    def where(self) -> str:
        """Where the table is, for messages: the file, or the job store's URL (no password)."""
        return self._store.where

    @property
    def shared(self) -> bool:
        """Whether the table is the job store's, shared by every head node."""
        return isinstance(self._store, _PostgresBackend)

    def close(self) -> None:
        """Close the connection."""
        self._store.close()

    def check_key(self, project: str, key: bytes) -> None:
        """Make sure every node de-identifies ``project`` with the same key (shared table
        only; a local table has one node).  The first key used is recorded as an HMAC.

        Raises:
            InputError: this node's key for ``project`` is not the one the table was
                written with.
        """
        if not self.shared:
            return
        check = key_check(key)
        with self._store.transaction():
            self._store.rows("INSERT OR IGNORE INTO mapping_keys VALUES (?, ?)", (project, check))
            ((recorded,),) = self._store.rows(
                "SELECT key_check FROM mapping_keys WHERE project = ?", (project,)
            )
        if not hmac.compare_digest(recorded, check):
            raise InputError(
                f"project {project}: this node's key file is not the key the shared mapping "
                f"table in {self.where} was written with, so its UIDs and date shifts would "
                "differ from the other nodes'; copy the project's key file from the first "
                "node to this one (the same path on every node), then run again"
            )

    def record(
        self,
        *,
        project: str,
        subject: str,
        session: str,
        patient_id: str,
        date_shift_days: int,
        study_instance_uid: str,
        accession_number: str,
    ) -> None:
        """Record one subject/session pair (idempotent).

        Raises:
            ItemFailed: the subject or session label already belongs to another patient
                or study in this project.
        """
        with self._store.transaction():
            self._store.rows(
                "INSERT OR IGNORE INTO {t}subjects VALUES (?, ?, ?, ?)",
                (project, subject, patient_id, date_shift_days),
            )
            self._store.rows(
                "INSERT OR IGNORE INTO {t}sessions VALUES (?, ?, ?, ?, ?)",
                (project, session, subject, study_instance_uid, accession_number),
            )
            self._check(project, subject, session, patient_id, study_instance_uid)

    def _check(
        self, project: str, subject: str, session: str, patient_id: str, study_uid: str
    ) -> None:
        ((known_patient,),) = self._store.rows(
            "SELECT patient_id FROM {t}subjects WHERE project = ? AND subject = ?",
            (project, subject),
        )
        if not same_patient_id(known_patient, patient_id):
            raise ItemFailed(
                f"project {project}: this file's PatientID (0010,0020) differs from the one "
                f"recorded for subject {subject!r} in the mapping table (compared without "
                "case, spaces, separators and leading zeros), so it is another patient; "
                "give each patient its own Subject label"
            )
        ((known_subject, known_study),) = self._store.rows(
            "SELECT subject, study_instance_uid FROM {t}sessions WHERE project = ? AND session = ?",
            (project, session),
        )
        if known_subject != subject:
            raise ItemFailed(
                f"project {project}: session {session!r} is recorded for subject "
                f"{known_subject!r}, not {subject!r}; give each study its own Session label"
            )
        if known_study != study_uid:
            raise ItemFailed(
                f"project {project}: this file's StudyInstanceUID (0020,000D) differs from "
                f"the one recorded for session {session!r} in the mapping table, so it is "
                "another study; give each study its own Session label"
            )

    def label_for(
        self, kind: Literal["subject", "session"], original: str, *, project: str, template: str
    ) -> str:
        """The stable label for ``original`` made from ``template`` (next ``n`` if new).

        Raises:
            InputError: the template is invalid (see :func:`check_template`).
        """
        problem = check_template(template)
        if problem is not None:
            raise InputError(problem)
        # Locked before reading MAX(n): two runs (or nodes) labelling the same project at
        # once must never both take the same next number.
        with self._store.transaction(lock=f"labels\x1f{project}\x1f{kind}"):
            found = self._store.rows(
                "SELECT label FROM {t}labels WHERE project = ? AND kind = ? AND original = ?",
                (project, kind, original),
            )
            if found:
                return str(found[0][0])
            ((n,),) = self._store.rows(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM {t}labels WHERE project = ? AND kind = ?",
                (project, kind),
            )
            label = template.format(project=project, n=n)
            self._store.rows(
                "INSERT INTO {t}labels VALUES (?, ?, ?, ?, ?)", (project, kind, original, label, n)
            )
            return label

    def export(self, out: Path) -> int:
        """Write the mapping as CSV to ``out`` (mode 0600, atomic); return the number of rows.

        Raises:
            OSError: the file cannot be written.
        """
        rows = self._store.rows(_EXPORT)
        write_private_csv(out, _COLUMNS, rows)
        return len(rows)


def export_mapping(location: Path | str, out: Path) -> int:
    """Export the mapping table at ``location`` (a file or a PostgreSQL job store's URL) to
    CSV ``out``; return the row count.

    Raises:
        InputError: there is no mapping table at ``location``.
        JobStoreError: the PostgreSQL job store cannot be reached.
    """
    if not is_postgresql(location) and not Path(location).is_file():
        raise InputError(
            f"{location}: no mapping table here; run an anonymization first "
            "or give the project's mapping path"
        )
    table = MappingTable._existing(location)
    try:
        return table.export(out)
    finally:
        table.close()
