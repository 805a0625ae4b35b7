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

import hashlib
import hmac
import string
from pathlib import Path
from typing import Literal

from pacsman.anonymize._mapping_db import open_backend
from pacsman.anonymize.locations import is_postgresql
from pacsman.errors import InputError, ItemFailed
from pacsman.layout import write_private_csv

__all__ = [
    "MappingTable",
    "check_template",
    "export_mapping",
    "import_mapping",
    "same_patient_id",
]

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


def _normalized_id(value: str) -> str:
    return "".join(c for c in value.casefold() if c.isalnum()).lstrip("0")


def same_patient_id(recorded: str, given: str) -> bool:
    """True when two PatientIDs name the same patient: equal once case, spaces, separators
    and leading zeros are ignored (an SR that drops the zeros of ``0012345``)."""
    return recorded == given or _normalized_id(recorded) == _normalized_id(given)


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


class MappingTable:
    """The project's mapping table: a SQLite file (created 0600 on first use), or the
    ``mapping_*`` tables of a PostgreSQL job store when ``location`` is its URL.

    Raises:
        JobStoreError: the PostgreSQL job store cannot be reached (the message says why).
    """

    def __init__(self, location: Path | str) -> None:
        self._store = open_backend(location, create=True)
        self.location = location

    @classmethod
    def _existing(cls, location: Path | str) -> MappingTable:
        table = cls.__new__(cls)
        table._store, table.location = open_backend(location, create=False), location
        return table

    @property
    def where(self) -> str:
        """Where the table is, for messages: the file, or the job store's URL (no password)."""
        return self._store.where

    @property
    def shared(self) -> bool:
        """Whether the table is the job store's, shared by every head node."""
        return self._store.shared

    def close(self) -> None:
        """Close the connection."""
        self._store.close()

    def holds(self, project: str) -> bool:
        """Whether anything is recorded or numbered for ``project``."""
        return bool(
            self._store.rows(
                "SELECT 1 FROM {t}subjects WHERE project = ? UNION ALL "
                "SELECT 1 FROM {t}labels WHERE project = ? LIMIT 1",
                (project, project),
            )
        )

    def check_not_left_behind(self, project: str, local: Path) -> None:
        """Refuse a shared table that knows nothing of ``project`` while the local file
        ``local`` does: its numbering would start again at 1, and a new patient could get
        the subject label of a patient already pushed.

        Raises:
            InputError: the local table holds ``project`` and the shared one does not.
        """
        if not self.shared or not local.is_file() or self.holds(project):
            return
        table = MappingTable(local)
        try:
            left_behind = table.holds(project)
        finally:
            table.close()
        if left_behind:
            raise InputError(
                f"project {project}: the local mapping table {local} holds it but the shared "
                f"one in {self.where} does not, so labels would be numbered again from 1 and "
                f"could name patients already pushed; copy it first with 'pacsman mapping "
                f"import {local}' (on one node, once), then run again"
            )

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


_TABLES = ("subjects", "sessions", "labels")


def import_mapping(source: Path, target: MappingTable) -> int:
    """Copy the local table ``source`` into ``target`` (the shared one, when a site grows
    to several head nodes); return the rows copied.  All or nothing, in one transaction.

    Raises:
        InputError: ``source`` is no mapping table, or ``target`` already holds one of its
            projects (numbering would clash; nothing is copied).
    """
    if not source.is_file():
        raise InputError(f"{source}: no mapping table here; give the project's mapping file")
    local = MappingTable(source)
    try:
        rows = {name: local._store.rows(f"SELECT * FROM {name}") for name in _TABLES}
    finally:
        local.close()
    projects = sorted({row[0] for table in rows.values() for row in table})
    with target._store.transaction(lock="import"):
        for project in projects:
            if target.holds(project):
                raise InputError(
                    f"project {project}: {target.where} already holds a mapping for it, so "
                    f"the labels of {source} could clash with it; nothing was copied"
                )
        for name, table in rows.items():
            marks = ", ".join("?" * len(table[0])) if table else ""
            for row in table:
                target._store.rows(f"INSERT INTO {{t}}{name} VALUES ({marks})", row)
    return sum(len(table) for table in rows.values())


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
