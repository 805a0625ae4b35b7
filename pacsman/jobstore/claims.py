"""Studies shared between head nodes: claims with leases, generations and take-over.

Several ``pacsman serve`` processes (head nodes) may work on one job.  The node that claims
the job queries the PACS for its rows; the job's studies then become ``study_claims`` rows,
OPEN, and any node working on the job claims some (:meth:`StudyClaims.claim_studies`): one
transaction that picks OPEN studies, or CLAIMED ones whose lease expired, with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two nodes never pick the same row, nor wait for
each other) and ``BEGIN IMMEDIATE`` on SQLite.  The node that claims a study retrieves,
verifies, de-identifies and pushes it: its files never leave that node's disk.

A claim lasts ``lease_seconds`` on the database's clock; the node renews the leases its job
threads work on (:class:`LiveLeases`) a few times per lease (:meth:`StudyClaims.renew_leases`).
A claim no thread works on (its thread ended before it could settle or give it back, or the
claim's commit was lost with the connection) is left to expire.  A node killed, stopped or
cut off stops renewing; once its leases have expired, another node takes its studies over with a new
generation, and a study whose files were on the other node (``holder_node``) is retrieved
again from the start, unless its session is already pushed.  The old node's writes carry its
old generation and are refused (:class:`~pacsman.errors.LeaseLost`), so a node that comes
back after its lease expired cannot record or push what it lost.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from pacsman.errors import LeaseLost
from pacsman.jobstore._backend import EPOCH_NOW, Database
from pacsman.jobstore._schema import Lease, Run
from pacsman.jobstore.jobs import CHANNEL
from pacsman.models import ItemState

__all__ = ["ClaimCounts", "LiveLeases", "StudyClaims", "StudyState"]

_log = structlog.get_logger("pacsman.jobstore")


class LiveLeases:
    """The study leases (generations) this process's job threads work on now: the only
    ones its lease loop renews."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generations: set[int] = set()

    @contextmanager
    def working_on(self, lease: Lease) -> Iterator[None]:
        """While the block runs, ``lease`` is renewed."""
        with self._lock:
            self._generations.add(lease.generation)
        try:
            yield
        finally:
            with self._lock:
                self._generations.discard(lease.generation)

    def generations(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._generations)


class StudyState(StrEnum):
    """Where one study of a job is between the head nodes."""

    OPEN = "OPEN"  # nobody holds it: the next node to ask claims it
    CLAIMED = "CLAIMED"  # ``owner_node`` holds it until ``lease_expires_at``
    DONE = "DONE"  # worked through, every series as asked
    FAILED = "FAILED"  # worked through, some series failed (retry-failed opens it again)


#: The fence every scoped read and write goes through: the study is held under the run's
#: lease (node and generation), unexpired.  ``{alias}`` is the series table's alias.
_HELD = (
    "EXISTS (SELECT 1 FROM study_claims c WHERE c.run_id = {alias}.run_id "
    "AND c.pacs = {alias}.pacs AND c.study_instance_uid = {alias}.study_instance_uid "
    "AND c.owner_node = ? AND c.generation = ? AND c.state = 'CLAIMED' "
    f"AND c.lease_expires_at > {EPOCH_NOW})"
)


def held_clause(run: Run, alias: str) -> tuple[str, tuple[object, ...]]:
    """``AND <the fence>`` and its parameters for a run seen through a lease; '' without."""
    if run.lease is None:
        return "", ()
    return f" AND {_HELD.format(alias=alias)}", (run.lease.node, run.lease.generation)


class ClaimCounts:
    """How a job's studies stand: open, held (by a live lease), expired, done, failed."""

    def __init__(self, found: dict[str, int], expired: int, mine: int = 0) -> None:
        #: Held (CLAIMED, unexpired or not) by the node that asked.
        self.mine = mine
        self.open = found.get(StudyState.OPEN.value, 0)
        self.held = found.get(StudyState.CLAIMED.value, 0) - expired
        self.expired = expired
        self.done = found.get(StudyState.DONE.value, 0)
        self.failed = found.get(StudyState.FAILED.value, 0)

    @property
    def unsettled(self) -> int:
        return self.open + self.held + self.expired

    @property
    def claimable(self) -> int:
        return self.open + self.expired


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StudyClaims:
    """Study claims; mixed into :class:`~pacsman.jobstore.JobStore`."""

    _lock: threading.RLock

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # JobStore's

    def _tx(self) -> AbstractContextManager[Database]:
        raise NotImplementedError  # JobStore's

    def open_studies(self, run: Run, job_id: int) -> int:
        """Make every study the job's run selected claimable (those known stay as they are);
        return how many are new."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO study_claims(run_id, pacs, study_instance_uid, job_id, "
                "state, updated_at, first_line) SELECT run_id, pacs, study_instance_uid, ?, ?, ?, "
                "MIN(line) FROM series WHERE run_id = ? "
                "GROUP BY run_id, pacs, study_instance_uid",
                (job_id, StudyState.OPEN.value, _now(), run.id),
            )
            db.execute("UPDATE jobs SET studies_open = 1 WHERE id = ?", (job_id,))
            db.notify(CHANNEL)
            return max(0, cursor.rowcount)

    def claim_studies(
        self,
        run: Run,
        job_id: int,
        node: str,
        *,
        limit: int,
        lease_seconds: float,
        expired_only: bool = False,
    ) -> Lease | None:
        """Claim up to ``limit`` OPEN studies of the job (or ones whose lease expired; only
        those with ``expired_only``), in query-file order, for ``node``; None when none is
        left to claim.

        A study taken over from another node's disk is reset to be retrieved again, unless
        its session was pushed already.
        """
        with self._tx() as db:
            found = db.execute(
                "SELECT c.pacs, c.study_instance_uid, c.owner_node, c.holder_node, c.state "
                "FROM study_claims c WHERE c.run_id = ? AND c.job_id = ? AND (c.state = ? OR "
                f"(c.state = ? AND c.lease_expires_at <= {EPOCH_NOW})) "
                "ORDER BY c.first_line, c.study_instance_uid "
                "LIMIT ? FOR UPDATE OF c SKIP LOCKED",
                (
                    run.id,
                    job_id,
                    "" if expired_only else StudyState.OPEN.value,
                    StudyState.CLAIMED.value,
                    max(1, limit),
                ),
            ).fetchall()
            if not found:
                return None
            generation = _next_generation(db)
            for pacs, uid, owner, holder, state in found:
                db.execute(
                    "UPDATE study_claims SET state = ?, owner_node = ?, generation = ?, "
                    f"lease_expires_at = {EPOCH_NOW} + ?, holder_node = ?, detail = ?, "
                    "updated_at = ? WHERE run_id = ? AND pacs = ? AND study_instance_uid = ?",
                    (
                        StudyState.CLAIMED.value,
                        node,
                        generation,
                        float(lease_seconds),
                        node,
                        "",
                        _now(),
                        run.id,
                        pacs,
                        uid,
                    ),
                )
                taken = state == StudyState.CLAIMED.value and owner != node
                if holder and holder != node:
                    _start_over(db, run, str(pacs), str(uid))
                if taken:
                    _log.warning(
                        "study_taken_over", job_id=job_id, from_node=owner, generation=generation
                    )
                    _transition(db, run.id, uid, f"taken over from {owner} by {node}")
        return Lease(node, generation, len(found))

    def renew_leases(
        self, node: str, lease_seconds: float, *, generations: Collection[int]
    ) -> set[int]:
        """Extend every unexpired lease ``node`` holds on jobs, and on studies those of
        ``generations`` (the ones its threads work on); return the generations of the study
        leases still held (one that expired is lost for good)."""
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET lease_expires_at = {EPOCH_NOW} + ? WHERE owner_node = ? "
                f"AND state = 'RUNNING' AND lease_expires_at > {EPOCH_NOW}",
                (float(lease_seconds), node),
            )
            if not generations:
                return set()
            marks = ",".join("?" * len(generations))
            held = db.execute(
                f"UPDATE study_claims SET lease_expires_at = {EPOCH_NOW} + ? "
                f"WHERE owner_node = ? AND state = ? AND generation IN ({marks}) "
                f"AND lease_expires_at > {EPOCH_NOW} RETURNING generation",
                (float(lease_seconds), node, StudyState.CLAIMED.value, *sorted(generations)),
            ).fetchall()
        return {int(r[0]) for r in held}

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` still holds at least one study, unexpired."""
        found = self._read(
            "SELECT COUNT(*) FROM study_claims WHERE owner_node = ? AND generation = ? "
            f"AND state = ? AND lease_expires_at > {EPOCH_NOW}",
            (lease.node, lease.generation, StudyState.CLAIMED.value),
        )
        return bool(found and int(found[0][0]))

    def settle_studies(self, run: Run, *, failed: set[str]) -> int:
        """The studies of ``run.lease`` are worked through: DONE, or FAILED when in
        ``failed`` (StudyInstanceUIDs); return how many were still held."""
        lease = run.lease
        if lease is None:
            return 0
        with self._tx() as db:
            held = db.execute(
                "SELECT pacs, study_instance_uid FROM study_claims WHERE run_id = ? "
                "AND owner_node = ? AND generation = ? AND state = ? FOR UPDATE",
                (run.id, lease.node, lease.generation, StudyState.CLAIMED.value),
            ).fetchall()
            for pacs, uid in held:
                state = StudyState.FAILED if uid in failed else StudyState.DONE
                db.execute(
                    "UPDATE study_claims SET state = ?, lease_expires_at = 0, updated_at = ? "
                    "WHERE run_id = ? AND pacs = ? AND study_instance_uid = ?",
                    (state.value, _now(), run.id, pacs, uid),
                )
            db.notify(CHANNEL)
        return len(held)

    def release_studies(self, lease: Lease, reason: str) -> int:
        """Give the studies of ``lease`` back (OPEN) for any node: the job was paused or the
        node is stopping.  Their files stay where they are (``holder_node``)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE study_claims SET state = ?, owner_node = '', lease_expires_at = 0, "
                "detail = ?, updated_at = ? WHERE owner_node = ? AND generation = ? "
                "AND state = ?",
                (
                    StudyState.OPEN.value,
                    reason,
                    _now(),
                    lease.node,
                    lease.generation,
                    StudyState.CLAIMED.value,
                ),
            )
            db.notify(CHANNEL)
            return max(0, cursor.rowcount)

    def claim_counts(self, job_id: int, node: str = "") -> ClaimCounts:
        """How the job's studies stand between the nodes (``mine``: held by ``node``)."""
        found = self._read(
            "SELECT state, COUNT(*), "
            f"SUM(CASE WHEN lease_expires_at <= {EPOCH_NOW} THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN owner_node = ? THEN 1 ELSE 0 END) "
            "FROM study_claims WHERE job_id = ? GROUP BY state",
            (node, job_id),
        )
        claimed = [r for r in found if r[0] == StudyState.CLAIMED.value]
        expired = sum(int(r[2] or 0) for r in claimed)
        mine = sum(int(r[3] or 0) for r in claimed)
        return ClaimCounts({str(r[0]): int(r[1]) for r in found}, expired, mine)


def fence(db: Database, run: Run, study_instance_uid: str, pacs: str | None = None) -> None:
    """In a writing transaction: refuse the write unless ``run.lease`` holds the study.

    Raises:
        LeaseLost: another node holds it now, or the lease expired.
    """
    lease = run.lease
    if lease is None:
        return
    where = " AND pacs = ?" if pacs is not None else ""
    found = db.execute(
        "SELECT 1 FROM study_claims WHERE run_id = ? AND study_instance_uid = ?"
        f"{where} AND owner_node = ? AND generation = ? AND state = ? "
        f"AND lease_expires_at > {EPOCH_NOW} FOR SHARE",
        (
            run.id,
            study_instance_uid,
            *(() if pacs is None else (pacs,)),
            lease.node,
            lease.generation,
            StudyState.CLAIMED.value,
        ),
    ).fetchone()
    if found is None:
        raise LeaseLost(
            f"head node {lease.node}: lease {lease.generation} on a study of run {run.id} was "
            "lost (it expired and may have been taken over by another node); this node stops "
            "working on it, and the node that holds it now finishes it"
        )


def _next_generation(db: Database) -> int:
    """The next lease generation: one counter for the whole store, never handed out twice."""
    db.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('lease_generation', '0')",
    )
    found = db.execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
        "WHERE key = 'lease_generation' RETURNING value"
    ).fetchone()
    return int(found[0])


def _start_over(db: Database, run: Run, pacs: str, uid: str) -> None:
    """A study taken over from another node's disk: its series are retrieved and
    de-identified again here, unless its sessions were pushed already."""
    pushed = db.execute(
        "SELECT COUNT(*) FROM series se JOIN pushes pu ON pu.run_id = se.run_id "
        "AND pu.subject = se.xnat_subject AND pu.session = se.xnat_session "
        "WHERE se.run_id = ? AND se.pacs = ? AND se.study_instance_uid = ? "
        "AND se.xnat_session != '' AND pu.state = ?",
        (run.id, pacs, uid, ItemState.DONE.value),
    ).fetchone()
    if pushed and int(pushed[0]):
        return
    db.execute(
        "UPDATE series SET state = ?, detail = ?, received_instances = NULL, "
        "raw_directory = '', anonymization = '', anonymized_instances = NULL, "
        "anonymization_detail = '', anonymized_directory = '' "
        "WHERE run_id = ? AND pacs = ? AND study_instance_uid = ?",
        (ItemState.QUERIED.value, "taken over: retrieved again here", run.id, pacs, uid),
    )


def _transition(db: Database, run_id: int, uid: str, detail: str) -> None:
    db.execute(
        "INSERT INTO transitions(run_id, kind, key, state, detail, at) VALUES (?,?,?,?,?,?)",
        (run_id, "study", uid, StudyState.CLAIMED.value, detail, _now()),
    )
