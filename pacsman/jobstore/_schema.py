"""Job-store schema, its migrations, and the records it hands out (private to the package).

The schema is an ordered list of :class:`Migration`: a store records the version it is at
(``meta.schema_version``) and, when opened, gets every later migration applied in one
transaction.  Statements are plain SQL that SQLite and PostgreSQL both accept, so a later
backend replays the same list.  Versions 2 and 3 were never released: the release that added
the retrieve verdicts, de-identification and pushes recorded version 4.

Since version 6, ``runs.queryfile_sha256`` holds the run key (the hash of the normalized
rows, :mod:`pacsman.jobstore._keys`), not the hash of the file's bytes; a run recorded by
an earlier release is found by its bytes once more and then given its run key.  A run
started over with ``--new-run`` is retired: ``retired_at`` is set and ``/retired-<id>`` is
appended to its key, so it is kept but never resumed.

Since version 7, each invocation of a run records who works on it and since when
(``started_at``, ``pid``, ``host``, the options asked for), beats ``heartbeat_at`` every few
seconds while it works, and records how it stopped (``outcome``: FINISHED, INTERRUPTED or
STOPPED, with ``outcome_detail``); ``rows.pacs_cell`` keeps the row's own ``Pacs`` cell
(NULL for rows recorded before), so the rows can be written out again as a query file.

Since version 9, head nodes share the work of a job by study: ``study_claims`` holds one row
per study of a job's run, OPEN, CLAIMED by ``owner_node`` until ``lease_expires_at`` (epoch
seconds, the database's clock) under lease ``generation``, or settled DONE or FAILED;
``holder_node`` is the node whose disk holds its retrieved files; ``first_line`` is the
first query-file line that selected it (claims follow query-file order, by index).  ``jobs``
gains the lease of the node that coordinates the job and ``studies_open`` (its studies may be
claimed).

Since version 11, ``series_folders`` keeps every folder a run recorded for each series, even
after a takeover cleared ``series.raw_directory``: files there are the run's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pacsman.errors import FatalError
from pacsman.models import ItemState, StudyMatch


@dataclass(frozen=True)
class Migration:
    """The statements that take a job store from the version before to ``version``."""

    version: int
    summary: str
    statements: tuple[str, ...]


_VERSION_1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    queryfile TEXT NOT NULL,
    queryfile_sha256 TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (queryfile_sha256, config_sha256)
)""",
    """CREATE TABLE IF NOT EXISTS rows (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    line INTEGER NOT NULL,
    pacs TEXT NOT NULL,
    subject TEXT,
    session TEXT,
    keys_json TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, line)
)""",
    """CREATE TABLE IF NOT EXISTS studies (
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
)""",
    """CREATE TABLE IF NOT EXISTS series (
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
    PRIMARY KEY (run_id, pacs, series_instance_uid)
)""",
    """CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
)""",
)

_VERSION_4 = (
    "ALTER TABLE series ADD COLUMN reported_completed INTEGER",
    "ALTER TABLE series ADD COLUMN reported_failed INTEGER",
    "ALTER TABLE series ADD COLUMN passes INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE series ADD COLUMN anonymized_instances INTEGER",
    "ALTER TABLE series ADD COLUMN anonymization TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN anonymization_detail TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN xnat_subject TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN xnat_session TEXT NOT NULL DEFAULT ''",
    """CREATE TABLE IF NOT EXISTS pushes (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    target TEXT NOT NULL,
    subject TEXT NOT NULL,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    uri TEXT NOT NULL DEFAULT '',
    files_on_target INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, target, subject, session)
)""",
)

_VERSION_5 = (
    "ALTER TABLE series ADD COLUMN raw_directory TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN anonymized_directory TEXT NOT NULL DEFAULT ''",
)

_VERSION_6 = (
    "ALTER TABLE runs ADD COLUMN retired_at TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE rows ADD COLUMN row_key TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS rows_by_key ON rows(run_id, row_key)",
    "CREATE INDEX IF NOT EXISTS series_by_uid ON series(series_instance_uid)",
)

_VERSION_7 = (
    "ALTER TABLE runs ADD COLUMN started_at TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN heartbeat_at TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN pid INTEGER",
    "ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN options_json TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN stopped_at TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN outcome TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN outcome_detail TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE rows ADD COLUMN pacs_cell TEXT",
    "CREATE INDEX IF NOT EXISTS transitions_by_run ON transitions(run_id, kind, at)",
)

_VERSION_8 = (
    """CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    options_json TEXT NOT NULL,
    queryfile_name TEXT NOT NULL,
    queryfile BLOB NOT NULL,
    source TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    started_at TEXT NOT NULL DEFAULT '',
    finished_at TEXT NOT NULL DEFAULT '',
    owner_node TEXT NOT NULL DEFAULT '',
    run_id INTEGER,
    requested TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, priority, id)",
    """CREATE TABLE IF NOT EXISTS job_transitions (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS service_nodes (
    node_name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    http_url TEXT NOT NULL DEFAULT '',
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT ''
)""",
)

_VERSION_9 = (
    "ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN studies_open INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE IF NOT EXISTS study_claims (
    run_id INTEGER NOT NULL,
    pacs TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    owner_node TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    holder_node TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT '',
    first_line INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, pacs, study_instance_uid)
)""",
    "CREATE INDEX IF NOT EXISTS study_claims_by_job ON study_claims(job_id, state, first_line)",
    "ALTER TABLE service_nodes ADD COLUMN ae_title TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE service_nodes ADD COLUMN scp_port INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE service_nodes ADD COLUMN backend TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE IF NOT EXISTS pacs_pace ("
    "pacs TEXT PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL)",
)

#: Version 10, part 1: studies that XNAT's own DICOM Query-Retrieve (DQR) pulls from a PACS
#: (``pacsman dqr``); one row per study of a dqr run, with its XNAT request and verdict
#: (:mod:`pacsman.jobstore.dqr`): labels, the expected series as JSON, the state
#: (``DqrState``), XNAT's request id and last status, when that status was first seen and
#: when the next attempt is due (epoch seconds), attempts, the reason, when it changed, and
#: the key of its query row (its line follows the row's when the file is renumbered).
_VERSION_10_DQR: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS dqr_studies (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    study_instance_uid TEXT NOT NULL,
    line INTEGER NOT NULL,
    subject TEXT NOT NULL,
    session TEXT NOT NULL,
    accession_number TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    expected_json TEXT NOT NULL DEFAULT '[]',
    counts_verified INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    request_id BIGINT,
    request_status TEXT NOT NULL DEFAULT '',
    status_since DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    files INTEGER,
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT '',
    row_key TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, study_instance_uid)
)""",
    "CREATE INDEX IF NOT EXISTS dqr_studies_by_line ON dqr_studies(run_id, line)",
)

#: Version 10, part 2: each series' NIfTI conversion (dcm2niix) and its push
#: (:mod:`pacsman.jobstore.nifti`): the outcome (converted, skipped, failed, quarantined; ''
#: not yet), its reason, the folder, the dcm2niix version and the files written; then the
#: upload of those files to the scan's NIFTI resource on XNAT (DONE, FAILED; '' not yet).
_VERSION_10_NIFTI: tuple[str, ...] = (
    "ALTER TABLE series ADD COLUMN nifti TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN nifti_detail TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN nifti_directory TEXT",
    "ALTER TABLE series ADD COLUMN nifti_tool TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN nifti_files INTEGER",
    "ALTER TABLE series ADD COLUMN nifti_push TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE series ADD COLUMN nifti_push_detail TEXT NOT NULL DEFAULT ''",
)

#: Version 11: every folder a series was ever received in, for the run that put it there.
#: A study taken over by another head node gets its ``raw_directory`` cleared (it is
#: retrieved again there); when a node later takes it back, the files its earlier attempt
#: left in its own folder are the run's, not files the job store lost.  Filled from
#: ``series.raw_directory`` for stores recorded before.
_VERSION_11 = (
    """CREATE TABLE IF NOT EXISTS series_folders (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    pacs TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    directory TEXT NOT NULL,
    PRIMARY KEY (run_id, pacs, series_instance_uid, directory)
)""",
    "INSERT INTO series_folders(run_id, pacs, series_instance_uid, directory) "
    "SELECT run_id, pacs, series_instance_uid, raw_directory FROM series "
    "WHERE raw_directory != ''",
)

#: Every schema change, oldest first.  Append only: a released migration never changes.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, query rows, studies, series and the transition log", _VERSION_1),
    Migration(4, "retrieve verdicts, de-identification outcomes and pushes", _VERSION_4),
    Migration(5, "each series' raw and de-identified directory", _VERSION_5),
    Migration(6, "run and row keys from the normalized rows; retired runs", _VERSION_6),
    Migration(7, "heartbeat, process and outcome of runs; each row's Pacs cell", _VERSION_7),
    Migration(8, "jobs (the service's queue), their transitions, and service nodes", _VERSION_8),
    Migration(9, "leases: jobs and studies claimed by head nodes, with generations", _VERSION_9),
    Migration(10, "XNAT DQR studies; NIfTI conversions", _VERSION_10_DQR + _VERSION_10_NIFTI),
    Migration(11, "every folder each series was received in", _VERSION_11),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class Lease:
    """Studies one head node claimed in one go: every claim made together shares the
    ``generation`` (a number the store never hands out twice), which fences the node's
    writes: once another node has taken a study over, writes under the old generation are
    refused (:class:`~pacsman.errors.LeaseLost`)."""

    node: str
    generation: int
    studies: int = 0


@dataclass(frozen=True)
class Run:
    """One run: a query file plus a config, found again by their hashes.

    With a ``lease``, the run is seen through it: only the series of the studies that lease
    holds (still unexpired) are read, and writes to others are refused."""

    id: int
    queryfile: str
    created_at: str
    resumed: bool
    lease: Lease | None = None


class RunOutcome(StrEnum):
    """How the last invocation of a run stopped (none while it works, or when it was killed)."""

    #: Every step ran to its end (rows may still need attention).
    FINISHED = "FINISHED"
    #: Ctrl-C (SIGINT): running the same command again resumes it.
    INTERRUPTED = "INTERRUPTED"
    #: An error stopped it (``outcome_detail`` says which); fix it, then run it again.
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class RunRecord:
    """One run as an operator sees it: its query file and its last invocation."""

    id: int
    queryfile: str
    created_at: str
    retired_at: str = ""
    #: When the last invocation started, beat, and stopped ('' when not recorded).
    started_at: str = ""
    heartbeat_at: str = ""
    stopped_at: str = ""
    pid: int | None = None
    host: str = ""
    #: The options asked for, as JSON (see :mod:`pacsman.pipeline.status`); '' when unknown.
    options_json: str = ""
    outcome: RunOutcome | None = None
    outcome_detail: str = ""


@dataclass(frozen=True)
class RowQuery:
    """One row as the query file gave it: its C-FIND values and labels, and its PACS node."""

    line: int
    pacs: str
    keys: Mapping[str, str]
    subject: str
    session: str
    state: ItemState
    detail: str
    #: The row's own Pacs cell ('' when empty); None when recorded before schema version 7.
    pacs_cell: str | None


@dataclass(frozen=True)
class SeriesProblem:
    """A series that failed a step: its retrieve verdict and its de-identification."""

    series_number: str
    series_instance_uid: str
    state: ItemState
    detail: str
    anonymization: ItemState | None
    anonymization_detail: str


@dataclass(frozen=True)
class SessionPush:
    """One experiment of a row, pushed (or not) to the target."""

    subject: str
    session: str
    state: ItemState
    uri: str
    detail: str


@dataclass(frozen=True)
class RowOutcome:
    """What a row's series add up to, per step, for the operator's views (status, report).

    ``steps`` counts the row's series per (retrieve state, de-identification state, push
    state of its experiment), '' where a step has not happened.
    """

    studies: int = 0
    series: int = 0
    expected_instances: int = 0
    received_instances: int = 0
    steps: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: De-identified experiments with no push recorded on the target.
    sessions_not_pushed: int = 0
    problems: tuple[SeriesProblem, ...] = ()
    pushes: tuple[SessionPush, ...] = ()

    def count(self, *, retrieve: str = "*", deidentify: str = "*", push: str = "*") -> int:
        """Series in these states ('*': any)."""
        wanted = (retrieve, deidentify, push)
        return sum(
            n
            for key, n in self.steps.items()
            if all(w in ("*", k) for w, k in zip(wanted, key, strict=True))
        )


@dataclass(frozen=True)
class Throughput:
    """What an invocation settled since it started: for rates and ETAs."""

    #: Series whose retrieval ended (COMPLETE, INCOMPLETE, FAILED), and their instances.
    rows_queried: int = 0
    series_retrieved: int = 0
    instances_received: int = 0
    series_deidentified: int = 0
    sessions_pushed: int = 0
    #: When the last of each kind (row, series, anonymization, push) was settled.
    last_at: Mapping[str, str] = field(default_factory=dict)


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
    anonymization: ItemState | None = None
    push: ItemState | None = None
    push_uri: str = ""
    anonymization_detail: str = ""
    push_detail: str = ""
    push_target: str = ""
    xnat_subject: str = ""
    xnat_session: str = ""
    #: The row's own C-FIND keys, as the query file gave them (what was searched for).
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SeriesPlace:
    """What decides where a series is received: the row's labels, else the patient's."""

    pacs: str
    series_instance_uid: str
    study_instance_uid: str
    state: ItemState
    patient_id: str
    study_date: str
    subject: str
    session: str
    series_number: str
    series_description: str
    raw_directory: Path | None
    anonymization: ItemState | None
    xnat_subject: str
    xnat_session: str
    anonymized_directory: Path | None
    expected_instances: int | None = None


@dataclass(frozen=True)
class RetrieveSeries:
    """One series for the retrieve step: what C-MOVE/C-GET asks for, where it goes, and
    what verification compares with."""

    pacs: str
    line: int
    study_instance_uid: str
    series_instance_uid: str
    series_number: str
    patient_id: str
    expected_instances: int | None
    state: ItemState
    raw_directory: Path | None


@dataclass(frozen=True)
class AnonymizeSeries:
    """One COMPLETE series for the de-identify step: its files and the labels to give it."""

    pacs: str
    line: int
    study_instance_uid: str
    series_instance_uid: str
    series_number: str
    patient_id: str
    subject: str
    session: str
    raw_directory: Path | None


@dataclass(frozen=True)
class PushSeries:
    """One series for the push step: is it ready, under which experiment, where are its files."""

    line: int
    study_instance_uid: str
    series_instance_uid: str
    state: ItemState
    anonymization: ItemState | None
    xnat_subject: str
    xnat_session: str
    anonymized_instances: int | None
    anonymized_directory: Path | None


@dataclass(frozen=True)
class PushRecord:
    """One experiment's push on one target: its state and the files verified there."""

    state: ItemState
    files_on_target: int


def recorded_directory(directory: Path | None, series_instance_uid: str) -> Path:
    """``directory``, which the pipeline records before any step reads it.

    Raises:
        FatalError: it is not recorded (a step was started outside the pipeline).
    """
    if directory is None:
        raise FatalError(
            f"series {series_instance_uid}: its directory is not in the job store; run the "
            "same pacsman command again, which records it before any step reads it"
        )
    return directory
