"""The job store's side of ``pacsman dqr``: its runs, and one row per study XNAT pulls.

A dqr run is a row of ``runs`` like the pipeline's, found again by its query file's rows and
its config, under a run key of its own (``dqr:`` + the rows' key), so that the pipeline and
``pacsman dqr`` never resume each other's run of the same file.  Its query rows are in
``rows`` (states QUERIED, NO_MATCH, DUPLICATE, FAILED), and each study it resolved is a row
of ``dqr_studies``: its labels, the expected series (JSON), its :class:`~pacsman.dqr.DqrState`,
XNAT's request id and last status, when that status was first seen (``status_since``), its
attempts, when the next one is due (``next_attempt_at``; both epoch seconds), the files seen
in its session, the reason, and when it changed.  Every change is one transaction and, when
the state, the request, its status or the attempts changed, one line of ``transitions``
(kind ``dqr``, key the query-file line).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pacsman.dqr import DqrState, DqrStudy, ExpectedSeries
from pacsman.jobstore import JobStore, RowQuery, Run, RunRecord
from pacsman.jobstore._keys import row_keys, run_key
from pacsman.models import ItemState, QueryFile

__all__ = ["DQR_KEY_PREFIX", "DqrLedger", "DqrRow", "DqrStudyRecord"]

#: The run key of a dqr run starts with this (a pipeline run of the same file has none).
DQR_KEY_PREFIX = "dqr:"
#: The states of a study between its import call and its verdict.
_IN_FLIGHT = frozenset({DqrState.QUEUED, DqrState.PROCESSING, DqrState.ISSUED, DqrState.RECEIVED})

_COLUMNS = (
    "study_instance_uid, line, subject, session, accession_number, study_date, expected_json, "
    "counts_verified, state, request_id, request_status, status_since, attempts, "
    "next_attempt_at, files, detail, updated_at"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DqrStudyRecord:
    """One study of a dqr run as the job store holds it."""

    study: DqrStudy
    state: DqrState = DqrState.PENDING
    #: XNAT's ``QueuedPacsRequest`` id of the study's last request (None: never asked); a
    #: PENDING study's was given up.
    request_id: int | None = None
    #: XNAT's status text of that request when last seen ('' before the first poll).
    request_status: str = ""
    #: When the current state (or XNAT's status) was first seen, epoch seconds (0: never).
    status_since: float = 0.0
    attempts: int = 0
    #: When the next import call may be made, epoch seconds (0: at once).
    next_attempt_at: float = 0.0
    #: Files seen in the study's session at the last arrival check (None: not looked yet).
    files: int | None = None
    detail: str = ""
    updated_at: str = ""

    @property
    def line(self) -> int:
        """The query-file line the study was resolved from."""
        return self.study.line

    @property
    def in_flight(self) -> bool:
        """True from the import call until the request is settled or given up."""
        return self.state in _IN_FLIGHT

    @property
    def needs_attention(self) -> bool:
        """True for a study that is not done: PARTIAL, FAILED, or (once stopped) unsettled."""
        return self.state not in (DqrState.DONE, DqrState.UNVERIFIED)


@dataclass(frozen=True)
class DqrRow:
    """One query row of a dqr run with the studies it resolved (none: see its state)."""

    query: RowQuery
    studies: tuple[DqrStudyRecord, ...]

    def reasons(self, *, settled: bool = True) -> tuple[str, ...]:
        """Why the row needs attention: what failed or is partial, and (``settled``: the run
        stopped) what is not done; none for a row whose studies are all done."""
        state = self.query.state
        if state in (ItemState.NO_MATCH, ItemState.FAILED):
            return (f"{state.value}: {self.query.detail}",)
        if state is ItemState.PENDING:
            return ("not resolved yet",) if settled else ()
        return tuple(
            f"{study.state.name}: {study.detail or 'not settled'}"
            for study in self.studies
            if study.needs_attention and (settled or study.state.settled)
        )


class DqrLedger:
    """The dqr tables of one open :class:`~pacsman.jobstore.JobStore`."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def open_run(
        self, queryfile: QueryFile, config_sha256: str, *, default_pacs: str, new_run: bool
    ) -> Run:
        """Find the dqr run of these rows and this config, or create it (``new_run``: the
        run found is retired, kept but never resumed, and a new one starts)."""
        store = self.store
        pairs = [(row, row.pacs or default_pacs) for row in queryfile.rows]
        key = DQR_KEY_PREFIX + run_key(row_keys(pairs))
        with store._tx() as db:
            found = db.execute(
                "SELECT id, queryfile, created_at FROM runs WHERE config_sha256 = ? "
                "AND retired_at = '' AND queryfile_sha256 = ? ORDER BY id LIMIT 1",
                (config_sha256, key),
            ).fetchone()
            if found and not new_run:
                return Run(int(found[0]), str(found[1]), str(found[2]), resumed=True)
            if found:
                store._retire(db, int(found[0]))
            return store._create_run(db, str(queryfile.path), key, config_sha256)

    def is_dqr_run(self, run_id: int) -> bool:
        """True for a run ``pacsman dqr`` made."""
        found = self.store._read("SELECT queryfile_sha256 FROM runs WHERE id = ?", (run_id,))
        return bool(found) and str(found[0][0]).startswith(DQR_KEY_PREFIX)

    def record_resolved(
        self,
        run: Run,
        studies: Sequence[DqrStudy],
        rows: Sequence[tuple[int, ItemState, str]],
    ) -> None:
        """Record resolved studies (PENDING; a study already known is kept as it is) and
        each resolved row's state and reason (line, state, detail), in one transaction."""
        now = _now()
        with self.store._tx() as db:
            for study in studies:
                cursor = db.execute(
                    "INSERT INTO dqr_studies(run_id, study_instance_uid, line, subject, session, "
                    "accession_number, study_date, expected_json, counts_verified, state, "
                    "updated_at, row_key) VALUES (?,?,?,?,?,?,?,?,?,?,?, COALESCE((SELECT "
                    "row_key FROM rows WHERE run_id = ? AND line = ?), '')) "
                    "ON CONFLICT (run_id, study_instance_uid) DO NOTHING",
                    (
                        run.id,
                        study.study_instance_uid,
                        study.line,
                        study.subject,
                        study.session,
                        study.accession_number,
                        study.study_date,
                        _expected_json(study.expected),
                        int(study.counts_verified),
                        DqrState.PENDING.value,
                        now,
                        run.id,
                        study.line,
                    ),
                )
                if cursor.rowcount:
                    detail = _resolved_detail(study)
                    self.store._transition(
                        db, run.id, "dqr", str(study.line), DqrState.PENDING.value, detail
                    )
            for line, state, detail in rows:
                db.execute(
                    "UPDATE rows SET state = ?, detail = ? WHERE run_id = ? AND line = ?",
                    (state.value, detail, run.id, line),
                )
                self.store._transition(db, run.id, "row", str(line), state.value, detail)

    def follow_lines(self, run: Run) -> None:
        """Give each study its query row's line again (after
        :meth:`~pacsman.jobstore.JobStore.add_rows` renumbered rows whose file gained or lost
        lines)."""
        with self.store._tx() as db:
            db.execute(
                "UPDATE dqr_studies SET line = (SELECT r.line FROM rows r WHERE r.run_id = "
                "dqr_studies.run_id AND r.row_key = dqr_studies.row_key) WHERE run_id = ? "
                "AND row_key != '' AND EXISTS (SELECT 1 FROM rows r WHERE r.run_id = "
                "dqr_studies.run_id AND r.row_key = dqr_studies.row_key)",
                (run.id,),
            )

    def studies(self, run: Run | RunRecord) -> list[DqrStudyRecord]:
        """Every study of ``run``, in query-file order."""
        found = self.store._read(
            f"SELECT {_COLUMNS} FROM dqr_studies WHERE run_id = ? ORDER BY line, "
            "study_instance_uid",
            (run.id,),
        )
        return [_record(r) for r in found]

    def save(self, run: Run, record: DqrStudyRecord, *, before: DqrStudyRecord) -> DqrStudyRecord:
        """Record ``record`` (the study's new state, request and reason) in one transaction,
        with a transition when its state, request, XNAT's status or attempts changed from
        ``before``; returns
        it with its ``updated_at``."""
        saved = replace(record, updated_at=_now())
        with self.store._tx() as db:
            db.execute(
                "UPDATE dqr_studies SET state = ?, request_id = ?, request_status = ?, "
                "status_since = ?, attempts = ?, next_attempt_at = ?, files = ?, detail = ?, "
                "updated_at = ? WHERE run_id = ? AND study_instance_uid = ?",
                (
                    saved.state.value,
                    saved.request_id,
                    saved.request_status,
                    saved.status_since,
                    saved.attempts,
                    saved.next_attempt_at,
                    saved.files,
                    saved.detail,
                    saved.updated_at,
                    run.id,
                    saved.study.study_instance_uid,
                ),
            )
            if _moved(before, saved):
                shown = saved.state.value + (
                    f" ({saved.request_status})" if saved.request_status else ""
                )
                self.store._transition(db, run.id, "dqr", str(saved.line), shown, saved.detail)
        return saved

    def rows(self, run: Run | RunRecord) -> list[DqrRow]:
        """Every query row of ``run`` with its studies, in line order."""
        by_line: dict[int, list[DqrStudyRecord]] = {}
        for record in self.studies(run):
            by_line.setdefault(record.line, []).append(record)
        return [
            DqrRow(query, tuple(by_line.get(query.line, ())))
            for query in self.store.row_queries(run)
        ]


def _moved(before: DqrStudyRecord, after: DqrStudyRecord) -> bool:
    """True when ``after`` is a step the transition log records."""
    keys = ("state", "request_id", "request_status", "attempts")
    return any(getattr(before, key) != getattr(after, key) for key in keys)


def _expected_json(expected: Sequence[ExpectedSeries]) -> str:
    return json.dumps(
        [
            {
                "series_instance_uid": s.series_instance_uid,
                "series_number": s.series_number,
                "modality": s.modality,
                "instances": s.instances,
            }
            for s in expected
        ]
    )


def _expected(text: str) -> tuple[ExpectedSeries, ...]:
    return tuple(
        ExpectedSeries(
            series_instance_uid=str(s["series_instance_uid"]),
            series_number=str(s["series_number"]),
            modality=str(s["modality"]),
            instances=int(s["instances"]),
        )
        for s in json.loads(text or "[]")
    )


def _resolved_detail(study: DqrStudy) -> str:
    if not study.counts_verified:
        return "resolved; counts unverified (DQR's query)"
    return f"resolved: {len(study.expected)} series, {study.expected_instances} instance(s)"


def _record(r: Sequence[Any]) -> DqrStudyRecord:
    study = DqrStudy(
        line=int(r[1]),
        study_instance_uid=str(r[0]),
        subject=str(r[2]),
        session=str(r[3]),
        accession_number=str(r[4]),
        study_date=str(r[5]),
        expected=_expected(str(r[6])),
        counts_verified=bool(r[7]),
    )
    return DqrStudyRecord(
        study=study,
        state=DqrState(str(r[8])),
        request_id=None if r[9] is None else int(r[9]),
        request_status=str(r[10]),
        status_since=float(r[11] or 0),
        attempts=int(r[12]),
        next_attempt_at=float(r[13] or 0),
        files=None if r[14] is None else int(r[14]),
        detail=str(r[15]),
        updated_at=str(r[16]),
    )
