"""Jobs: the service's queue, kept in the job store beside the runs they become.

A *job* is a query file (its bytes, kept in the store) plus its options, a priority and a
name.  ``pacsman submit``, the inbox and the HTTP API add jobs; ``pacsman serve`` claims
them.  A claim is one state change in one transaction (``BEGIN IMMEDIATE`` on SQLite;
``SELECT ... FOR UPDATE SKIP LOCKED`` is the PostgreSQL form of the same claim), recorded
with the node that holds it, so no queue lives outside the ledger.

Operators' actions (cancel, pause, resume, retry-failed) are requests written here too:
a QUEUED or PAUSED job changes at once; a RUNNING one is changed by the node working on it,
which reads the request on its next look (:meth:`JobQueue.requests_for`).  A job becomes a
run of the job store when it starts (:meth:`JobQueue.attach_run`), so ``pacsman status``
and ``report`` show it like any run, and a restarted service resumes that same run.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pacsman.errors import InputError
from pacsman.jobstore._backend import EPOCH_NOW, Database

__all__ = [
    "FINAL_STATES",
    "PRIORITIES",
    "Job",
    "JobAction",
    "JobOptions",
    "JobQueue",
    "JobState",
    "ServiceNode",
]


class JobState(StrEnum):
    """Where a job is in the queue."""

    QUEUED = "QUEUED"  # waiting for a node to claim it
    RUNNING = "RUNNING"  # claimed by ``owner_node``
    PAUSED = "PAUSED"  # stopped on request; ``resume`` queues it again
    DONE = "DONE"  # every row settled, nothing failed
    FAILED = "FAILED"  # ended with failed rows or series, or stopped by an error
    CANCELLED = "CANCELLED"  # stopped on request, for good


class JobAction(StrEnum):
    """What an operator may ask of a job."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY_FAILED = "retry-failed"


#: States in which a job has nothing more to do.
FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
#: The priorities a job may have; higher is claimed first, 0 is the default.
PRIORITIES = range(-1000, 1001)


@dataclass(frozen=True)
class JobOptions:
    """What a job asks for: the one-shot command's options, as ``pacsman submit`` takes them."""

    save: bool = False
    anonymize: bool = False
    push: str | None = None  # "xnat", "dicom", "folder"
    pacs: str | None = None
    sheet: str | None = None
    encoding: str | None = None
    #: ``--nifti``: convert each de-identified series (dcm2niix); ``--bids MAP``: the BIDS
    #: mapping file, an absolute path on the head node.
    nifti: bool = False
    bids: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobOptions:
        data: dict[str, Any] = json.loads(text) if text else {}
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def describe(self) -> str:
        """``--save --anonymize --push xnat`` (what the job does, in the command's words)."""
        parts = ["--save"] if self.save else []
        parts += ["--anonymize"] if self.anonymize else []
        parts += [f"--push {self.push}"] if self.push else []
        parts += ["--nifti"] if self.nifti else []
        parts += [f"--bids {Path(self.bids).name}"] if self.bids else []
        parts += [f"--pacs {self.pacs}"] if self.pacs else []
        return " ".join(parts) or "query only"


@dataclass(frozen=True)
class Job:
    """One job as the store holds it (the query file's bytes are read separately)."""

    id: int
    name: str
    priority: int
    state: JobState
    options: JobOptions
    queryfile_name: str
    source: str  # "cli", "inbox", "http"
    submitted_at: str
    started_at: str
    finished_at: str
    owner_node: str
    run_id: int | None
    requested: str
    detail: str


@dataclass(frozen=True)
class ServiceNode:
    """A ``pacsman serve`` process on a head node, as it records itself."""

    node_name: str
    pid: int
    host: str
    http_url: str
    started_at: str
    heartbeat_at: str
    stopped_at: str
    status: str

    def alive(self, now: datetime, *, within: float = 30.0) -> bool:
        """Whether it beat its heartbeat in the last ``within`` seconds and has not stopped."""
        if self.stopped_at or not self.heartbeat_at:
            return False
        beat = datetime.fromisoformat(self.heartbeat_at)
        return (now - beat).total_seconds() <= within


#: The channel on which a PostgreSQL job store wakes the nodes (see jobstore.claims).
CHANNEL = "pacsman_work"
_JOB_COLUMNS = (
    "id, name, priority, state, options_json, queryfile_name, source, submitted_at, "
    "started_at, finished_at, owner_node, run_id, requested, detail"
)
_NODE_COLUMNS = "node_name, pid, host, http_url, started_at, heartbeat_at, stopped_at, status"
#: The largest query file a job may carry (a 10,000-row workbook is well under 5 MB).
MAX_QUERYFILE_BYTES = 64 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _job(r: Sequence[Any]) -> Job:
    return Job(
        id=int(r[0]),
        name=str(r[1]),
        priority=int(r[2]),
        state=JobState(r[3]),
        options=JobOptions.from_json(str(r[4])),
        queryfile_name=str(r[5]),
        source=str(r[6]),
        submitted_at=str(r[7]),
        started_at=str(r[8]),
        finished_at=str(r[9]),
        owner_node=str(r[10]),
        run_id=None if r[11] is None else int(r[11]),
        requested=str(r[12]),
        detail=str(r[13]),
    )


class JobQueue:
    """The job queue; mixed into :class:`~pacsman.jobstore.JobStore` (needs ``_tx``/``_read``)."""

    _lock: threading.RLock
    _db: Database

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # JobStore's

    def _tx(self) -> AbstractContextManager[Database]:
        raise NotImplementedError  # JobStore's

    def _raise_for(self, exc: Exception) -> None:
        raise NotImplementedError  # JobStore's

    # -- adding and reading ---------------------------------------------------------------

    def add_job(
        self,
        *,
        name: str,
        queryfile_name: str,
        content: bytes,
        options: JobOptions,
        priority: int = 0,
        source: str = "cli",
    ) -> Job:
        """Queue a job (its query file already validated by the caller); return it.

        Raises:
            InputError: the query file is larger than a job may carry.
        """
        if len(content) > MAX_QUERYFILE_BYTES:
            raise InputError(
                f"query file {queryfile_name}: {len(content)} bytes is more than a job may "
                f"carry ({MAX_QUERYFILE_BYTES} bytes); split it into several query files"
            )
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO jobs(name, priority, state, options_json, queryfile_name, "
                "queryfile, source, submitted_at) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                (
                    name,
                    priority,
                    JobState.QUEUED.value,
                    options.to_json(),
                    queryfile_name,
                    content,
                    source,
                    _now(),
                ),
            )
            job_id = int(cursor.fetchone()[0])
            _job_transition(db, job_id, JobState.QUEUED, f"submitted via {source}")
        return self.job(job_id)

    def job(self, job_id: int) -> Job:
        """One job.

        Raises:
            InputError: no job has that id.
        """
        found = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise InputError(
                f"job {job_id}: no such job in this job store; 'pacsman jobs' lists them"
            )
        return _job(found[0])

    def jobs(self, states: Sequence[JobState] = ()) -> list[Job]:
        """Every job (or those in ``states``), newest first."""
        if states:
            marks = ",".join("?" * len(states))
            rows = self._read(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id DESC",
                [s.value for s in states],
            )
        else:
            rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC")
        return [_job(r) for r in rows]

    def jobs_by_id(self, job_ids: Sequence[int]) -> list[Job]:
        """The jobs with these ids (those that exist)."""
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", list(job_ids))
        return [_job(r) for r in rows]

    def job_queryfile(self, job_id: int) -> bytes:
        """The bytes of the job's query file, as submitted."""
        found = self._read("SELECT queryfile FROM jobs WHERE id = ?", (job_id,))
        return bytes(found[0][0]) if found else b""

    def job_transitions(self, job_id: int) -> list[tuple[str, str, str]]:
        """``(at, state, detail)`` of every change of the job, oldest first."""
        return [
            (str(r[0]), str(r[1]), str(r[2]))
            for r in self._read(
                "SELECT at, state, detail FROM job_transitions WHERE job_id = ? ORDER BY id",
                (job_id,),
            )
        ]

    # -- claiming and settling --------------------------------------------------------------

    def claim_job(
        self, node_name: str, *, skip: Sequence[int] = (), lease_seconds: float = 30.0
    ) -> Job | None:
        """Claim the next job for ``node_name``: QUEUED, or RUNNING on a node whose lease on
        it expired (killed, stopped or cut off); highest priority, then oldest.

        One transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
        SQLite): a job claimed here is RUNNING and owned, under a new lease generation,
        before any other node or thread can see it claimable.  ``skip`` leaves out jobs the
        caller cannot start yet.
        """
        marks = ",".join("?" * len(skip))
        extra = f" AND id NOT IN ({marks})" if skip else ""
        with self._tx() as db:
            found = db.execute(
                "SELECT id, state, owner_node FROM jobs WHERE (state = ? OR (state = ? AND "
                f"lease_expires_at > 0 AND lease_expires_at <= {EPOCH_NOW})){extra} "
                "ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                [JobState.QUEUED.value, JobState.RUNNING.value, *skip],
            ).fetchone()
            if found is None:
                return None
            job_id, state, owner = int(found[0]), str(found[1]), str(found[2])
            db.execute(
                "UPDATE jobs SET state = ?, owner_node = ?, requested = CASE WHEN state = ? "
                "THEN requested ELSE '' END, generation = generation + 1, "
                f"lease_expires_at = {EPOCH_NOW} + ?, "
                "started_at = CASE started_at WHEN '' THEN ? ELSE started_at END WHERE id = ?",
                (
                    JobState.RUNNING.value,
                    node_name,
                    JobState.RUNNING.value,
                    float(lease_seconds),
                    _now(),
                    job_id,
                ),
            )
            taken = f" (taken over from {owner})" if state == JobState.RUNNING.value else ""
            _job_transition(db, job_id, JobState.RUNNING, f"claimed by {node_name}{taken}")
            db.notify(CHANNEL)
        return self.job(job_id)

    def joinable_jobs(self, *, skip: Sequence[int] = ()) -> list[Job]:
        """RUNNING jobs whose studies are open to every node and not all claimed: another
        node may join in, highest priority first."""
        marks = ",".join("?" * len(skip))
        extra = f" AND j.id NOT IN ({marks})" if skip else ""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state = ? AND j.studies_open = 1"
            f"{extra} AND EXISTS (SELECT 1 FROM study_claims c WHERE c.job_id = j.id AND "
            f"(c.state = 'OPEN' OR (c.state = 'CLAIMED' AND c.lease_expires_at <= {EPOCH_NOW})))"
            " ORDER BY j.priority DESC, j.id",
            [JobState.RUNNING.value, *skip],
        )
        return [_job(r) for r in rows]

    def attach_run(self, job_id: int, run_id: int) -> None:
        """Record the run a job works through (found again when the job is resumed)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (run_id, job_id))

    def settle_job(
        self, job_id: int, state: JobState, detail: str = "", *, owner: str | None = None
    ) -> bool:
        """Record how a job's work ended (or that it waits again): one transition.

        With ``owner``, only while that node still owns the job (a node whose lease was
        taken over settles nothing); returns whether the job was settled.
        """
        finished = _now() if state in FINAL_STATES else ""
        only = "" if owner is None else " AND owner_node = ? AND state = 'RUNNING'"
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, detail = ?, requested = '', finished_at = ?, "
                "owner_node = CASE WHEN ? = 1 THEN owner_node ELSE '' END, "
                f"lease_expires_at = 0 WHERE id = ?{only}",
                (
                    state.value,
                    detail,
                    finished,
                    int(state is JobState.RUNNING),
                    job_id,
                    *(() if owner is None else (owner,)),
                ),
            )
            if cursor.rowcount == 0:
                return False
            _job_transition(db, job_id, state, detail)
            if state in FINAL_STATES or state is JobState.PAUSED:  # every node lets go
                db.execute(
                    "UPDATE study_claims SET state = 'OPEN', owner_node = '', "
                    "lease_expires_at = 0 WHERE job_id = ? AND state = 'CLAIMED'",
                    (job_id,),
                )
            db.notify(CHANNEL)
        return True

    def requeue_owned(self, node_name: str) -> list[int]:
        """At start: jobs this node held RUNNING when it stopped go back to QUEUED (or, when
        a cancel or pause was asked of them meanwhile, become CANCELLED or PAUSED)."""
        with self._tx() as db:
            found = db.execute(
                "SELECT id, requested FROM jobs WHERE state = ? AND owner_node = ?",
                (JobState.RUNNING.value, node_name),
            ).fetchall()
            for job_id, requested in found:
                state, detail = _REQUEUED.get(
                    str(requested), (JobState.QUEUED, f"{node_name} restarted: resumed")
                )
                db.execute(
                    "UPDATE jobs SET state = ?, owner_node = '', requested = '', detail = ?, "
                    "lease_expires_at = 0 WHERE id = ?",
                    (state.value, detail, job_id),
                )
                _job_transition(db, int(job_id), state, detail)
            db.execute(
                "UPDATE study_claims SET state = 'OPEN', owner_node = '', lease_expires_at = 0 "
                "WHERE owner_node = ? AND state = 'CLAIMED'",
                (node_name,),
            )
        return [int(r[0]) for r in found if not r[1]]

    # -- operators' requests --------------------------------------------------------------

    def request_job(self, job_id: int, action: JobAction) -> Job:
        """Apply ``action`` at once where the job is not running; else leave it for its node.

        Raises:
            InputError: no such job, or the action does not apply to the job's state.
        """
        job = self.job(job_id)
        change = _direct_change(job, action)
        with self._tx() as db:
            if change is not None:
                state, detail = change
                db.execute(
                    "UPDATE jobs SET state = ?, requested = '', detail = ?, finished_at = ? "
                    "WHERE id = ?",
                    (state.value, detail, _now() if state in FINAL_STATES else "", job_id),
                )
                _job_transition(db, job_id, state, detail)
                if action is JobAction.RETRY_FAILED:
                    db.execute(
                        "UPDATE study_claims SET state = 'OPEN' WHERE job_id = ? "
                        "AND state = 'FAILED'",
                        (job_id,),
                    )
            else:
                db.execute("UPDATE jobs SET requested = ? WHERE id = ?", (action.value, job_id))
                _job_transition(db, job_id, job.state, f"{action.value} requested")
            db.notify(CHANNEL)
        return self.job(job_id)

    def requests_for(self, node_name: str) -> dict[int, JobAction]:
        """Actions asked of RUNNING jobs that ``node_name`` holds."""
        return {
            int(r[0]): JobAction(r[1])
            for r in self._read(
                "SELECT id, requested FROM jobs WHERE state = ? AND owner_node = ? "
                "AND requested != ''",
                (JobState.RUNNING.value, node_name),
            )
        }

    def series_progress(self, run_ids: Sequence[int]) -> tuple[int, int, int]:
        """``(settled, total, retrying)`` series of these runs: COMPLETE or FAILED count as
        settled; INCOMPLETE ones are asked for again."""
        if not run_ids:
            return 0, 0, 0
        marks = ",".join("?" * len(run_ids))
        found = self._read(
            "SELECT COUNT(*), "
            "COALESCE(SUM(CASE WHEN state IN ('COMPLETE', 'FAILED') THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN state = 'INCOMPLETE' THEN 1 ELSE 0 END), 0) "
            f"FROM series WHERE run_id IN ({marks})",
            list(run_ids),
        )
        return int(found[0][1]), int(found[0][0]), int(found[0][2])

    def changed_elsewhere(self) -> bool:
        """Whether another connection changed the queue since the last call, e.g.
        ``pacsman submit`` queued a job: SQLite's ``data_version`` (cheap, no disk read), or
        a PostgreSQL NOTIFY on the work channel (LISTEN, no polling of the database)."""
        with self._lock:
            try:
                return self._db.changed_elsewhere(CHANNEL)
            except self._db.errors as exc:
                self._raise_for(exc)
                raise

    # -- service nodes ----------------------------------------------------------------------

    def register_node(
        self, node_name: str, *, http_url: str, ae_title: str = "", scp_port: int = 0
    ) -> None:
        """Record that ``pacsman serve`` runs here as ``node_name`` (replacing an old entry),
        with its Storage SCP's AE title and port (the PACS's move destination)."""
        now = _now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO service_nodes(node_name, pid, host, http_url, started_at, "
                "heartbeat_at, stopped_at, status, ae_title, scp_port) "
                "VALUES (?,?,?,?,?,?,'','',?,?) "
                "ON CONFLICT (node_name) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
                "http_url = excluded.http_url, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at, stopped_at = '', status = '', "
                "ae_title = excluded.ae_title, scp_port = excluded.scp_port",
                (
                    node_name,
                    os.getpid(),
                    socket.gethostname(),
                    http_url,
                    now,
                    now,
                    ae_title,
                    scp_port,
                ),
            )

    def beat_node(self, node_name: str, status: str) -> None:
        """The service's heartbeat, with its one-line status."""
        with self._tx() as db:
            db.execute(
                "UPDATE service_nodes SET heartbeat_at = ?, status = ? WHERE node_name = ?",
                (_now(), status, node_name),
            )

    def stop_node(self, node_name: str, status: str) -> None:
        """Record that the service stopped cleanly."""
        with self._tx() as db:
            db.execute(
                "UPDATE service_nodes SET stopped_at = ?, status = ? WHERE node_name = ?",
                (_now(), status, node_name),
            )

    def service_nodes(self) -> list[ServiceNode]:
        """Every node that ever served this job store."""
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM service_nodes ORDER BY node_name")
        return [ServiceNode(str(r[0]), int(r[1]), *(str(x) for x in r[2:])) for r in rows]


#: What a request left on a RUNNING job becomes when its node starts again.
_REQUEUED = {
    JobAction.CANCEL.value: (JobState.CANCELLED, "cancelled (asked while its node was down)"),
    JobAction.PAUSE.value: (JobState.PAUSED, "paused (asked while its node was down)"),
}


def _job_transition(db: Database, job_id: int, state: JobState, detail: str) -> None:
    db.execute(
        "INSERT INTO job_transitions(job_id, state, detail, at) VALUES (?,?,?,?)",
        (job_id, state.value, detail, _now()),
    )


def _direct_change(job: Job, action: JobAction) -> tuple[JobState, str] | None:
    """The state ``action`` gives a job no node is working on; None when its node must act.

    Raises:
        InputError: the action does not apply to the job's state.
    """
    state = job.state
    if action is JobAction.CANCEL and state in (JobState.QUEUED, JobState.PAUSED):
        return JobState.CANCELLED, "cancelled"
    if action is JobAction.PAUSE and state is JobState.QUEUED:
        return JobState.PAUSED, "paused"
    if action is JobAction.RESUME and state is JobState.PAUSED:
        return JobState.QUEUED, "resumed"
    if action is JobAction.RETRY_FAILED and state in (JobState.FAILED, JobState.DONE):
        return JobState.QUEUED, "retry-failed: failed rows and series are tried again"
    if state is JobState.RUNNING and action in (JobAction.CANCEL, JobAction.PAUSE):
        return None
    raise InputError(
        f"job {job.id} is {state.value}: '{action.value}' does not apply; {_what_applies(state)}"
    )


def _what_applies(state: JobState) -> str:
    applies = {
        JobState.QUEUED: "cancel or pause it",
        JobState.RUNNING: "cancel or pause it",
        JobState.PAUSED: "resume or cancel it",
        JobState.DONE: "retry-failed runs it again",
        JobState.FAILED: "retry-failed tries its failed rows and series again",
        JobState.CANCELLED: "submit the query file again for a new job",
    }
    return applies[state]
