"""``pacsman status`` and ``pacsman runs``: how far a run is, what failed and why, what next.

Both read the job store only, opened read-only (:class:`~pacsman.jobstore.JobStore` with
``read_only``): they are safe while a run works, never write a file, and need no config
beyond where the job store is (``--jobstore PATH``, or ``jobstore`` in the config).

A run counts as running only while its heartbeat is fresh: the process working on it beats
every :data:`~pacsman.pipeline._runview.HEARTBEAT_SECONDS` seconds (:func:`start_heartbeat`,
called by the pipeline) and a heartbeat older than
:data:`~pacsman.pipeline._runview.STALE_AFTER_SECONDS`, or a process gone from this host,
means the run was interrupted.

``pacsman status`` exits 0 when the run finished and no row needs attention, 1 when rows need
attention or the run was interrupted or stopped (it prints the command that resumes it), and
4 while the run is still going.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsman.config import Config
from pacsman.config.options import add_store_options, open_jobstore
from pacsman.errors import (
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_SOME_FAILED,
    InputError,
    QueryFileError,
)
from pacsman.jobstore import HeadNode, JobStore, NodeState, Run, RunRecord, StudyPlace
from pacsman.jobstore.jobs import Job, JobState
from pacsman.jobstore.nifti import nifti_counts
from pacsman.pipeline._runstatus import (
    RunStatus,
    _duration,
    run_line_json,
    run_status,
    runs_lines,
    status_json,
    status_lines,
)
from pacsman.pipeline._runview import HEARTBEAT_SECONDS, options_of, show_time
from pacsman.pipeline.dqrstatus import (
    dqr_run_status,
    dqr_status_json,
    dqr_status_lines,
    is_dqr_run,
)
from pacsman.queryfile import load_queryfile

if TYPE_CHECKING:
    from pacsman.pipeline import RunOptions

__all__ = [
    "add_run_choice",
    "add_store_options",
    "check_run_choice",
    "find_run",
    "open_jobstore",
    "run_options",
    "runs_main",
    "start_heartbeat",
    "status_main",
]


# -- the pipeline's side: who works on the run, with which options --------------------------


def run_options(options: RunOptions, config: Config, previous: Mapping[str, Any]) -> dict[str, Any]:
    """What a run is asked for now, merged with what earlier invocations asked for (steps
    asked for once stay asked for): enough to print the command that resumes it."""
    return {
        "queryfile": str(options.queryfile.resolve()),
        "config": str(config.source.resolve()) if config.source else "",
        "out_directory": str(options.out_directory.resolve()),
        "save": options.save or bool(previous.get("save")),
        "anonymize": options.anonymize or bool(previous.get("anonymize")),
        "push": options.push or previous.get("push") or "",
        "workers": options.workers,
        "pacs": options.pacs or "",
        "sheet": options.sheet or "",
        "encoding": options.encoding or "",
        "nifti": options.nifti or bool(previous.get("nifti")),
        "bids": str(options.bids.resolve()) if options.bids else previous.get("bids") or "",
        "cwd": os.getcwd(),
    }


def start_heartbeat(store: JobStore, run: Run, options: RunOptions, config: Config) -> None:
    """Record this process and ``options`` on ``run`` and beat until the store is left."""
    previous = options_of(store.run_record(run.id))
    merged = run_options(options, config, previous)
    store.start_heartbeat(run, options_json=json.dumps(merged), interval=HEARTBEAT_SECONDS)


# -- finding the run and the store -----------------------------------------------------------


def find_run(
    store: JobStore, queryfile: Path | None, run_id: int | None, *, job_id: int | None = None
) -> RunRecord:
    """The run asked for: service job ``job_id``'s, else ``run_id``, else the newest run of
    ``queryfile``'s rows, else the run worked on last.

    Raises:
        InputError: no such run or job, or the job has not started (the message says how
            to list them).
    """
    listed = f"'pacsman runs --jobstore {store.where}' lists the runs it holds"
    if job_id is not None:
        run_id = _job_run_id(store, job_id)
    if run_id is not None:
        try:
            return store.run_record(run_id)
        except KeyError:
            raise InputError(
                f"run {run_id} is not in the job store {store.where}; {listed}"
            ) from None
    if queryfile is not None:
        found = _runs_of_file(store, queryfile)
        if not found:
            raise InputError(f"no run of {queryfile} is in the job store {store.where}; {listed}")
        return found[0]
    runs = [r for r in store.run_records() if not r.retired_at]
    if not runs:
        raise InputError(f"the job store {store.where} holds no run yet")
    return max(runs, key=lambda r: (r.started_at or r.created_at, r.id))


def _job_run_id(store: JobStore, job_id: int) -> int:
    """Raises: InputError: no such job, or it has no run yet."""
    job = store.job(job_id)
    if job.run_id is None:
        raise InputError(
            f"job {job.id} is {job.state.value}, not started yet: it has no rows to show; "
            "ask again once it runs ('pacsman jobs' lists the queue)"
        )
    return job.run_id


def _job_next_step(job: Job) -> str:
    """What resumes or retries a service job (not the one-shot command)."""
    steps = {
        "QUEUED": f"nothing: job {job.id} is queued, and the service resumes it",
        "RUNNING": f"nothing: job {job.id} is running on {job.owner_node or 'the service'}",
        "PAUSED": f"pacsman resume {job.id}",
        "CANCELLED": "pacsman submit the query file again (a cancelled job stays cancelled)",
    }
    return steps.get(job.state.value, f"pacsman retry-failed {job.id}")


def _not_started(job: Job, *, as_json: bool) -> int:
    """``pacsman status --job N`` before job N has a run: 4 while QUEUED, else 1."""
    if as_json:
        print(json.dumps({"job": job.id, "state": job.state.value, "run": None}, indent=2))
    else:
        print(f"job {job.id} is {job.state.value}, not started yet")
    return EXIT_RUNNING if job.state is JobState.QUEUED else EXIT_SOME_FAILED


def _runs_of_file(store: JobStore, queryfile: Path) -> list[RunRecord]:
    """The runs of these rows; when the file no longer reads (or has other rows now), the runs
    recorded for the same path, newest first."""
    try:
        found = store.runs_of(load_queryfile(queryfile))
    except QueryFileError:
        found = []
    if found:
        return found
    target = queryfile.resolve()
    same = [r for r in store.run_records() if _recorded_path(r) == target and not r.retired_at]
    return sorted(same, key=lambda r: r.id, reverse=True)


def _recorded_path(record: RunRecord) -> Path:
    path = Path(record.queryfile)
    cwd = options_of(record).get("cwd")
    return (Path(cwd) / path if cwd and not path.is_absolute() else path).resolve()


# -- the head nodes, and which node holds each study -----------------------------------------

#: Studies listed one by one under ``status --job N`` (``--json`` lists them all).
_STUDIES_SHOWN = 20
#: The width of the labels of ``pacsman status`` (``  state        ``).
_LABEL = 15


def _node_state(node: HeadNode, now: datetime) -> str:
    """``alive: ... heartbeat 2 s ago``, ``stale: no heartbeat for 5 min 00 s``, ``stopped ...``."""
    age = node.heartbeat_age(now)
    where = f"process {node.pid} on {node.host}"
    scp = f"Storage SCP {node.ae_title or '?'} on port {node.scp_port or '?'}"
    state = node.state(now)
    if state is NodeState.STOPPED:
        return f"stopped at {show_time(node.stopped_at)} ({where}), {scp}"
    if state is NodeState.ALIVE:
        return f"alive: {where}, {scp}, heartbeat {_duration(age or 0)} ago"
    silent = "never beat" if age is None else f"no heartbeat for {_duration(age)}"
    return f"stale: {silent} ({where}), {scp}"


def _head_node_lines(nodes: Sequence[HeadNode], now: datetime) -> list[str]:
    """The ``head nodes`` section of ``pacsman status``; none for a store no service used."""
    if not nodes:
        return []
    states = Counter(node.state(now).value for node in nodes)
    tally = ", ".join(f"{states[s.value]} {s.value}" for s in NodeState if states[s.value])
    lines = [f"  head nodes   {len(nodes)}: {tally}"]
    width = max(_LABEL, *(len(node.node_name) + 5 for node in nodes))
    for node in nodes:
        pad = " " * width
        lines.append(f"    {node.node_name:<{width - 4}}{_node_state(node, now)}")
        lines.append(f"{pad}studies: {node.studies_text()}")
        if node.status:
            last = "now" if node.state(now) is NodeState.ALIVE else "last status"
            lines.append(f"{pad}{last}: {node.status}")
    return lines


def _place_counts(places: Sequence[StudyPlace]) -> str:
    states = Counter(place.shown_state for place in places)
    words = {"OPEN": "open", "CLAIMED": "held", "EXPIRED": "lease expired", "DONE": "done"}
    words["FAILED"] = "failed"
    return ", ".join(f"{states[key]} {word}" for key, word in words.items() if states[key])


def _node_counts(counts: Counter[str]) -> str:
    words = {"CLAIMED": "held now", "EXPIRED": "lease expired", "DONE": "done"}
    words["FAILED"] = "failed"
    return ", ".join(f"{counts[key]} {word}" for key, word in words.items() if counts[key])


def _study_lines(
    job_id: int, places: Sequence[StudyPlace], nodes: Sequence[HeadNode], now: datetime
) -> list[str]:
    """``status --job N``: the job's studies per head node, and which node holds each (by
    query-file line: a StudyInstanceUID is an identifier, which status never shows)."""
    if not places:
        return []
    per_node = StudyPlace.by_node(places)
    state = {node.node_name: node.state(now).value for node in nodes}
    lines = [
        f"  studies      {len(places)} in job {job_id} on {len(per_node)} head node(s): "
        + _place_counts(places)
    ]
    width = max(_LABEL, *(len(name) + 5 for name in per_node))
    for name, counts in per_node.items():
        known = f" ({state[name]})" if name in state else ""
        lines.append(f"    {name:<{width - 4}}{_node_counts(counts)}{known}")
    lines.append("which node holds each study (expired leases first, then held, failed, open):")
    shown = StudyPlace.first_to_look_at(places)
    for place in shown[:_STUDIES_SHOWN]:
        lines.append(f"  line {place.line:<5} {place.pacs}  {place.shown_state:<8} {place.where()}")
    if len(shown) > _STUDIES_SHOWN:
        more = len(shown) - _STUDIES_SHOWN
        lines.append(f"  ... and {more} more: pacsman status --job {job_id} --json lists them all")
    return lines


def _head_nodes_json(nodes: Sequence[HeadNode], now: datetime) -> list[dict[str, Any]]:
    return [
        {**asdict(node), "state": node.state(now).value, "heartbeat_age": node.heartbeat_age(now)}
        for node in nodes
    ]


def _studies_json(places: Sequence[StudyPlace]) -> dict[str, Any]:
    """Where a job's studies are, per node and one by one (no StudyInstanceUID)."""
    return {
        "by_node": {name: dict(counts) for name, counts in StudyPlace.by_node(places).items()},
        "studies": [place.to_json() for place in places],
    }


# -- the commands ----------------------------------------------------------------------------


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pacsman {command}", description=description)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_store_options(parser)
    return parser


def add_run_choice(parser: argparse.ArgumentParser) -> None:
    """``[QUERYFILE | --run ID]``."""
    parser.add_argument(
        "queryfile", nargs="?", type=Path, help="the query file of the run (default: the last run)"
    )
    parser.add_argument("--run", type=int, dest="run_id", metavar="ID", help="the run's number")
    parser.add_argument(
        "--job", type=int, dest="job_id", metavar="N", help="the run of service job N"
    )


def check_run_choice(args: argparse.Namespace) -> None:
    """Raises: InputError: more than one of QUERYFILE, --run and --job."""
    if sum(x is not None for x in (args.queryfile, args.run_id, args.job_id)) > 1:
        raise InputError("give one of a query file, --run ID or --job N")


def status_main(argv: Sequence[str]) -> int:
    """``pacsman status``; returns 0 done, 1 attention needed (or interrupted), 4 running.

    Raises:
        InputError: no such run, or no job store given.
        JobStoreError: the job store cannot be read.
    """
    parser = _parser(
        "status",
        "How far a run is, what failed and why, and what to do next; reads only the job store. "
        "Exit codes: 0 finished and nothing needs attention, 1 rows need attention or the run "
        "was interrupted (the command that resumes it is printed), 4 still running.",
    )
    add_run_choice(parser)
    args = parser.parse_args(list(argv))
    check_run_choice(args)
    with open_jobstore(args.jobstore, args.config) as store:
        if args.job_id is not None and store.job(args.job_id).run_id is None:
            return _not_started(store.job(args.job_id), as_json=args.json)
        record = find_run(store, args.queryfile, args.run_id, job_id=args.job_id)
        if is_dqr_run(store, record):  # pacsman dqr: XNAT pulled the studies
            return _dqr_status(store, record, as_json=args.json)
        status = run_status(store, record)
        if args.job_id is not None:  # a service job is resumed through the service
            status = replace(status, resume=_job_next_step(store.job(args.job_id)))
        nodes = store.head_nodes()
        places = store.study_places(args.job_id) if args.job_id is not None else []
        nifti = nifti_counts(store, status.record)
    now = datetime.now(UTC)
    if args.json:
        found = _status_json(status, nodes, places, now, job=args.job_id)
        print(json.dumps({**found, **({"nifti": nifti.to_json()} if nifti.any else {})}, indent=2))
    elif args.job_id is not None:
        cluster = nifti.lines() + _study_lines(args.job_id, places, nodes, now)
        print("\n".join(status_lines(status, cluster=cluster)))
    else:
        cluster = nifti.lines() + _head_node_lines(nodes, now)
        print("\n".join(status_lines(status, cluster=cluster)))
    return status.exit_code


def _dqr_status(store: JobStore, record: RunRecord, *, as_json: bool) -> int:
    """``pacsman status`` of a ``pacsman dqr`` run; returns its exit code."""
    status = dqr_run_status(store, record)
    if as_json:
        print(json.dumps(dqr_status_json(status), indent=2))
    else:
        print("\n".join(dqr_status_lines(status)))
    return status.exit_code


def _run_status(store: JobStore, record: RunRecord) -> RunStatus:
    """A run's status for ``pacsman runs``, a ``pacsman dqr`` run's too."""
    if is_dqr_run(store, record):
        return dqr_run_status(store, record).as_run_status()
    return run_status(store, record)


def _status_json(
    status: RunStatus,
    nodes: Sequence[HeadNode],
    places: Sequence[StudyPlace],
    now: datetime,
    *,
    job: int | None,
) -> dict[str, Any]:
    """``status --json``, with the head nodes (none: no service used the store) and, for a
    job, where its studies are."""
    found = status_json(status)
    if nodes:
        found["head_nodes"] = _head_nodes_json(nodes, now)
    if job is not None and places:
        found["studies"] = _studies_json(places)
    return found


def runs_main(argv: Sequence[str]) -> int:
    """``pacsman runs``: every run of the job store, one line each; returns 0.

    Raises:
        InputError: no job store given.
        JobStoreError: the job store cannot be read.
    """
    parser = _parser("runs", "List the runs of the job store; reads only the job store.")
    args = parser.parse_args(list(argv))
    with open_jobstore(args.jobstore, args.config) as store:
        statuses = [_run_status(store, record) for record in store.run_records()]
    if args.json:
        print(json.dumps([run_line_json(s) for s in statuses], indent=2))
    else:
        print("\n".join(runs_lines(statuses, store.where)))
    return EXIT_OK
