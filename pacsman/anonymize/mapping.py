"""The local mapping table: original <-> pseudonym for subjects, sessions and date shifts.

An SQLite file created with mode 0600 (its journal inherits the mode).  It holds PHI: it
never goes into the output and its content is never logged.  ``export_mapping`` writes it
as CSV (mode 0600, formulas neutralized: :func:`pacsman.layout.write_private_csv`) for the
data manager (``pacsman mapping export``).

It also numbers labels made from a naming template (``{project}_{n:04d}``): an original
seen before gets the same label on every run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import string
from pathlib import Path
from typing import Literal

from pacsman.errors import InputError, ItemFailed
from pacsman.layout import write_private_csv

__all__ = ["MappingTable", "check_template", "export_mapping", "same_patient_id"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    project TEXT NOT NULL, subject TEXT NOT NULL, patient_id TEXT NOT NULL,
    date_shift_days INTEGER NOT NULL, PRIMARY KEY (project, subject));
CREATE TABLE IF NOT EXISTS sessions (
    project TEXT NOT NULL, session TEXT NOT NULL, subject TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL, accession_number TEXT NOT NULL,
    PRIMARY KEY (project, session));
CREATE TABLE IF NOT EXISTS labels (
    project TEXT NOT NULL, kind TEXT NOT NULL, original TEXT NOT NULL, label TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (project, kind, original));
"""
_EXPORT = """
SELECT s.project, s.subject, s.patient_id, s.date_shift_days,
       e.session, e.study_instance_uid, e.accession_number
FROM subjects s LEFT JOIN sessions e ON e.project = s.project AND e.subject = s.subject
ORDER BY s.project, s.subject, e.session
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


class MappingTable:
    """The project's mapping table in an SQLite file, created 0600 on first use."""

    def __init__(self, path: Path) -> None:
        _create_private(path)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

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
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?, ?)",
                (project, subject, patient_id, date_shift_days),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO sessions VALUES (?, ?, ?, ?, ?)",
                (project, session, subject, study_instance_uid, accession_number),
            )
            self._check(project, subject, session, patient_id, study_instance_uid)

    def _check(
        self, project: str, subject: str, session: str, patient_id: str, study_uid: str
    ) -> None:
        (known_patient,) = self._db.execute(
            "SELECT patient_id FROM subjects WHERE project = ? AND subject = ?",
            (project, subject),
        ).fetchone()
        if not same_patient_id(known_patient, patient_id):
            raise ItemFailed(
                f"project {project}: this file's PatientID (0010,0020) differs from the one "
                f"recorded for subject {subject!r} in the mapping table (compared without "
                "case, spaces, separators and leading zeros), so it is another patient; "
                "give each patient its own Subject label"
            )
        known_subject, known_study = self._db.execute(
            "SELECT subject, study_instance_uid FROM sessions WHERE project = ? AND session = ?",
            (project, session),
        ).fetchone()
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
        with self._db:
            # Take the write lock before reading MAX(n): two runs labelling the same project
            # at once must never both take the same next number.
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT label FROM labels WHERE project = ? AND kind = ? AND original = ?",
                (project, kind, original),
            ).fetchone()
            if row is not None:
                return str(row[0])
            (n,) = self._db.execute(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM labels WHERE project = ? AND kind = ?",
                (project, kind),
            ).fetchone()
            label = template.format(project=project, n=n)
            self._db.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?)", (project, kind, original, label, n)
            )
            return label

    def export(self, out: Path) -> int:
        """Write the mapping as CSV to ``out`` (mode 0600, atomic); return the number of rows.

        Raises:
            OSError: the file cannot be written.
        """
        rows = self._db.execute(_EXPORT).fetchall()
        write_private_csv(out, _COLUMNS, rows)
        return len(rows)


def export_mapping(mapping_path: Path, out: Path) -> int:
    """Export the mapping table at ``mapping_path`` to CSV ``out``; return the row count.

    Raises:
        InputError: there is no mapping table at ``mapping_path``.
    """
    if not mapping_path.is_file():
        raise InputError(
            f"{mapping_path}: no mapping table here; run an anonymization first "
            "or give the project's mapping path"
        )
    table = MappingTable(mapping_path)
    try:
        return table.export(out)
    finally:
        table.close()
