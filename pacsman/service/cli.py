"""The service's commands: ``submit``, ``jobs``, ``cancel``, ``pause``, ``resume``,
``retry-failed`` and ``serve`` (stage commands of :mod:`pacsman.cli`).

The job store is the queue: ``pacsman submit`` validates the query file here, exactly as
the inbox and the HTTP API do (:func:`~pacsman.service.submit.queue_job`), and adds the job
to the config's ``jobstore``, where the running ``pacsman serve`` claims it.  No network is
needed.  A job submitted while no service runs on that job store waits for one (a warning
says so).  The actions write a request the same way: a job no node works on changes at
once; a RUNNING one is changed by its node at the next series.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacsman.config import Config, load_config
from pacsman.config.options import (
    add_common_options,
    add_push_option,
    add_queryfile_options,
    add_store_options,
    open_jobstore,
)
from pacsman.errors import EXIT_OK, ConfigError, InputError, QueryFileError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import PRIORITIES, Job, JobAction, JobOptions, JobState, ServiceNode
from pacsman.models import ItemState
from pacsman.service.inbox import named_after, read_queryfile
from pacsman.service.submit import queue_job

__all__ = [
    "PRIORITY_RANGE",
    "cancel_main",
    "jobs_main",
    "pause_main",
    "resume_main",
    "retry_failed_main",
    "serve_main",
    "submit_main",
]

#: ``--priority``: higher is claimed first; 0 is the default.
PRIORITY_RANGE = (PRIORITIES.start, PRIORITIES.stop - 1)
_RETRIEVED = frozenset({ItemState.COMPLETE, ItemState.INCOMPLETE, ItemState.FAILED})


# -- pacsman submit ----------------------------------------------------------------------------


def _submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman submit",
        description="Queue a query file as a job of the running 'pacsman serve': the file is "
        "validated here first (a bad file queues nothing: exit 2, every problem located), "
        "then added to the config's job store, where the service claims it. Without --save, "
        "--anonymize or --push the job only queries (the info CSV).",
    )
    parser.add_argument("queryfile", type=Path, metavar="QUERYFILE", help="CSV or .xlsx")
    parser.add_argument(
        "--info",
        action="store_true",
        help="as in the one-shot command: every job queries and writes the info CSV; "
        "alone, the job only queries",
    )
    parser.add_argument("--save", action="store_true", help="retrieve and verify every series")
    parser.add_argument(
        "--anonymize", action="store_true", help="de-identify every COMPLETE series (PS3.15)"
    )
    add_push_option(parser)
    parser.add_argument(
        "--nifti",
        action="store_true",
        help="as in the one-shot command: convert each de-identified series with dcm2niix "
        "(with --push xnat also into each scan's NIFTI resource). Needs --anonymize (or --push)",
    )
    parser.add_argument(
        "--bids",
        type=Path,
        metavar="MAP",
        help="with --nifti: also a BIDS folder, from the mapping file MAP (checked here; the "
        "service reads it from the same path when the job runs)",
    )
    parser.add_argument(
        "--pacs",
        metavar="NAME",
        help="PACS node for rows without a Pacs column (default: default_pacs, else the "
        "first node)",
    )
    add_queryfile_options(parser)
    low, high = PRIORITY_RANGE
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help=f"{low} to {high}; higher is claimed first (default: 0)",
    )
    parser.add_argument("--name", metavar="TEXT", help="the job's name (default: the file's name)")
    add_common_options(parser)
    return parser


def _job_options(args: argparse.Namespace) -> JobOptions:
    """The command's options as a job's (``--push`` implies --save and --anonymize)."""
    pushes = args.push is not None
    return JobOptions(
        save=args.save or pushes,
        anonymize=args.anonymize or pushes,
        push=args.push,
        pacs=args.pacs,
        sheet=args.sheet,
        encoding=args.encoding,
        nifti=args.nifti,
        bids=None if args.bids is None else str(args.bids.absolute()),
    )


def submit_main(argv: Sequence[str]) -> int:
    """``pacsman submit``: validate the query file, queue it; returns 0.

    Raises:
        QueryFileError: the file is bad (every problem located; nothing queued).
        InputError, ConfigError: the options or the config are wrong (nothing queued).
        JobStoreError: the job store cannot be written.
    """
    args = _submit_parser().parse_args(list(argv))
    low, high = PRIORITY_RANGE
    if not low <= args.priority <= high:
        raise InputError(f"--priority {args.priority}: use {low} to {high} (higher goes first)")
    config = load_config(args.config)
    shown = str(args.queryfile)
    content = read_queryfile(args.queryfile)
    with JobStore(config.jobstore) as store:
        try:
            job = queue_job(
                store,
                config,
                filename=shown,
                content=content,
                options=_job_options(args),
                name=args.name,
                priority=args.priority,
                source="cli",
            )
        except QueryFileError as exc:
            raise named_after(exc, shown) from None
        nodes = store.service_nodes()
    print(f"job {job.id} queued ({job.name}): pacsman status --job {job.id}{_flag(args)}")
    _warn_without_service(nodes, config.jobstore, f"job {job.id} waits until one starts")
    return EXIT_OK


def _flag(args: argparse.Namespace) -> str:
    return "" if args.config is None else f" --config {args.config}"


def _live(nodes: Sequence[ServiceNode]) -> list[ServiceNode]:
    now = datetime.now(UTC)
    return [node for node in nodes if node.alive(now)]


def _warn_without_service(
    nodes: Sequence[ServiceNode], jobstore: Path | str, consequence: str
) -> None:
    if not _live(nodes):
        print(
            f"pacsman: warning: no 'pacsman serve' runs on the job store {jobstore}, so "
            f"{consequence} ('pacsman serve' with the same config, or its systemd unit)",
            file=sys.stderr,
        )


# -- pacsman jobs -------------------------------------------------------------------------------


def jobs_main(argv: Sequence[str]) -> int:
    """``pacsman jobs``: the queue, newest first; returns 0.

    Raises:
        InputError: no job store given.
        JobStoreError: the job store cannot be read.
    """
    parser = argparse.ArgumentParser(
        prog="pacsman jobs",
        description="List the service's jobs, newest first: state, priority, options, "
        "node and progress; reads only the job store.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_store_options(parser)
    args = parser.parse_args(list(argv))
    with open_jobstore(args.jobstore, args.config) as store:
        listed = [(job, _progress(store, job)) for job in store.jobs()]
        nodes = store.service_nodes()
        where = store.where  # a SQLite file, or a PostgreSQL URL without its password
    if args.json:
        print(json.dumps(_jobs_json(listed, nodes), indent=2))
    else:
        print("\n".join(_jobs_lines(listed, nodes, where)))
    return EXIT_OK


def _progress(store: JobStore, job: Job) -> dict[str, int]:
    """Rows queried and, for a retrieving job, series retrieved: ``{}`` before it starts."""
    if job.run_id is None:
        return {}
    try:
        record = store.run_record(job.run_id)
    except KeyError:
        return {}
    rows = store.row_queries(record)
    found = {"rows": len(rows), "rows_queried": sum(r.state is not ItemState.PENDING for r in rows)}
    if job.options.save:
        series = store.series_for_retrieve(store.run_by_id(job.run_id))
        found["series"] = len(series)
        found["series_retrieved"] = sum(s.state in _RETRIEVED for s in series)
    return found


def _progress_text(progress: dict[str, int]) -> str:
    if not progress:
        return "-"
    text = f"{progress['rows_queried']}/{progress['rows']} rows queried"
    if "series" in progress:
        text += f", {progress['series_retrieved']}/{progress['series']} series retrieved"
    return text


def _state_text(job: Job) -> str:
    return f"{job.state.value} ({job.requested} requested)" if job.requested else job.state.value


def _when(iso: str) -> str:
    """``2026-12-05 20:34:27 UTC`` (as ``pacsman status`` shows times)."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _jobs_lines(
    listed: Sequence[tuple[Job, dict[str, int]]], nodes: Sequence[ServiceNode], where: str
) -> Iterator[str]:
    yield _service_line(nodes, where)
    if not listed:
        yield "no jobs yet; queue one with: pacsman submit QUERYFILE [--save] [--push]"
        return
    header = ("id", "name", "state", "prio", "options", "submitted", "node", "progress")
    table = [
        (
            str(job.id),
            job.name,
            _state_text(job),
            str(job.priority),
            job.options.describe(),
            _when(job.submitted_at),
            job.owner_node or "-",
            _progress_text(progress),
        )
        for job, progress in listed
    ]
    widths = [max(len(line[i]) for line in (header, *table)) for i in range(len(header))]
    for line in (header, *table):
        yield "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()


def _service_line(nodes: Sequence[ServiceNode], where: str) -> str:
    live = _live(nodes)
    if not live:
        return f"job store {where}: no 'pacsman serve' runs on it (queued jobs wait)"
    names = ", ".join(f"{n.node_name} (process {n.pid} on {n.host})" for n in live)
    return f"job store {where}: served by {names}"


def _jobs_json(
    listed: Sequence[tuple[Job, dict[str, int]]], nodes: Sequence[ServiceNode]
) -> dict[str, Any]:
    live = {n.node_name for n in _live(nodes)}
    return {
        "service_nodes": [{**asdict(n), "alive": n.node_name in live} for n in nodes],
        "jobs": [
            {
                **asdict(job),
                "state": job.state.value,
                "options": asdict(job.options),
                "options_text": job.options.describe(),
                "progress": progress,
            }
            for job, progress in listed
        ],
    }


# -- cancel, pause, resume, retry-failed ------------------------------------------------------

_ACTION_HELP = {
    JobAction.CANCEL: "Cancel a job: at once when it waits (QUEUED or PAUSED); a RUNNING job "
    "is stopped by the service at the next series. What is done stays done.",
    JobAction.PAUSE: "Pause a job: at once when QUEUED; a RUNNING job is paused by the "
    "service at the next series. 'pacsman resume JOB_ID' goes on.",
    JobAction.RESUME: "Resume a PAUSED job: it is queued again and goes on where it stopped.",
    JobAction.RETRY_FAILED: "Queue a FAILED (or DONE) job again: its failed rows and series "
    "are tried again; what is done stays done.",
}


def _action_parser(action: JobAction) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"pacsman {action.value}",
        description=f"{_ACTION_HELP[action]} Writes the request to the job store.",
    )
    parser.add_argument("job_id", type=int, metavar="JOB_ID", help="the job ('pacsman jobs')")
    add_store_options(parser)
    return parser


def _writable_store(jobstore: Path | str | None, config: Path | None) -> JobStore:
    """The job store to write a request to: ``jobstore``, else the config's.

    Raises:
        InputError: no job store given or found; the file does not exist.
        JobStoreError: the file cannot be used.
    """
    if jobstore is None:
        try:
            jobstore = load_config(config).jobstore
        except ConfigError as exc:
            raise InputError(
                f"{exc}\ngive the job store with --jobstore PATH, or the config that names it "
                "with --config PATH"
            ) from None
    if isinstance(jobstore, Path) and not jobstore.exists():
        raise InputError(
            f"the job store {jobstore} does not exist: no job was ever submitted to it; "
            "check --jobstore or the config's 'jobstore'"
        )
    return JobStore(jobstore)


def _act(action: JobAction, argv: Sequence[str]) -> int:
    """Apply ``action`` to the job named in ``argv``; returns 0.

    Raises:
        InputError: no such job, or the action does not apply to its state.
        JobStoreError: the job store cannot be written.
    """
    args = _action_parser(action).parse_args(list(argv))
    with _writable_store(args.jobstore, args.config) as store:
        job = store.request_job(args.job_id, action)
        nodes = store.service_nodes()
        path = store.where
    print(_outcome(job, action))
    if job.requested or job.state is JobState.QUEUED:
        _warn_without_service(nodes, path, "nothing happens to the job until one runs")
    return EXIT_OK


def _outcome(job: Job, action: JobAction) -> str:
    """What the action did, in one line."""
    if job.requested:
        return (
            f"job {job.id} is {job.state.value}: {action.value} requested; the service "
            f"{_RUNNING_EFFECT[action]} at the next series"
        )
    done = {
        JobState.CANCELLED: f"job {job.id} CANCELLED",
        JobState.PAUSED: f"job {job.id} PAUSED: 'pacsman resume {job.id}' queues it again",
    }
    if job.state in done:
        return done[job.state]
    return f"job {job.id} QUEUED again ({job.detail})"


_RUNNING_EFFECT = {JobAction.CANCEL: "stops it", JobAction.PAUSE: "pauses it"}


def cancel_main(argv: Sequence[str]) -> int:
    """``pacsman cancel JOB_ID`` (:func:`_act`)."""
    return _act(JobAction.CANCEL, argv)


def pause_main(argv: Sequence[str]) -> int:
    """``pacsman pause JOB_ID`` (:func:`_act`)."""
    return _act(JobAction.PAUSE, argv)


def resume_main(argv: Sequence[str]) -> int:
    """``pacsman resume JOB_ID`` (:func:`_act`)."""
    return _act(JobAction.RESUME, argv)


def retry_failed_main(argv: Sequence[str]) -> int:
    """``pacsman retry-failed JOB_ID`` (:func:`_act`)."""
    return _act(JobAction.RETRY_FAILED, argv)


# -- pacsman serve ------------------------------------------------------------------------------


def serve_main(argv: Sequence[str]) -> int:
    """``pacsman serve``: load the config and run the service until it is stopped.

    Raises:
        ConfigError: the config is invalid.
    """
    parser = argparse.ArgumentParser(
        prog="pacsman serve",
        description="Run the pacsman service in the foreground (the systemd unit runs this): "
        "the job queue in the job store, one Storage SCP for every job, the scheduler, the "
        "inbox (serve.inbox) and the local web page and API (serve.http). SIGTERM drains, "
        "SIGHUP reloads the courtesy settings and the inbox.",
    )
    add_common_options(parser)
    args = parser.parse_args(list(argv))
    config = load_config(args.config)
    return _run_service(config)


def _run_service(config: Config) -> int:
    """:func:`pacsman.service.scheduler.run_service`, imported only when the service starts
    (the other commands need none of its peers)."""
    from pacsman.service.scheduler import run_service

    return run_service(config)
