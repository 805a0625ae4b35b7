"""One ``pacsman dqr`` run, wired end to end (private to the package; see the package
docstring for the steps)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

import structlog

from pacsman.anonymize import MappingTable
from pacsman.anonymize.locations import mapping_location
from pacsman.config import Config
from pacsman.dqr._loop import Loop
from pacsman.dqr._model import DqrStudy, PacsEntry, RowProblem, RowProblemKind
from pacsman.dqr._preflight import preflight
from pacsman.dqr._resolve import resolve_studies
from pacsman.dqr._summary import (
    DqrOptions,
    DqrSummary,
    SummaryFacts,
    info_csv_path,
    resume_command,
    summarize,
    write_dqr_info_csv,
)
from pacsman.dqr._xapi import DqrApi, open_dqr_api
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.dqr import DqrLedger
from pacsman.log import bind_process
from pacsman.models import ItemState, QueryFile, QueryRow
from pacsman.queryfile import load_queryfile

__all__ = ["dqr_config_sha256", "run"]

_log = structlog.get_logger("pacsman.dqr")
#: How often the run beats its heartbeat (as the pipeline's runs: ``pacsman status`` reads it).
_HEARTBEAT_SECONDS = 5.0
#: The row's state when every problem it has is of one kind (else FAILED).
_ROW_STATE = {
    RowProblemKind.DUPLICATE: ItemState.DUPLICATE,
    RowProblemKind.NO_MATCH: ItemState.NO_MATCH,
}


def run(options: DqrOptions, config: Config) -> DqrSummary:
    """See :func:`pacsman.dqr.run_dqr`."""
    started = time.monotonic()
    queryfile = load_queryfile(
        options.queryfile,
        character_sets=config.character_sets,
        default_pacs=config.default_pacs,
        sheet=options.sheet,
        encoding=options.encoding,
    )
    with _interruptible(), JobStore(config.jobstore) as store, open_dqr_api(config) as api:
        checked = preflight(api, config, pacs_id=options.pacs_id, pacs_ae=options.pacs_ae)
        ledger = DqrLedger(store)
        run, recorded = _start(ledger, queryfile, options, config, checked.pacs)
        _log.info("dqr_started", run=run.id, resumed=run.resumed, rows=len(queryfile.rows))
        try:
            _resolve(ledger, run, queryfile, config, api, checked.pacs)
            loop = Loop(api, ledger, run, config, checked.pacs)
            loop.work()
        except KeyboardInterrupt:
            _log.warning("dqr_interrupted", run=run.id)
            raise
        rows = ledger.rows(run)
    csv_path = None
    if options.info:
        csv_path = write_dqr_info_csv(info_csv_path(config.store_root, queryfile.path), rows)
    facts = SummaryFacts(
        run_id=run.id,
        resumed=run.resumed,
        project=api.project,
        pacs=_pacs_text(checked.pacs),
        imports=loop.imports,
        elapsed_s=time.monotonic() - started,
        info_csv=csv_path,
        resume=resume_command(json.loads(recorded)),
        identified=checked.identified_allowed,
    )
    summary = summarize(rows, facts)
    _log.info("dqr_finished", **summary.event())
    return summary


def _start(
    ledger: DqrLedger,
    queryfile: QueryFile,
    options: DqrOptions,
    config: Config,
    pacs: PacsEntry,
) -> tuple[Run, str]:
    """The run of these rows (found again, or new), its heartbeat and rows recorded;
    returns it with the options it records (JSON)."""
    store = ledger.store
    run = ledger.open_run(
        queryfile,
        dqr_config_sha256(config, pacs),
        default_pacs=config.default_pacs,
        new_run=options.new_run,
    )
    bind_process(run_id=run.id)
    for warning in config.warnings:
        _log.warning("config_warning", problem=str(warning))
    for warning in queryfile.warnings:
        _log.warning("queryfile_cleaned", problem=str(warning))
    recorded = _options_json(options, config, pacs)
    store.start_heartbeat(run, options_json=recorded, interval=_HEARTBEAT_SECONDS)
    store.add_rows(run, [(row, row.pacs or config.default_pacs) for row in queryfile.rows])
    ledger.follow_lines(run)
    return run, recorded


def _resolve(
    ledger: DqrLedger,
    run: Run,
    queryfile: QueryFile,
    config: Config,
    api: DqrApi,
    pacs: PacsEntry,
) -> None:
    """Resolve the rows not resolved yet (PENDING) or that failed, and record them.

    Raises:
        TransientError, FatalError: as :func:`pacsman.dqr._resolve.resolve_studies`.
    """
    states = ledger.store.row_states(run)
    todo = [
        row
        for row in queryfile.rows
        if states.get(row.line) in (ItemState.PENDING, ItemState.FAILED, None)
    ]
    if not todo:
        return
    mapping = MappingTable(mapping_location(api.project, jobstore=config.jobstore))
    resolved = resolve_studies(config, todo, api, pacs, mapping=mapping)
    known = {r.study.study_instance_uid: r.line for r in ledger.studies(run)}
    studies, rows = _row_outcomes(todo, resolved.studies, resolved.row_problems, known)
    ledger.record_resolved(run, studies, rows)


def _row_outcomes(
    rows: Sequence[QueryRow],
    studies: Sequence[DqrStudy],
    problems: Sequence[RowProblem],
    known: dict[str, int],
) -> tuple[list[DqrStudy], list[tuple[int, ItemState, str]]]:
    """The new studies to record, and each row's state and reason: QUERIED (it selected a
    study), DUPLICATE (only studies another row selected), NO_MATCH, or FAILED."""
    reasons: dict[int, list[RowProblem]] = {}
    for problem in problems:
        reasons.setdefault(problem.line, []).append(problem)
    kept, lines = [], set()
    for study in studies:
        owner = known.get(study.study_instance_uid, study.line)
        if owner != study.line:
            uid = study.study_instance_uid
            reason = f"StudyInstanceUID {uid} is already selected by line {owner}"
            duplicate = RowProblem(study.line, RowProblemKind.DUPLICATE, reason)
            reasons.setdefault(study.line, []).append(duplicate)
            continue
        kept.append(study)
        lines.add(study.line)
    outcomes = [
        _row_outcome(row.line, row.line in lines, reasons.get(row.line, [])) for row in rows
    ]
    return kept, outcomes


def _row_outcome(
    line: int, selected: bool, problems: list[RowProblem]
) -> tuple[int, ItemState, str]:
    detail = "; ".join(p.reason for p in problems)
    if selected:
        return line, ItemState.QUERIED, detail
    kinds = {p.kind for p in problems}
    state = _ROW_STATE.get(kinds.pop()) if len(kinds) == 1 else None
    if state is not None:
        return line, state, detail
    return line, ItemState.FAILED, detail or "the row resolved to no study"


def dqr_config_sha256(config: Config, pacs: PacsEntry) -> str:
    """What defines a dqr run's results: the XNAT project, the PACS XNAT pulls from, its
    receiver and how studies are found (with pacsman's C-FIND: the PACS nodes).  Courtesy,
    attempts and timers are left out: tuning them mid-cohort resumes the same run."""
    dqr = config.dqr
    nodes = sorted((n.name, n.host, n.port, n.called_ae_title) for n in config.pacs.values())
    material = repr(
        (
            "dqr",
            config.xnat.url,
            config.xnat.project,
            pacs.id,
            pacs.ae_title,
            dqr.receiver_ae_title,
            dqr.receiver_port,
            dqr.query,
            nodes if dqr.query == "pacs" else (),
            config.default_pacs,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _pacs_text(pacs: PacsEntry) -> str:
    label = f" ({pacs.label})" if pacs.label else ""
    return f"{pacs.id} {pacs.ae_title}{label}"


def _options_json(options: DqrOptions, config: Config, pacs: PacsEntry) -> str:
    """What the run records as its options: enough to print the command that resumes it."""
    return json.dumps(
        {
            "command": "dqr",
            "queryfile": str(options.queryfile.resolve()),
            "config": str(config.source.resolve()) if config.source else "",
            "pacs_id": options.pacs_id,
            "pacs_ae": options.pacs_ae or "",
            "pacs": _pacs_text(pacs),
            "project": config.xnat.project or "",
            "info": options.info,
            "sheet": options.sheet or "",
            "encoding": options.encoding or "",
            "cwd": os.getcwd(),
        }
    )


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM (``kill``, ``systemctl stop``) interrupts the run like Ctrl-C (SIGINT):
    KeyboardInterrupt, exit 130, resumable.  Only in the main thread, and only over the
    default handler."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
