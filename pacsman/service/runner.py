"""One job of the service, through the pipeline, in a thread of its own.

The job's query file (its bytes are in the job store) is written into the job's folder
under ``store_root/jobs/`` (0600; the folder 0700), and the job goes through
:func:`pacsman.pipeline.run_job`: the same steps, checks and records as the one-shot
command, with the service's one Storage SCP and its courtesy shared by every job.  How it
ended becomes the job's state: DONE, FAILED (with the reason), or, when it was asked to
stop, CANCELLED, PAUSED or (a drain) QUEUED again for the next start.  A job whose
connection to the job store was lost (a PostgreSQL restart or fail-over) is QUEUED again
too: it resumes from what the job store holds, on this node or another.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pacsman.config import Config
from pacsman.errors import Halted, InputError, JobStoreConnectionLost, PacsmanError
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.claims import LiveLeases
from pacsman.jobstore.jobs import Job, JobState
from pacsman.layout import private_directory
from pacsman.pipeline import RunOptions, RunSummary, ServiceJob, run_job
from pacsman.pipeline.reception import Reception
from pacsman.push.targets import TargetKind
from pacsman.service.submit import safe_folder_name
from pacsman.throttle import Halt, SharedCourtesy, Ticket, working_for

__all__ = ["JobEnd", "JobThread", "NodeShare", "StopReason", "job_folder"]

_log = structlog.get_logger("pacsman.service")
_TARGETS: dict[str, TargetKind] = {"xnat": "xnat", "dicom": "dicom", "folder": "folder"}


class StopReason:
    """Why a job was halted (the text goes into the job's detail)."""

    CANCEL = "cancel requested"
    PAUSE = "pause requested"
    DRAIN = "the service is stopping"


@dataclass(frozen=True)
class JobEnd:
    """How a job's thread ended: the state to record, why, and the run's summary if any."""

    state: JobState
    detail: str
    summary: RunSummary | None = None
    #: Why the job store's connection was lost ('' if it was not): the job waits again
    #: (QUEUED), a bounded number of times (:data:`~pacsman.service.scheduler.STORE_LOSSES`).
    store_lost: str = ""


def job_folder(config: Config, job: Job) -> Path:
    """``store_root/jobs/00012-ct-cohort``: the job's query file and everything it retrieves."""
    return config.store_root / "jobs" / safe_folder_name(job)


@dataclass(frozen=True)
class NodeShare:
    """What the node's job threads share: the scheduler's job store, the config (as of the
    thread's start: a SIGHUP reloads it), the one Storage SCP's reception, the PACS courtesy
    and the study leases the node renews."""

    store: JobStore
    config: Config
    reception: Reception
    shared: SharedCourtesy
    leases: LiveLeases


@dataclass
class JobThread:
    """A job being worked on: its thread, its halt, and (once ended) how it ended."""

    job: Job
    #: False for a job another node claimed, joined to work on some of its studies.
    coordinator: bool = True
    #: The scheduler's number for this thread (a job may have two on one node).
    number: int = 0
    #: Takes over the studies of a node whose lease expired, then ends.
    takeover: bool = False
    halt: Halt = field(default_factory=Halt)
    end: JobEnd | None = None
    run_id: int | None = None
    thread: threading.Thread | None = None

    def start(self, node: NodeShare, on_end: Callable[[JobThread], None]) -> None:
        """Start working on the job in a daemon thread; ``on_end`` is called when it ends."""

        def work() -> None:
            try:
                self.end = self._work(node)
            finally:
                on_end(self)

        name = f"pacsman-job-{self.job.id}"
        self.thread = threading.Thread(target=work, name=name, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _work(self, node: NodeShare) -> JobEnd:
        job, store, config = self.job, node.store, node.config
        structlog.contextvars.bind_contextvars(job_id=job.id)
        ticket = Ticket(job=str(job.id), priority=job.priority, halt=self.halt, shared=node.shared)
        _log.info("job_started", job_id=job.id, options=job.options.describe())
        try:
            options = _run_options(job, _write_queryfile(store, config, job))
            service_job = ServiceJob(
                job.id,
                node.reception,
                on_run=self._on_run(store),
                node=config.serve.node_name,
                lease_seconds=config.serve.lease_seconds,
                coordinator=self.coordinator,
                run_id=job.run_id,
                takeover=self.takeover,
                leases=node.leases,
            )
            with working_for(ticket):
                summary = run_job(options, config, service_job)
        except Halted:
            return self._halted()
        except JobStoreConnectionLost as exc:  # the node's connection, not the job's fault
            _log.warning("job_store_connection_lost", job_id=job.id, problem=str(exc))
            detail = f"{exc}; the job waits again and resumes from what the job store holds"
            return JobEnd(JobState.QUEUED, detail, store_lost=str(exc))
        except InputError as exc:
            return JobEnd(JobState.FAILED, f"bad input: {exc}")
        except PacsmanError as exc:
            return JobEnd(JobState.FAILED, str(exc))
        except Exception as exc:  # a job must never take the service down
            _log.exception("job_crashed", job_id=job.id)
            return JobEnd(JobState.FAILED, f"unexpected error: {exc!r}; please report it")
        if summary is None:
            return JobEnd(JobState.RUNNING, "helped with its studies")
        if summary.ok:
            return JobEnd(JobState.DONE, "every row done", summary)
        attention = len(summary.failed_lines)
        detail = f"{attention} row(s) need attention: pacsman status --job {job.id}"
        return JobEnd(JobState.FAILED, detail, summary)

    def _on_run(self, store: JobStore) -> Callable[[Run], None]:
        def attach(run: Run) -> None:
            self.run_id = run.id
            if self.coordinator:
                store.attach_run(self.job.id, run.id)

        return attach

    def _halted(self) -> JobEnd:
        reason = self.halt.reason
        if reason == StopReason.CANCEL:
            return JobEnd(JobState.CANCELLED, "cancelled; its files are kept")
        if reason == StopReason.PAUSE:
            return JobEnd(JobState.PAUSED, "paused: pacsman resume resumes it")
        return JobEnd(JobState.QUEUED, "the service stopped; it resumes at the next start")


def _write_queryfile(store: JobStore, config: Config, job: Job) -> Path:
    """The job's query file in its folder (0600), written once from the job store's bytes."""
    folder = job_folder(config, job)
    private_directory(folder)
    path = folder / (Path(job.queryfile_name).name or "query.csv")
    content = store.job_queryfile(job.id)
    if not path.exists() or path.read_bytes() != content:
        temporary = path.with_name(f".{path.name}.part")
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        temporary.replace(path)
    return path


def _run_options(job: Job, queryfile: Path) -> RunOptions:
    options = job.options
    push = _TARGETS.get(options.push or "")
    return RunOptions(
        queryfile=queryfile,
        out_directory=queryfile.parent,
        save=options.save or push is not None,
        anonymize=options.anonymize,
        push=push,
        pacs=options.pacs,
        sheet=options.sheet,
        encoding=options.encoding,
        nifti=options.nifti,
        bids=Path(options.bids) if options.bids else None,
    )
