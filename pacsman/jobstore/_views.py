"""The job store as the operator's views read it: runs, rows, outcomes per step, throughput
(private to the package; :class:`~pacsman.jobstore.JobStore` mixes it in).

These reads serve ``pacsman status``, ``runs`` and ``report``: a few aggregate queries per
run, so that a run of 10,000 studies reads in about a second, and nothing here writes.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacsman.jobstore._backend import Database
from pacsman.jobstore._keys import row_keys, run_key
from pacsman.jobstore._schema import (
    RowOutcome,
    RowQuery,
    Run,
    RunOutcome,
    RunRecord,
    SeriesProblem,
    SessionPush,
    Throughput,
)
from pacsman.models import ItemState, QueryFile

__all__ = ["OperatorViews"]

#: The columns of a :class:`RunRecord`, in its field order.
_RUN_COLUMNS = (
    "id, queryfile, created_at, retired_at, started_at, heartbeat_at, stopped_at, pid, host, "
    "options_json, outcome, outcome_detail"
)
#: Series retrieve states that end a retrieval.
_RETRIEVED = ("COMPLETE", "INCOMPLETE", "FAILED")


class OperatorViews:
    """Read-only queries over runs for the operator's views; needs ``_read`` and ``_db``."""

    path: Path
    where: str
    _db: Database
    _lock: threading.RLock

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # JobStore's

    def _raise_for(self, exc: Exception) -> None:
        raise NotImplementedError  # JobStore's

    def run_records(self) -> list[RunRecord]:
        """Every run of the store, oldest first."""
        return [_run_record(r) for r in self._read(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id")]

    def run_record(self, run_id: int) -> RunRecord:
        """One run.

        Raises:
            KeyError: no such run.
        """
        found = self._read(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not found:
            raise KeyError(f"run {run_id} is not in the job store {self.where}")
        return _run_record(found[0])

    def runs_of(self, queryfile: QueryFile) -> list[RunRecord]:
        """The runs (not retired) of these rows, newest first, found by their run key under
        each PACS node the store knows as a default, or by the file's bytes."""
        nodes = [str(r[0]) for r in self._read("SELECT DISTINCT pacs FROM rows")]
        keys = {queryfile.sha256}
        for node in nodes:
            keys.add(run_key(row_keys([(row, row.pacs or node) for row in queryfile.rows])))
        marks = ",".join("?" * len(keys))
        found = self._read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE retired_at = '' "
            f"AND queryfile_sha256 IN ({marks}) ORDER BY id DESC",
            sorted(keys),
        )
        return [_run_record(r) for r in found]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the store, however much a working run writes.

        Raises:
            JobStoreError: the file cannot be read.
        """
        with self._lock:
            try:
                self._db.begin_snapshot()
            except self._db.errors as exc:
                self._raise_for(exc)
                raise
            try:
                yield
            finally:
                if self._db.in_transaction:
                    self._db.commit()

    def row_queries(self, run: Run | RunRecord) -> list[RowQuery]:
        """Every row of ``run`` as the query file gave it, with its state, in line order."""
        found = self._read(
            "SELECT line, pacs, keys_json, subject, session, state, detail, pacs_cell "
            "FROM rows WHERE run_id = ? ORDER BY line",
            (run.id,),
        )
        return [
            RowQuery(
                line=int(r[0]),
                pacs=str(r[1]),
                keys=json.loads(r[2]),
                subject=str(r[3] or ""),
                session=str(r[4] or ""),
                state=ItemState(r[5]),
                detail=str(r[6]),
                pacs_cell=None if r[7] is None else str(r[7]),
            )
            for r in found
        ]

    def row_outcomes(self, run: Run | RunRecord, target: str) -> dict[int, RowOutcome]:
        """What each row's series add up to, per step, with pushes to ``target``: by line.

        A few aggregate queries, so that a run of 10,000 studies reads in about a second.
        """
        join = (
            "LEFT JOIN pushes pu ON pu.run_id = se.run_id AND pu.target = ? "
            "AND pu.subject = se.xnat_subject AND pu.session = se.xnat_session "
            "AND se.xnat_session != ''"
        )
        found: defaultdict[int, dict[str, Any]] = defaultdict(lambda: {"steps": {}})
        for line, state, anonymization, push, n, expected, received in self._read(
            "SELECT se.line, se.state, se.anonymization, COALESCE(pu.state, ''), COUNT(*), "
            "COALESCE(SUM(se.expected_instances), 0), COALESCE(SUM(se.received_instances), 0) "
            f"FROM series se {join} WHERE se.run_id = ? GROUP BY 1, 2, 3, 4",
            (target, run.id),
        ):
            row = found[int(line)]
            row["steps"][(str(state), str(anonymization), str(push))] = int(n)
            row["series"] = row.get("series", 0) + int(n)
            row["expected_instances"] = row.get("expected_instances", 0) + int(expected)
            row["received_instances"] = row.get("received_instances", 0) + int(received)
        for line, studies in self._read(
            "SELECT line, COUNT(DISTINCT study_instance_uid) FROM series WHERE run_id = ? "
            "GROUP BY line",
            (run.id,),
        ):
            found[int(line)]["studies"] = int(studies)
        for line, n in self._read(
            f"SELECT se.line, COUNT(DISTINCT se.xnat_subject || '/' || se.xnat_session) "
            f"FROM series se {join} WHERE se.run_id = ? AND se.anonymization = 'ANONYMIZED' "
            "AND pu.state IS NULL GROUP BY se.line",
            (target, run.id),
        ):
            found[int(line)]["sessions_not_pushed"] = int(n) if target else 0
        self._add_problems(run, target, found)
        return {line: RowOutcome(**fields) for line, fields in found.items()}

    def push_targets(self, run: Run | RunRecord) -> list[str]:
        """The targets ``run`` pushed to (for runs that did not record their options)."""
        found = self._read("SELECT DISTINCT target FROM pushes WHERE run_id = ?", (run.id,))
        return sorted(str(r[0]) for r in found)

    def _add_problems(
        self, run: Run | RunRecord, target: str, found: defaultdict[int, dict[str, Any]]
    ) -> None:
        """The failed series and the pushes of each row, into ``found``."""
        problems: defaultdict[int, list[SeriesProblem]] = defaultdict(list)
        for r in self._read(
            "SELECT line, series_number, series_instance_uid, state, detail, anonymization, "
            "anonymization_detail FROM series WHERE run_id = ? AND (state IN "
            "('INCOMPLETE', 'FAILED') OR anonymization = 'QUARANTINED') "
            "ORDER BY line, CAST(series_number AS INTEGER), series_instance_uid",
            (run.id,),
        ):
            problems[int(r[0])].append(
                SeriesProblem(
                    str(r[1]), str(r[2]), ItemState(r[3]), str(r[4]), _state(r[5]), str(r[6])
                )
            )
        pushes: defaultdict[int, list[SessionPush]] = defaultdict(list)
        for r in self._read(
            "SELECT DISTINCT se.line, pu.subject, pu.session, pu.state, pu.uri, pu.detail "
            "FROM series se JOIN pushes pu ON pu.run_id = se.run_id AND pu.target = ? "
            "AND pu.subject = se.xnat_subject AND pu.session = se.xnat_session "
            "WHERE se.run_id = ? AND se.xnat_session != '' ORDER BY 1, 2, 3",
            (target, run.id),
        ):
            pushes[int(r[0])].append(
                SessionPush(str(r[1]), str(r[2]), ItemState(r[3]), str(r[4]), str(r[5]))
            )
        for line, items in problems.items():
            found[line]["problems"] = tuple(items)
        for line, done in pushes.items():
            found[line]["pushes"] = tuple(done)

    def throughput(self, run: Run | RunRecord, since: str) -> Throughput:
        """What ``run`` settled from ``since`` (an ISO timestamp) on: for rates and ETAs."""
        marks = ",".join("?" * len(_RETRIEVED))
        settled = (
            f"(kind IN ('row', 'anonymization') OR (kind = 'series' AND state IN ({marks})) "
            "OR (kind = 'push' AND state = 'DONE'))"
        )
        found = self._read(
            "SELECT kind, COUNT(DISTINCT key), MAX(at) FROM transitions "
            f"WHERE run_id = ? AND at >= ? AND {settled} GROUP BY kind",
            (run.id, since, *_RETRIEVED),
        )
        counts = {str(kind): int(n) for kind, n, _ in found}
        instances = self._read(
            "SELECT COALESCE(SUM(received_instances), 0) FROM series "
            "WHERE run_id = ? AND series_instance_uid IN (SELECT key FROM transitions "
            f"WHERE run_id = ? AND kind = 'series' AND state IN ({marks}) AND at >= ?)",
            (run.id, run.id, *_RETRIEVED, since),
        )[0][0]
        return Throughput(
            rows_queried=counts.get("row", 0),
            series_retrieved=counts.get("series", 0),
            instances_received=int(instances),
            series_deidentified=counts.get("anonymization", 0),
            sessions_pushed=counts.get("push", 0),
            last_at={str(kind): str(at) for kind, _, at in found},
        )


def _run_record(r: Sequence[Any]) -> RunRecord:
    """A :class:`RunRecord` from the columns :data:`_RUN_COLUMNS`."""
    return RunRecord(
        id=int(r[0]),
        queryfile=str(r[1]),
        created_at=str(r[2]),
        retired_at=str(r[3]),
        started_at=str(r[4]),
        heartbeat_at=str(r[5]),
        stopped_at=str(r[6]),
        pid=_count(r[7]),
        host=str(r[8]),
        options_json=str(r[9]),
        outcome=RunOutcome(r[10]) if r[10] else None,
        outcome_detail=str(r[11]),
    )


def _state(value: object) -> ItemState | None:
    return ItemState(str(value)) if value else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) else None
