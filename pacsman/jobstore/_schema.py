"""Job-store schema and the records it hands out (private to :mod:`pacsman.jobstore`)."""

from __future__ import annotations

from dataclasses import dataclass

from pacsman.models import ItemState, StudyMatch

SCHEMA_VERSION = 4

#: Columns added after version 1, for job stores written by an older pacsman.
MIGRATIONS = (
    ("series", "reported_completed", "INTEGER"),
    ("series", "reported_failed", "INTEGER"),
    ("series", "passes", "INTEGER NOT NULL DEFAULT 0"),
    ("series", "anonymized_instances", "INTEGER"),
    ("series", "anonymization", "TEXT NOT NULL DEFAULT ''"),
    ("series", "anonymization_detail", "TEXT NOT NULL DEFAULT ''"),
    ("series", "xnat_subject", "TEXT NOT NULL DEFAULT ''"),
    ("series", "xnat_session", "TEXT NOT NULL DEFAULT ''"),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    queryfile TEXT NOT NULL,
    queryfile_sha256 TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (queryfile_sha256, config_sha256)
);
CREATE TABLE IF NOT EXISTS rows (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    line INTEGER NOT NULL,
    pacs TEXT NOT NULL,
    subject TEXT,
    session TEXT,
    keys_json TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, line)
);
CREATE TABLE IF NOT EXISTS studies (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    pacs TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    line INTEGER NOT NULL,
    patient_id TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    study_description TEXT NOT NULL,
    PRIMARY KEY (run_id, pacs, study_instance_uid, line)
);
CREATE TABLE IF NOT EXISTS series (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    pacs TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    line INTEGER NOT NULL,
    series_number TEXT NOT NULL,
    modality TEXT NOT NULL,
    series_description TEXT NOT NULL,
    expected_instances INTEGER,
    received_instances INTEGER,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    reported_completed INTEGER,
    reported_failed INTEGER,
    passes INTEGER NOT NULL DEFAULT 0,
    anonymized_instances INTEGER,
    anonymization TEXT NOT NULL DEFAULT '',
    anonymization_detail TEXT NOT NULL DEFAULT '',
    xnat_subject TEXT NOT NULL DEFAULT '',
    xnat_session TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, pacs, series_instance_uid)
);
CREATE TABLE IF NOT EXISTS pushes (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    target TEXT NOT NULL,
    subject TEXT NOT NULL,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    uri TEXT NOT NULL DEFAULT '',
    files_on_target INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, target, subject, session)
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Run:
    """One run: a query file plus a config, found again by their hashes."""

    id: int
    queryfile: str
    created_at: str
    resumed: bool


@dataclass(frozen=True)
class InfoRecord:
    """One line of the ``--info`` CSV: a series, or a row that selected none."""

    line: int
    pacs: str
    subject: str
    session: str
    row_state: ItemState
    row_detail: str
    study: StudyMatch | None = None
    series_instance_uid: str = ""
    series_number: str = ""
    modality: str = ""
    series_description: str = ""
    expected_instances: int | None = None
    received_instances: int | None = None
    series_state: ItemState | None = None
    series_detail: str = ""
    anonymized_instances: int | None = None
    anonymization: str = ""
    push: str = ""
    push_uri: str = ""


@dataclass(frozen=True)
class SeriesTask:
    """One series to retrieve, with what the pipeline needs to place and verify it."""

    pacs: str
    line: int
    study_instance_uid: str
    series_instance_uid: str
    series_number: str
    series_description: str
    expected_instances: int | None
    patient_id: str
    study_date: str
    subject: str
    session: str
    state: ItemState
    passes: int
    anonymization: str = ""
    xnat_subject: str = ""
    xnat_session: str = ""
    anonymized_instances: int | None = None
