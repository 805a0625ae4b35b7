"""The pipeline: the one place that wires the steps together.

validate (query file, config) -> job store -> pre-flight C-ECHO -> C-FIND per row (query)
-> record where each series goes -> (--save) Storage SCP + pre-flight move -> C-MOVE/C-GET
per series -> verify (retrieve)
-> (--anonymize) PS3.15 de-identification + leak check per COMPLETE series (anonymize)
-> (--push) each fully de-identified experiment to XNAT (or a DICOM/folder target), verified
(push) -> info CSV (report).
The steps are siblings: each reads what it needs from the job store and records what it did
there; they share nothing else but :mod:`pacsman.layout`.  De-identification and push
always run in the de-identify/push process (:mod:`pacsman.pipeline.background`), beside
retrieval.  Rows and series already settled in the job store are not worked on again, so a
killed run resumes where it stopped.

Before any C-MOVE, series folders that already hold DICOM files are checked (:mod:`._disk`):
files no run of the job store put there (the store was lost, emptied or replaced) stop the
run with the folders named, unless ``--adopt-existing`` (adopt those whose count matches
C-FIND) or ``--new-run`` (retrieve again on purpose) is given.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from pacsman.anonymize import load_profile
from pacsman.config import Config, PacsNode
from pacsman.errors import InputError
from pacsman.jobstore import JobStore, Run
from pacsman.layout import anonymized_series_directory, raw_series_directories
from pacsman.models import ItemState, QueryFile
from pacsman.pipeline._disk import settle_series_on_disk
from pacsman.pipeline.background import DeidentifyPushProcess, Request
from pacsman.pipeline.query import query_pending
from pacsman.pipeline.report import info_path, write_info_csv
from pacsman.pipeline.retrieve import retrieve_pending
from pacsman.push import check_anonymization
from pacsman.push.targets import TargetKind
from pacsman.queryfile import load_queryfile
from pacsman.throttle import RetryPolicy

__all__ = ["RunOptions", "RunSummary", "config_sha256", "run_queryfile"]

_log = structlog.get_logger("pacsman.pipeline")

#: Row states that make the run exit with "some rows failed".
_FAILED = frozenset({ItemState.FAILED, ItemState.NO_MATCH, ItemState.PENDING})


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for on the command line."""

    queryfile: Path
    out_directory: Path
    save: bool = False
    anonymize: bool = False
    push: TargetKind | None = None
    workers: int = 1
    pacs: str | None = None
    #: Adopt series found complete on disk that the job store does not know (--adopt-existing).
    adopt_existing: bool = False
    #: Start a new run even when the job store has one for these rows (--new-run).
    new_run: bool = False

    @property
    def deidentify(self) -> bool:
        """De-identification runs for --anonymize and for --push (which implies it)."""
        return self.anonymize or self.push is not None


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the CLI's last lines and its exit code."""

    run_id: int
    resumed: bool
    rows: int
    states: dict[str, int] = field(default_factory=dict)
    studies: int = 0
    series: int = 0
    expected_instances: int = 0
    info_csv: Path | None = None
    queried_now: int = 0
    #: Series retrieved or de-identified, plus experiments pushed, by this run.
    worked_now: int = 0
    series_states: dict[str, int] = field(default_factory=dict)
    received_instances: int = 0
    failed_lines: tuple[int, ...] = ()
    #: Series found complete on disk and recorded without retrieving them, by this run.
    adopted: int = 0

    @property
    def ok(self) -> bool:
        """True when every row is settled and selected something."""
        return not self.failed_lines


def config_sha256(config: Config) -> str:
    """Hash of what defines a run's results: which PACS nodes, and how they are queried.

    Courtesy, retries, timeouts, retrieve method and logging are left out on purpose: tuning
    them in the middle of a cohort must resume the same run, not start it again.
    """
    nodes = sorted(
        (
            n.name,
            n.host,
            n.port,
            n.called_ae_title,
            n.query_model,
            n.count_instances,
            n.character_set,
        )
        for n in config.pacs.values()
    )
    material = repr((nodes, config.default_pacs))
    return hashlib.sha256(material.encode()).hexdigest()


def _retry_for(node: PacsNode) -> RetryPolicy:
    return RetryPolicy(max_attempts=node.max_attempts)


def run_queryfile(
    options: RunOptions,
    config: Config,
    *,
    retry_for: Callable[[PacsNode], RetryPolicy] = _retry_for,
) -> RunSummary:
    """Validate, query every unsettled row, record it, work on it, and write the info CSV.

    Raises:
        QueryFileError: the query file is invalid (nothing was sent).
        ConfigError: a row or ``--pacs`` names an unknown PACS node.
        InputError: de-identification is asked for but switched off, or its profile is invalid.
        FatalError: a PACS or the target rejects pacsman for good, or the de-identify/push
            process stopped; the run stops, state is kept.
    """
    default_node = config.node(options.pacs).name
    queryfile = load_queryfile(
        options.queryfile, character_sets=config.character_sets, default_pacs=default_node
    )
    _check_deidentification(config, options)
    for warning in config.warnings:
        _log.warning("config_warning", problem=str(warning))
    for warning in queryfile.warnings:
        _log.warning("queryfile_cleaned", problem=str(warning))
    with JobStore(config.jobstore) as store:
        run = store.open_run(
            queryfile, config_sha256(config), default_pacs=default_node, new_run=options.new_run
        )
        structlog.contextvars.bind_contextvars(run_id=run.id)
        store.add_rows(run, [(row, row.pacs or default_node) for row in queryfile.rows])
        retrieved = adopted = 0
        # Started before the queries, so that its start-up overlaps them, not retrieval.
        with _deidentify_push(run, config, options) as background:
            queried = query_pending(store, run, queryfile, config, default_node, retry_for)
            if options.save or background is not None:
                adopted = _record_directories(store, run, options)
            if options.save:
                retrieved = retrieve_pending(
                    store,
                    run,
                    config,
                    options.out_directory,
                    retry_for,
                    on_study_complete=None if background is None else background.study_complete,
                )
        worked = retrieved + (0 if background is None else background.worked)
        summary = _finish(store, run, queryfile, options, queried, worked)
        return replace(summary, adopted=adopted)


def _check_deidentification(config: Config, options: RunOptions) -> None:
    """Before anything is sent: the config must allow what the options ask for.

    Raises:
        InputError: anonymization is switched off, or its profile is invalid.
    """
    if options.push is not None:
        check_anonymization(config, kind=options.push)
    if not options.deidentify:
        return
    if not config.anonymization.enabled:
        raise InputError(
            "--anonymize was asked for but anonymization.enabled is false in the config; "
            "set it to true (the default) or drop --anonymize"
        )
    load_profile(config.anonymization.profile)


def _deidentify_push(
    run: Run, config: Config, options: RunOptions
) -> AbstractContextManager[DeidentifyPushProcess | None]:
    """The de-identify/push process for this run, or nothing when neither is asked for."""
    if not options.deidentify:
        return nullcontext()
    request = Request(
        config=config,
        run_id=run.id,
        out_directory=options.out_directory,
        workers=options.workers,
        push=options.push,
    )
    return DeidentifyPushProcess(request)


def _record_directories(store: JobStore, run: Run, options: RunOptions) -> int:
    """Record, once, where each series is received and where it was de-identified.

    A series gets its raw directory when it is retrieved now (``--save``) or was retrieved
    before; a series de-identified by a release that did not record directories gets its
    de-identified one.  Directories already recorded never change, and the steps only read
    them from the job store.  Series folders that already hold files are settled first
    (:func:`~pacsman.pipeline._disk.settle_series_on_disk`); returns how many were adopted.

    Raises:
        InputError: series folders hold files no run of the job store put there, and
            neither --adopt-existing nor --new-run was given (nothing was retrieved).
    """
    out = options.out_directory
    every = store.series_places(run)
    planned = raw_series_directories(out, every)
    raw = [
        (s, planned[s.series_instance_uid])
        for s in every
        if s.raw_directory is None and (options.save or s.state is not ItemState.QUERIED)
    ]
    anonymized = [
        (
            s,
            anonymized_series_directory(
                out, subject=s.xnat_subject, session=s.xnat_session, series_number=s.series_number
            ),
        )
        for s in every
        if s.anonymized_directory is None and s.anonymization is not None
    ]
    adopted = 0
    if options.save:
        adopted = settle_series_on_disk(
            store, run, raw, adopt=options.adopt_existing, new_run=options.new_run
        )
    if raw or anonymized:
        store.record_directories(run, raw=raw, anonymized=anonymized)
    return adopted


def _finish(
    store: JobStore,
    run: Run,
    queryfile: QueryFile,
    options: RunOptions,
    queried: int,
    worked: int,
) -> RunSummary:
    records = store.info_records(run)
    states = store.row_states(run)
    csv_path = write_info_csv(info_path(options.out_directory, queryfile.path), records)
    series = [r for r in records if r.series_state is not None]
    failed = {line for line, s in states.items() if s in _FAILED}
    if options.save:
        failed |= {r.line for r in series if r.series_state is not ItemState.COMPLETE}
    if options.deidentify:
        failed |= {r.line for r in series if r.anonymization is not ItemState.ANONYMIZED}
    if options.push is not None:
        failed |= {r.line for r in series if r.push is not ItemState.DONE}
    return RunSummary(
        run_id=run.id,
        resumed=run.resumed,
        rows=len(queryfile.rows),
        states=dict(Counter(state.value for state in states.values())),
        studies=len({(r.pacs, r.study.study_instance_uid) for r in series if r.study}),
        series=len(series),
        expected_instances=sum(r.expected_instances or 0 for r in series),
        info_csv=csv_path,
        queried_now=queried,
        worked_now=worked,
        series_states=dict(Counter(r.series_state.value for r in series if r.series_state)),
        received_instances=sum(r.received_instances or 0 for r in series),
        failed_lines=tuple(sorted(failed)),
    )
