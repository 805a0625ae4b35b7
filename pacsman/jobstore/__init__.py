"""The job store: SQLite (stdlib) state for runs, rows, studies, series and pushes.

A *run* is one query file's rows plus one effective config (by hash): the same command run
again finds the same run and resumes it.  Runs and rows are keyed by the normalized row
values (:mod:`pacsman.jobstore._keys`), never by line numbers: a blank line or re-ordered
rows give the same run, and each row keeps its state under its new line number.  Every
change of state is one call and
one transaction, and is also appended to ``transitions`` so an operator can read what
happened.  Each series' raw and de-identified directories are recorded too, so every step
reads where its input is instead of working it out again.  Opening a store brings its schema
to :data:`SCHEMA_VERSION` (see :mod:`pacsman.jobstore._schema`).

The process working on a run records itself (pid, host, options) and beats a heartbeat every
few seconds (:meth:`JobStore.start_heartbeat`); closing the store records how the run
stopped.  ``JobStore(path, read_only=True)`` is for the operator's views (``pacsman status``,
``runs``, ``report``): it never writes the file, is safe beside a working run, and reads a
store from an older release through a migrated copy in memory.  The file is created with
mode 0600, and its missing folders 0700: it holds patient identifiers.  Any problem with the
file (not a database, read-only, a folder, disk full) is a
:class:`~pacsman.errors.JobStoreError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from pacsman.errors import EXIT_INTERRUPTED, InputError, JobStoreError, PacsmanError
from pacsman.jobstore._backend import (
    Database,
    SqliteDatabase,
    is_postgresql,
    open_sqlite,
    redacted,
)
from pacsman.jobstore._cluster_views import ClusterViews, HeadNode, NodeState, StudyPlace
from pacsman.jobstore._errors import folder_error, raise_for_file, store_error
from pacsman.jobstore._heartbeat import Heartbeat
from pacsman.jobstore._keys import row_keys, run_key
from pacsman.jobstore._metrics_views import MetricsViews
from pacsman.jobstore._pgerrors import connect_postgresql, raise_for_server
from pacsman.jobstore._schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AnonymizeSeries,
    InfoRecord,
    Lease,
    Migration,
    PushRecord,
    PushSeries,
    RetrieveSeries,
    RowOutcome,
    RowQuery,
    Run,
    RunOutcome,
    RunRecord,
    SeriesPlace,
    SeriesProblem,
    SessionPush,
    Throughput,
    recorded_directory,
)
from pacsman.jobstore._views import OperatorViews, _count, _state
from pacsman.jobstore.claims import StudyClaims, fence, held_clause
from pacsman.jobstore.jobs import JobQueue
from pacsman.layout import open_private, private_directory
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AnonymizeSeries",
    "HeadNode",
    "InfoRecord",
    "JobStore",
    "Lease",
    "Migration",
    "NodeState",
    "PushRecord",
    "PushSeries",
    "RetrieveSeries",
    "RowOutcome",
    "RowQuery",
    "Run",
    "RunOutcome",
    "RunRecord",
    "SeriesPlace",
    "SeriesProblem",
    "SessionPush",
    "StudyPlace",
    "Throughput",
    "is_postgresql",
    "recorded_directory",
    "redacted",
]

_log = structlog.get_logger("pacsman.jobstore")


#: The advisory lock key under which a PostgreSQL job store's schema is brought up to date.
_MIGRATION_LOCK = 0x70616373  # "pacs"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore(OperatorViews, JobQueue, StudyClaims, MetricsViews, ClusterViews):
    """SQLite-backed state.  Use as a context manager; one per process, shared by its threads."""

    def __init__(self, location: Path | str, *, read_only: bool = False) -> None:
        """Open (or create) the store at ``location`` and bring its schema up to date.

        ``location`` is a SQLite file, or a ``postgresql://user@host/db`` URL (the password
        from ``PGPASSWORD``, ``~/.pgpass`` or ``PGPASSFILE``, never the URL).  With
        ``read_only``, a SQLite file must exist and is never written: a store at an older
        schema is read through a copy in memory, brought up to date there.

        Raises:
            JobStoreError: the store cannot be used; the message says why and how to fix it.
            InputError: the store was written by a newer pacsman.
        """
        self._lock = threading.RLock()
        self._heartbeat: tuple[Run, Heartbeat] | None = None
        #: The SQLite file or PostgreSQL URL the store was opened with.
        self.location: Path | str = location
        if is_postgresql(location):
            self.path = Path()
            self.where = redacted(str(location))
            self._db: Database = connect_postgresql(str(location))
            self._open_postgresql(read_only=read_only)
            return
        path = Path(location)
        self.path = path
        self.where = str(path)
        if path.is_dir():
            raise folder_error(path)
        if read_only:
            self._db = SqliteDatabase(self._open_read_only(), self.where)
            return
        try:
            private_directory(path.parent)
            if not path.exists():
                os.close(open_private(path, os.O_CREAT | os.O_WRONLY))
            self._db = SqliteDatabase(open_sqlite(path), self.where)
        except (OSError, sqlite3.Error) as exc:
            raise store_error(path, exc) from exc
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    def _open_postgresql(self, *, read_only: bool) -> None:
        try:
            if read_only:
                found = _schema_version(self._db)
                if found == 0:
                    raise JobStoreError(
                        f"job store {self.where}: holds no job store yet; run pacsman (or "
                        "pacsman serve) with this 'jobstore' once to create it"
                    )
                self._check_not_newer(found)
            else:
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise_for_file(self.path, exc)
            raise
        self._migrate()

    def _migrate(self, *, log: bool = True) -> None:
        """Apply every migration newer than the store, all in one transaction.

        Raises:
            InputError: the store was written by a newer pacsman.
        """
        with self._tx() as db:
            if db.kind == "postgresql":  # nodes starting together migrate one at a time
                db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            found = _schema_version(db)
            self._check_not_newer(found)
            todo = [m for m in MIGRATIONS if m.version > found]
            for migration in todo:
                for statement in migration.statements:
                    db.execute(statement)
            if todo:
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        if todo and found and log:
            _log.info("jobstore_migrated", from_version=found, to_version=SCHEMA_VERSION)

    def _check_not_newer(self, found: int) -> None:
        """Raises: InputError: schema version ``found`` is newer than this pacsman knows."""
        if found > SCHEMA_VERSION:
            raise InputError(
                f"job store {self.where}: schema version {found} was written by a newer "
                f"pacsman (this one knows up to {SCHEMA_VERSION}); upgrade pacsman, or set "
                "'jobstore' in the config to another file"
            )

    def _open_read_only(self) -> sqlite3.Connection:
        """The file opened read-only; a migrated copy in memory when its schema is older.

        Raises:
            JobStoreError: there is no such file, or it cannot be read.
            InputError: the store was written by a newer pacsman.
        """
        if not self.path.exists():
            raise JobStoreError(
                f"job store {self.path}: no such file; give the job store the run used "
                "(--jobstore PATH, or 'jobstore' in the config given with --config)"
            )
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            source = open_sqlite(uri, uri=True)
            found = _schema_version(SqliteDatabase(source, self.where))
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        if found == SCHEMA_VERSION:
            return source
        try:
            self._check_not_newer(found)
            copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            source.backup(copy)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        finally:
            source.close()
        self._db = SqliteDatabase(copy, self.where)
        self._migrate(log=False)
        return copy

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record how the run being worked on stopped (see :meth:`start_heartbeat`); close."""
        try:
            if self._heartbeat is not None:
                self._record_outcome(*_outcome(exc))
        finally:
            self.close()

    def close(self) -> None:
        """Stop the heartbeat, if any, and close the database connection."""
        if self._heartbeat is not None:
            self._heartbeat[1].stop()
            self._heartbeat = None
        self._db.close()

    # -- who works on a run, and how it stopped ---------------------------------------------

    def start_heartbeat(self, run: Run, *, options_json: str, interval: float) -> None:
        """Record that this process works on ``run`` now, with ``options_json``, and beat
        ``heartbeat_at`` every ``interval`` seconds from a daemon thread.

        Leaving the ``with`` block of the store records how the run stopped: FINISHED, or
        INTERRUPTED (Ctrl-C), or STOPPED with the error.
        """
        pid, host = os.getpid(), socket.gethostname()
        with self._tx() as db:
            now = _now()
            db.execute(
                "UPDATE runs SET started_at = ?, heartbeat_at = ?, pid = ?, host = ?, "
                "options_json = ?, stopped_at = '', outcome = '', outcome_detail = '' "
                "WHERE id = ?",
                (now, now, pid, host, options_json, run.id),
            )
            self._transition(db, run.id, "run", str(run.id), "STARTED", f"pid {pid} on {host}")
        self._heartbeat = (run, Heartbeat(lambda: self._beat(run), interval).start())

    def _beat(self, run: Run) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (_now(), run.id))

    def _record_outcome(self, outcome: RunOutcome, detail: str) -> None:
        """Stop the heartbeat and record ``outcome``; a store that fails now is only logged
        (the error that stopped the run is the one to report)."""
        assert self._heartbeat is not None
        run, heartbeat = self._heartbeat
        heartbeat.stop()
        self._heartbeat = None
        try:
            with self._tx() as db:
                now = _now()
                db.execute(
                    "UPDATE runs SET heartbeat_at = ?, stopped_at = ?, outcome = ?, "
                    "outcome_detail = ? WHERE id = ?",
                    (now, now, outcome.value, detail, run.id),
                )
                self._transition(db, run.id, "run", str(run.id), outcome.value, detail)
        except (PacsmanError, self._db.errors[0]) as exc:
            _log.warning("run_outcome_not_recorded", outcome=outcome.value, problem=str(exc))

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One SELECT, under the same lock as the writers (threads share this connection).

        Raises:
            JobStoreError: the store cannot be read.
        """
        with self._lock:
            try:
                return [tuple(r) for r in self._db.execute(sql, params).fetchall()]
            except self._db.errors as exc:
                self._raise_for(exc)
                raise

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        """One transaction; a problem with the store in it becomes a :class:`JobStoreError`."""
        with self._lock:
            try:
                self._db.begin()
                try:
                    yield self._db
                except BaseException:
                    self._db.rollback()  # SQLite may have rolled back already
                    raise
                self._db.commit()
            except self._db.errors as exc:
                self._raise_for(exc)
                raise

    def _raise_for(self, exc: Exception) -> None:
        """Raise the :class:`JobStoreError` for a driver error about the store itself."""
        if isinstance(exc, sqlite3.Error):
            raise_for_file(self.path, exc)
        else:
            raise_for_server(self.where, exc)

    def _transition(
        self, db: Database, run_id: int, kind: str, key: str, state: str, detail: str
    ) -> None:
        db.execute(
            "INSERT INTO transitions(run_id, kind, key, state, detail, at) VALUES (?,?,?,?,?,?)",
            (run_id, kind, key, state, detail, _now()),
        )

    def run_by_id(self, run_id: int) -> Run:
        """An existing run, for a helper process that works on it.

        Raises:
            KeyError: no such run.
        """
        found = self._read("SELECT id, queryfile, created_at FROM runs WHERE id = ?", (run_id,))
        if not found:
            raise KeyError(f"run {run_id} is not in the job store {self.where}")
        run_id_, queryfile, created = found[0]
        return Run(int(run_id_), str(queryfile), str(created), resumed=True)

    def open_run(
        self,
        queryfile: QueryFile,
        config_sha256: str,
        *,
        default_pacs: str = "",
        new_run: bool = False,
        job_id: int | None = None,
    ) -> Run:
        """Find the run for these rows and this config, or create it.

        The run key comes from the rows' values (each row's PACS node is its own, else
        ``default_pacs``): see :mod:`pacsman.jobstore._keys`.  A run recorded by a release
        before keys, for the same file bytes, is found and given its key.  With ``new_run``,
        a run found is retired (kept, never resumed) and a new one starts.  A service job
        (``job_id``) has a run of its own: the same file submitted twice is two jobs.
        """
        pairs = [(row, row.pacs or default_pacs) for row in queryfile.rows]
        key = run_key(row_keys(pairs)) + ("" if job_id is None else f"@job-{job_id}")
        with self._tx() as db:
            found = db.execute(
                "SELECT id, queryfile, created_at FROM runs WHERE config_sha256 = ? "
                "AND retired_at = '' AND queryfile_sha256 IN (?, ?) "
                "ORDER BY queryfile_sha256 = ? DESC, id LIMIT 1",
                (config_sha256, key, queryfile.sha256, key),
            ).fetchone()
            if found and new_run:
                self._retire(db, int(found[0]))
            elif found:
                db.execute("UPDATE runs SET queryfile_sha256 = ? WHERE id = ?", (key, found[0]))
                return Run(found[0], found[1], found[2], resumed=True)
            return self._create_run(db, str(queryfile.path), key, config_sha256)

    def _create_run(self, db: Database, path: str, key: str, config_sha256: str) -> Run:
        """A new run of the query file at ``path`` under run key ``key`` (in ``db``'s
        transaction), its creation logged."""
        created = _now()
        cursor = db.execute(
            "INSERT INTO runs(queryfile, queryfile_sha256, config_sha256, created_at) "
            "VALUES (?,?,?,?) RETURNING id",
            (path, key, config_sha256, created),
        )
        run_id = int(cursor.fetchone()[0])
        self._transition(db, run_id, "run", str(run_id), "CREATED", path)
        return Run(run_id, path, created, resumed=False)

    def _retire(self, db: Database, run_id: int) -> None:
        db.execute(
            "UPDATE runs SET retired_at = ?, queryfile_sha256 = queryfile_sha256 || ? WHERE id = ?",
            (_now(), f"/retired-{run_id}", run_id),
        )
        self._transition(db, run_id, "run", str(run_id), "RETIRED", "--new-run")
        _log.info("run_retired", retired_run=run_id)

    def add_rows(self, run: Run, rows: Sequence[tuple[QueryRow, str]]) -> None:
        """Record (row, PACS node name) pairs as PENDING; rows already known are kept.

        A known row is found by its key, whatever its line: when the file gained a blank
        line or its rows were re-ordered, the row (with its studies and series) takes its
        new line number.
        """
        keys = row_keys(rows)
        with self._tx() as db:
            known = db.execute("SELECT line, row_key FROM rows WHERE run_id = ?", (run.id,))
            by_key, unkeyed = {}, set()
            for line, key in known.fetchall():
                if key:
                    by_key[key] = int(line)
                else:
                    unkeyed.add(int(line))
            moves: dict[int, int] = {}
            for (row, pacs), key in zip(rows, keys, strict=True):
                line = by_key.get(key)
                if line is not None:
                    if line != row.line:
                        moves[line] = row.line
                elif row.line in unkeyed:  # recorded before keys: same file bytes, same line
                    db.execute(
                        "UPDATE rows SET row_key = ? WHERE run_id = ? AND line = ?",
                        (key, run.id, row.line),
                    )
                else:
                    self._insert_row(db, run, row, pacs, key)
            db.executemany(
                "UPDATE rows SET pacs_cell = ? WHERE run_id = ? AND row_key = ?",
                [(row.pacs or "", run.id, key) for (row, _), key in zip(rows, keys, strict=True)],
            )
            _renumber(db, run, moves)

    def _insert_row(self, db: Database, run: Run, row: QueryRow, pacs: str, key: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO rows(run_id, line, pacs, subject, session, keys_json, "
            "state, row_key) VALUES (?,?,?,?,?,?,?,?)",
            (
                run.id,
                row.line,
                pacs,
                row.subject,
                row.session,
                json.dumps(dict(row.keys), sort_keys=True),
                ItemState.PENDING.value,
                key,
            ),
        )

    def row_states(self, run: Run) -> dict[int, ItemState]:
        """The state of every row of ``run``, by line."""
        cursor = self._read("SELECT line, state FROM rows WHERE run_id = ?", (run.id,))
        return {line: ItemState(state) for line, state in cursor}

    def fail_row(self, run: Run, line: int, reason: str) -> None:
        """Mark one row FAILED with ``reason`` (no patient data in reasons)."""
        self._set_row(run, line, ItemState.FAILED, reason)

    def _set_row(self, run: Run, line: int, state: ItemState, detail: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE rows SET state = ?, detail = ? WHERE run_id = ? AND line = ?",
                (state.value, detail, run.id, line),
            )
            self._transition(db, run.id, "row", str(line), state.value, detail)

    def record_query(self, run: Run, result: RowResult) -> RowResult:
        """Store what the PACS holds for one row, claiming each series for the first row.

        Series already claimed by another row of this run are dropped from the result and
        reported in ``duplicate_of``.  Returns the de-duplicated result.
        """
        line = result.row.line
        kept: list[StudyMatch] = []
        duplicates: list[tuple[int, StudyMatch]] = []
        with self._tx() as db:
            for study in result.studies:
                fresh = [s for s in study.series if self._claim(db, run, result.pacs, line, s)]
                if fresh:
                    kept.append(_replace_series(study, fresh))
                    self._store_study(db, run, result.pacs, line, study)
                if len(fresh) < len(study.series):
                    duplicates.append((self._owner(db, run, result.pacs, study), study))
            state, detail = _row_outcome(kept, duplicates)
            db.execute(
                "UPDATE rows SET state = ?, detail = ? WHERE run_id = ? AND line = ?",
                (state.value, detail, run.id, line),
            )
            self._transition(db, run.id, "row", str(line), state.value, detail)
        return RowResult(
            row=result.row,
            pacs=result.pacs,
            studies=tuple(kept),
            duplicate_of=tuple((owner, s.study_instance_uid) for owner, s in duplicates),
        )

    def _claim(self, db: Database, run: Run, pacs: str, line: int, s: SeriesMatch) -> bool:
        owner = db.execute(
            "SELECT line FROM series WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
            (run.id, pacs, s.series_instance_uid),
        ).fetchone()
        if owner is not None:
            return bool(owner[0] == line)
        db.execute(
            "INSERT INTO series(run_id, pacs, series_instance_uid, study_instance_uid, line, "
            "series_number, modality, series_description, expected_instances, state) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                run.id,
                pacs,
                s.series_instance_uid,
                s.study_instance_uid,
                line,
                s.series_number,
                s.modality,
                s.series_description,
                s.expected_instances,
                ItemState.QUERIED.value,
            ),
        )
        return True

    def _owner(self, db: Database, run: Run, pacs: str, study: StudyMatch) -> int:
        row = db.execute(
            "SELECT MIN(line) FROM series WHERE run_id = ? AND pacs = ? AND study_instance_uid = ?",
            (run.id, pacs, study.study_instance_uid),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _store_study(self, db: Database, run: Run, pacs: str, line: int, study: StudyMatch) -> None:
        db.execute(
            "INSERT INTO studies(run_id, pacs, study_instance_uid, line, patient_id, "
            "study_date, study_time, accession_number, study_description) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (run_id, pacs, study_instance_uid, line) "
            "DO UPDATE SET patient_id = excluded.patient_id, study_date = excluded.study_date, "
            "study_time = excluded.study_time, accession_number = excluded.accession_number, "
            "study_description = excluded.study_description",
            (
                run.id,
                pacs,
                study.study_instance_uid,
                line,
                study.patient_id,
                study.study_date,
                study.study_time,
                study.accession_number,
                study.study_description,
            ),
        )

    def _series(
        self, run: Run, columns: str, where: str = "", params: Sequence[object] = ()
    ) -> list[tuple[Any, ...]]:
        """``columns`` of every series of ``run`` (aliases se, st, r), in query-file order;
        of the studies its lease holds, when it has one."""
        held, held_params = held_clause(run, "se")
        return self._read(
            f"SELECT {columns} "
            "FROM series se JOIN studies st ON st.run_id = se.run_id AND st.pacs = se.pacs "
            "AND st.study_instance_uid = se.study_instance_uid AND st.line = se.line "
            "JOIN rows r ON r.run_id = se.run_id AND r.line = se.line "
            f"WHERE se.run_id = ? {where}{held} "
            "ORDER BY se.line, st.study_date, se.study_instance_uid, "
            "CAST(se.series_number AS INTEGER), se.series_instance_uid",
            (run.id, *params, *held_params),
        )

    def count_series(self, run: Run) -> int:
        """How many series ``run`` selected."""
        found = self._read("SELECT COUNT(*) FROM series WHERE run_id = ?", (run.id,))
        return int(found[0][0])

    def series_places(self, run: Run) -> list[SeriesPlace]:
        """Every series of ``run`` with what decides its directories, in query-file order."""
        rows = self._series(
            run,
            "se.pacs, se.series_instance_uid, se.study_instance_uid, se.state, st.patient_id, "
            "st.study_date, COALESCE(r.subject, ''), COALESCE(r.session, ''), "
            "se.series_number, se.series_description, se.raw_directory, se.anonymization, "
            "se.xnat_subject, se.xnat_session, se.anonymized_directory, se.expected_instances",
        )
        return [
            SeriesPlace(
                pacs=str(r[0]),
                series_instance_uid=str(r[1]),
                study_instance_uid=str(r[2]),
                state=ItemState(r[3]),
                patient_id=str(r[4]),
                study_date=str(r[5]),
                subject=str(r[6]),
                session=str(r[7]),
                series_number=str(r[8]),
                series_description=str(r[9]),
                raw_directory=_path(r[10]),
                anonymization=_state(r[11]),
                xnat_subject=str(r[12]),
                xnat_session=str(r[13]),
                anonymized_directory=_path(r[14]),
                expected_instances=_count(r[15]),
            )
            for r in rows
        ]

    def placed_before(self, placed: Sequence[tuple[SeriesPlace, Path]]) -> set[str]:
        """The SeriesInstanceUIDs of ``placed`` that a run of this job store recorded in the
        same folder before: another run, or this one before a takeover cleared it.

        Files found there were put there by a run this job store knows, not by something
        it lost.
        """
        known = set()
        for series, directory in placed:
            found = self._read(
                "SELECT 1 FROM series_folders WHERE series_instance_uid = ? AND pacs = ? "
                "AND directory = ? LIMIT 1",
                (series.series_instance_uid, series.pacs, str(directory)),
            )
            if found:
                known.add(series.series_instance_uid)
        return known

    def record_adopted(self, run: Run, adopted: Sequence[tuple[SeriesPlace, int, str]]) -> None:
        """Record series found complete on disk as COMPLETE: (series, instances, detail)."""
        with self._tx() as db:
            for series, received, detail in adopted:
                fence(db, run, series.study_instance_uid, series.pacs)
                db.execute(
                    "UPDATE series SET state = ?, detail = ?, received_instances = ? "
                    "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
                    (
                        ItemState.COMPLETE.value,
                        detail,
                        received,
                        run.id,
                        series.pacs,
                        series.series_instance_uid,
                    ),
                )
                uid = series.series_instance_uid
                self._transition(db, run.id, "series", uid, ItemState.COMPLETE.value, detail)

    def series_for_retrieve(self, run: Run) -> list[RetrieveSeries]:
        """Every series of ``run`` (settled or not: a study is complete when all are)."""
        rows = self._series(
            run,
            "se.pacs, se.line, se.study_instance_uid, se.series_instance_uid, "
            "se.series_number, st.patient_id, se.expected_instances, se.state, se.raw_directory",
        )
        return [
            RetrieveSeries(
                pacs=str(r[0]),
                line=int(r[1]),
                study_instance_uid=str(r[2]),
                series_instance_uid=str(r[3]),
                series_number=str(r[4]),
                patient_id=str(r[5]),
                expected_instances=_count(r[6]),
                state=ItemState(r[7]),
                raw_directory=_path(r[8]),
            )
            for r in rows
        ]

    def series_for_anonymize(self, run: Run) -> list[AnonymizeSeries]:
        """The COMPLETE series of ``run`` not yet de-identified in full."""
        rows = self._series(
            run,
            "se.pacs, se.line, se.study_instance_uid, se.series_instance_uid, "
            "se.series_number, st.patient_id, COALESCE(r.subject, ''), "
            "COALESCE(r.session, ''), se.raw_directory",
            "AND se.state = ? AND se.anonymization != ?",
            (ItemState.COMPLETE.value, ItemState.ANONYMIZED.value),
        )
        return [
            AnonymizeSeries(
                pacs=str(r[0]),
                line=int(r[1]),
                study_instance_uid=str(r[2]),
                series_instance_uid=str(r[3]),
                series_number=str(r[4]),
                patient_id=str(r[5]),
                subject=str(r[6]),
                session=str(r[7]),
                raw_directory=_path(r[8]),
            )
            for r in rows
        ]

    def series_for_push(self, run: Run) -> list[PushSeries]:
        """Every series of ``run``: a study is pushed only when all of its series are ready."""
        rows = self._series(
            run,
            "se.line, se.study_instance_uid, se.series_instance_uid, se.state, "
            "se.anonymization, se.xnat_subject, se.xnat_session, se.anonymized_instances, "
            "se.anonymized_directory",
        )
        return [
            PushSeries(
                line=int(r[0]),
                study_instance_uid=str(r[1]),
                series_instance_uid=str(r[2]),
                state=ItemState(r[3]),
                anonymization=_state(r[4]),
                xnat_subject=str(r[5]),
                xnat_session=str(r[6]),
                anonymized_instances=_count(r[7]),
                anonymized_directory=_path(r[8]),
            )
            for r in rows
        ]

    def record_directories(
        self,
        run: Run,
        *,
        raw: Sequence[tuple[SeriesPlace, Path]] = (),
        anonymized: Sequence[tuple[SeriesPlace, Path]] = (),
    ) -> None:
        """Record where series are received (``raw``) and de-identified, in one transaction."""
        with self._tx() as db:
            for column, placed in (("raw_directory", raw), ("anonymized_directory", anonymized)):
                for series, directory in placed:
                    fence(db, run, series.study_instance_uid, series.pacs)
                    db.execute(
                        f"UPDATE series SET {column} = ? "
                        "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
                        (str(directory), run.id, series.pacs, series.series_instance_uid),
                    )
            for series, directory in raw:
                db.execute(
                    "INSERT OR IGNORE INTO series_folders(run_id, pacs, series_instance_uid, "
                    "directory) VALUES (?,?,?,?)",
                    (run.id, series.pacs, series.series_instance_uid, str(directory)),
                )

    def update_series(
        self,
        run: Run,
        series: RetrieveSeries,
        state: ItemState,
        *,
        received: int | None = None,
        detail: str = "",
        reported: tuple[int | None, int | None] = (None, None),
        new_pass: bool = False,
    ) -> None:
        """Record one series' retrieve state (and counts) in one transaction.

        Raises:
            LeaseLost: the run's lease no longer holds the series' study.
        """
        with self._tx() as db:
            fence(db, run, series.study_instance_uid, series.pacs)
            db.execute(
                "UPDATE series SET state = ?, detail = ?, "
                "received_instances = COALESCE(?, received_instances), "
                "reported_completed = COALESCE(?, reported_completed), "
                "reported_failed = COALESCE(?, reported_failed), passes = passes + ? "
                "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
                (
                    state.value,
                    detail,
                    received,
                    *reported,
                    int(new_pass),
                    run.id,
                    series.pacs,
                    series.series_instance_uid,
                ),
            )
            self._transition(db, run.id, "series", series.series_instance_uid, state.value, detail)

    def record_anonymization(
        self,
        run: Run,
        series: AnonymizeSeries,
        state: ItemState,
        *,
        written: int,
        detail: str,
        experiment: tuple[str, str],
        directory: Path,
    ) -> None:
        """Record one series' de-identification: outcome, XNAT subject and session labels, and
        the directory its de-identified files are in.

        Raises:
            LeaseLost: the run's lease no longer holds the series' study.
        """
        with self._tx() as db:
            fence(db, run, series.study_instance_uid, series.pacs)
            db.execute(
                "UPDATE series SET anonymization = ?, anonymized_instances = ?, "
                "anonymization_detail = ?, xnat_subject = ?, xnat_session = ?, "
                "anonymized_directory = ? "
                "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
                (
                    state.value,
                    written,
                    detail,
                    *experiment,
                    str(directory),
                    run.id,
                    series.pacs,
                    series.series_instance_uid,
                ),
            )
            self._transition(
                db, run.id, "anonymization", series.series_instance_uid, state.value, detail
            )

    def push_states(self, run: Run, target: str) -> dict[tuple[str, str], PushRecord]:
        """(subject, session label) -> the push of that experiment to ``target``."""
        cursor = self._read(
            "SELECT subject, session, state, files_on_target FROM pushes "
            "WHERE run_id = ? AND target = ?",
            (run.id, target),
        )
        return {
            (subject, session): PushRecord(ItemState(state), int(files))
            for subject, session, state, files in cursor
        }

    def record_push(
        self,
        run: Run,
        target: str,
        experiment: tuple[str, str],
        state: ItemState,
        *,
        uri: str = "",
        files_on_target: int = 0,
        detail: str = "",
    ) -> None:
        """Record one experiment's push outcome (DONE or FAILED) in one transaction.

        Raises:
            LeaseLost: the run's lease no longer holds the experiment's study.
        """
        with self._tx() as db:
            if run.lease is not None:
                fence(db, run, _study_of(db, run, experiment))
            db.execute(
                "INSERT INTO pushes(run_id, target, subject, session, state, uri, "
                "files_on_target, detail) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT (run_id, target, subject, session) DO UPDATE SET "
                "state = excluded.state, uri = excluded.uri, "
                "files_on_target = excluded.files_on_target, detail = excluded.detail",
                (run.id, target, *experiment, state.value, uri, files_on_target, detail),
            )
            self._transition(db, run.id, "push", "/".join(experiment), state.value, detail)

    def info_records(self, run: Run | RunRecord) -> list[InfoRecord]:
        """Every row of ``run`` with its series (or alone, when it selected none), in order."""
        rows = self._read(
            "SELECT line, pacs, subject, session, state, detail, keys_json FROM rows "
            "WHERE run_id = ? ORDER BY line",
            (run.id,),
        )
        by_line: defaultdict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for found in self._series_records(run):
            by_line[int(found[0])].append(found)
        records: list[InfoRecord] = []
        for line, pacs, subject, session, state, detail, keys in rows:
            query = tuple(sorted((str(k), str(v)) for k, v in json.loads(keys).items()))
            base = InfoRecord(
                line, pacs, subject or "", session or "", ItemState(state), detail, query=query
            )
            series = [_info_record(base, r) for r in by_line.get(int(line), ())]
            records.extend(series or [base])
        return records

    def _series_records(self, run: Run | RunRecord) -> list[tuple[Any, ...]]:
        """Every series of ``run`` with its study and push, one query, in info-CSV order."""
        return self._read(
            "SELECT se.line, st.study_instance_uid, st.patient_id, st.study_date, "
            "st.study_time, st.accession_number, st.study_description, se.series_instance_uid, "
            "se.series_number, se.modality, se.series_description, se.expected_instances, "
            "se.received_instances, se.state, se.detail, se.anonymized_instances, "
            "se.anonymization, COALESCE(pu.state, ''), COALESCE(pu.uri, ''), "
            "se.anonymization_detail, COALESCE(pu.detail, ''), COALESCE(pu.target, ''), "
            "se.xnat_subject, se.xnat_session "
            "FROM series se JOIN studies st ON st.run_id = se.run_id AND st.pacs = se.pacs "
            "AND st.study_instance_uid = se.study_instance_uid AND st.line = se.line "
            "LEFT JOIN pushes pu ON pu.run_id = se.run_id AND pu.subject = se.xnat_subject "
            "AND pu.session = se.xnat_session AND se.xnat_session != '' "
            "WHERE se.run_id = ? "
            "ORDER BY se.line, st.study_date, st.study_time, st.study_instance_uid, "
            "CAST(se.series_number AS INTEGER), se.series_instance_uid",
            (run.id,),
        )


def _renumber(db: Database, run: Run, moves: dict[int, int]) -> None:
    """Give rows (and their studies and series) their new line numbers, old -> new.

    Two steps (first to ``-new``, then to ``new``), so no line is held twice on the way.
    """
    if not moves:
        return
    for table in ("rows", "studies", "series"):
        for old, new in moves.items():
            db.execute(
                f"UPDATE {table} SET line = ? WHERE run_id = ? AND line = ?", (-new, run.id, old)
            )
        db.execute(f"UPDATE {table} SET line = -line WHERE run_id = ? AND line < 0", (run.id,))
    _log.info("rows_renumbered", rows=len(moves))


def _study_of(db: Database, run: Run, experiment: tuple[str, str]) -> str:
    """The StudyInstanceUID of an experiment (XNAT subject and session labels) of ``run``."""
    found = db.execute(
        "SELECT study_instance_uid FROM series WHERE run_id = ? AND xnat_subject = ? "
        "AND xnat_session = ? LIMIT 1",
        (run.id, *experiment),
    ).fetchone()
    return str(found[0]) if found else ""


def _schema_version(db: Database) -> int:
    """The version a store is at: 0 for a new (empty) store."""
    if not db.has_table("meta"):
        return 0
    found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(found[0]) if found else 0


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def _info_record(base: InfoRecord, r: Sequence[object]) -> InfoRecord:
    """``base`` (a row) with one series of :meth:`JobStore._series_records`."""
    study = StudyMatch(str(r[1]), str(r[2]), "", str(r[3]), str(r[4]), str(r[5]), str(r[6]))
    return InfoRecord(
        line=base.line,
        pacs=base.pacs,
        subject=base.subject,
        session=base.session,
        row_state=base.row_state,
        row_detail=base.row_detail,
        study=study,
        series_instance_uid=str(r[7]),
        series_number=str(r[8]),
        modality=str(r[9]),
        series_description=str(r[10]),
        expected_instances=_count(r[11]),
        received_instances=_count(r[12]),
        series_state=ItemState(str(r[13])),
        series_detail=str(r[14]),
        anonymized_instances=_count(r[15]),
        anonymization=_state(r[16]),
        push=_state(r[17]),
        push_uri=str(r[18]),
        anonymization_detail=str(r[19]),
        push_detail=str(r[20]),
        push_target=str(r[21]),
        xnat_subject=str(r[22]),
        xnat_session=str(r[23]),
        query=base.query,
    )


def _outcome(exc: BaseException | None) -> tuple[RunOutcome, str]:
    """How a run stopped, from the exception that ended it (None: it finished)."""
    if exc is None:
        return RunOutcome.FINISHED, ""
    if isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) == EXIT_INTERRUPTED:
        return RunOutcome.INTERRUPTED, "interrupted (Ctrl-C)"
    if isinstance(exc, PacsmanError):
        return RunOutcome.STOPPED, str(exc)[:2000]
    return RunOutcome.STOPPED, f"unexpected error {type(exc).__name__}; see the log"


def _replace_series(study: StudyMatch, series: list[SeriesMatch]) -> StudyMatch:
    return replace(study, series=tuple(series))


def _row_outcome(
    kept: list[StudyMatch], duplicates: list[tuple[int, StudyMatch]]
) -> tuple[ItemState, str]:
    if kept:
        return ItemState.QUERIED, ""
    if duplicates:
        owners = sorted({owner for owner, _ in duplicates})
        lines = ", ".join(str(o) for o in owners)
        return ItemState.DUPLICATE, f"every matching series is already selected by line {lines}"
    return ItemState.NO_MATCH, "the PACS holds no study/series matching this row"
