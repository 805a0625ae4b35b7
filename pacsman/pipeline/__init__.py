"""The pipeline: the one place that wires the steps together.

validate (query file, config) -> (--push xnat) XNAT pre-flight (pipeline.check:
login, project, labels) -> job store -> pre-flight C-ECHO -> C-FIND per row (query)
-> record where each series goes -> (--save) Storage SCP + pre-flight move -> C-MOVE/C-GET
per series -> verify (retrieve)
-> (--anonymize) PS3.15 de-identification + leak check per COMPLETE series (anonymize)
-> (--push) each fully de-identified experiment to XNAT (or a DICOM/folder target), verified
(push) -> info CSV (report) -> the summary of every stage (:mod:`.summary`), printed by
the CLI and logged as ``run_finished``.
The steps are siblings: each reads what it needs from the job store and records what it did
there; they share nothing else but :mod:`pacsman.layout`.  De-identification and push
always run in the de-identify/push process (:mod:`pacsman.pipeline.background`), beside
retrieval.  Rows and series already settled in the job store are not worked on again, so a
killed run resumes where it stopped.

Before any C-MOVE, series folders that already hold DICOM files are checked (:mod:`._disk`):
files no run of the job store put there (the store was lost, emptied or replaced) stop the
run with the folders named, unless ``--adopt-existing`` (adopt those whose count matches
C-FIND) or ``--new-run`` (retrieve again on purpose) is given.

While it works, the run shows how far it is (:mod:`.progress`: a live display on a terminal,
``progress`` events otherwise), and every event of both processes carries its ``run_id``.
Ctrl-C stops it with exit 130, resumable (:mod:`._interrupt`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from pacsman.config import Config, PacsNode
from pacsman.errors import InputError, LeaseLost
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.claims import LiveLeases
from pacsman.layout import anonymized_series_directory, raw_series_directories
from pacsman.log import HUMAN, bind_process, current_settings, demoted
from pacsman.models import ItemState, QueryFile
from pacsman.pipeline._disk import settle_series_on_disk
from pacsman.pipeline._interrupt import INTERRUPTED, end_soon, interruptible
from pacsman.pipeline.background import SUPERSEDED, DeidentifyPushProcess, Request
from pacsman.pipeline.nifti import NiftiOptions
from pacsman.pipeline.progress import Stage, Tracker, reporting
from pacsman.pipeline.query import query_pending
from pacsman.pipeline.reception import Reception
from pacsman.pipeline.report import info_path, write_info_csv
from pacsman.pipeline.retrieve import retrieve_pending
from pacsman.pipeline.status import start_heartbeat
from pacsman.pipeline.studies import work_by_study
from pacsman.pipeline.summary import RunSummary, StageFigures, summarize
from pacsman.queryfile import load_queryfile
from pacsman.throttle import RetryPolicy

if TYPE_CHECKING:
    from pacsman.push.targets import TargetKind

__all__ = [
    "INTERRUPTED",
    "RunOptions",
    "RunSummary",
    "ServiceJob",
    "config_sha256",
    "run_job",
    "run_queryfile",
]

_log = structlog.get_logger("pacsman.pipeline")


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
    #: The workbook's sheet to read (--sheet; default: the first) and the CSV's encoding
    #: (--encoding; default: detected).
    sheet: str | None = None
    encoding: str | None = None
    #: Convert each de-identified series to NIfTI with dcm2niix (--nifti), with a BIDS copy
    #: driven by this mapping file (--bids MAP).
    nifti: bool = False
    bids: Path | None = None

    @property
    def deidentify(self) -> bool:
        """De-identification runs for --anonymize and for --push (which implies it)."""
        return self.anonymize or self.push is not None


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
    queryfile = _load(options, config)
    with interruptible(), JobStore(config.jobstore) as store:
        summary = _run(store, queryfile, options, config, retry_for, job=None)
    assert summary is not None  # the one-shot command always sums its run up
    return summary


@dataclass(frozen=True)
class ServiceJob:
    """What ``pacsman serve`` adds to a run: the job it belongs to, and the service's one
    Storage SCP behind ``reception``."""

    job_id: int
    reception: Reception
    #: The service's study leases its threads work on: the only ones its lease loop renews.
    leases: LiveLeases
    on_run: Callable[[Run], None] = lambda run: None
    #: The head node working on it (``serve.node_name``) and how long its claims last.
    node: str = "pacsman"
    lease_seconds: float = 30.0
    #: True for the node that claimed the job (it queries the rows and waits for every
    #: study); False for a node that joins in to work on some of its studies.
    coordinator: bool = True
    #: The job's run when it has one already (a job resumed, or joined by another node).
    run_id: int | None = None
    #: Only take over the studies whose lease expired (a dead or stopped node's), then end.
    takeover: bool = False


def run_job(options: RunOptions, config: Config, job: ServiceJob) -> RunSummary | None:
    """One job of ``pacsman serve``, through the same steps as :func:`run_queryfile`.

    The caller's thread works for the job's :class:`~pacsman.throttle.Ticket` (courtesy
    shared with every other job, and the halt event).  The job has a run of its own, found
    again when the job is resumed; it opens its own connection to the job store.

    Returns the run's summary; None on a node that helped with a job another node claimed.

    Raises:
        as :func:`run_queryfile`, and Halted: the job was asked to stop; its series stay
        resumable.
    """
    queryfile = _load(options, config)
    with JobStore(config.jobstore) as store:
        return _run(store, queryfile, options, config, _retry_for, job=job)


def _load(options: RunOptions, config: Config) -> QueryFile:
    """The query file, validated; the options checked against the config; XNAT ready."""
    default_node = config.node(options.pacs).name
    queryfile = load_queryfile(
        options.queryfile,
        character_sets=config.character_sets,
        default_pacs=default_node,
        sheet=options.sheet,
        encoding=options.encoding,
    )
    _check_deidentification(config, options)
    _check_nifti(options)
    if options.push is not None:
        # Imported here: the XNAT client and the de-identification tables, for --push only.
        from pacsman.pipeline.check import check_push_target

        check_push_target(config, options.push, queryfile)  # XNAT ready? before any C-FIND
    return queryfile


def _run(
    store: JobStore,
    queryfile: QueryFile,
    options: RunOptions,
    config: Config,
    retry_for: Callable[[PacsNode], RetryPolicy],
    *,
    job: ServiceJob | None,
) -> RunSummary | None:
    default_node = config.node(options.pacs).name
    if job is not None and job.run_id is not None:
        run = store.run_by_id(job.run_id)  # the job's own run, whichever node made it
    else:
        run = store.open_run(
            queryfile,
            config_sha256(config),
            default_pacs=default_node,
            new_run=options.new_run,
            job_id=None if job is None else job.job_id,
        )
    if job is None:
        bind_process(run_id=run.id)  # every thread's events, the SCP's and workers' too
    else:
        structlog.contextvars.bind_contextvars(job_id=job.job_id, run_id=run.id)
        job.on_run(run)
    for warning in config.warnings:
        _log.warning("config_warning", problem=str(warning))
    for warning in queryfile.warnings:
        _log.warning("queryfile_cleaned", problem=str(warning))
    coordinator = job is None or job.coordinator
    if coordinator:
        start_heartbeat(store, run, options, config)  # until the store is left
        store.add_rows(run, [(row, row.pacs or default_node) for row in queryfile.rows])
    tracker = _tracker(store, run, queryfile, options)
    interval = config.log.progress_interval
    try:
        shown = reporting(tracker, run_id=run.id, interval=interval, live=job is None)
        with demoted(*SUPERSEDED), shown:
            if job is None:
                done_now = _work(store, run, queryfile, config, options, retry_for, tracker)
            else:
                done_now = _work_job(store, run, queryfile, config, options, tracker, job)
    except KeyboardInterrupt:
        _log.warning("run_interrupted", next=INTERRUPTED, **{HUMAN: ""})
        end_soon()  # a DICOM library thread waiting on a busy peer must not hold the exit
        raise
    if not coordinator:  # the node that claimed the job sums it up, once every study is done
        _log.info("job_helped", worked=done_now[1])
        return None
    summary = _finish(store, run, queryfile, config, options, tracker, done_now)
    _log.info("run_finished", **summary.event(), **{HUMAN: ""})  # the CLI prints it
    return summary


def _work(
    store: JobStore,
    run: Run,
    queryfile: QueryFile,
    config: Config,
    options: RunOptions,
    retry_for: Callable[[PacsNode], RetryPolicy],
    tracker: Tracker,
) -> tuple[int, int, int]:
    """Query, retrieve, de-identify and push; return how many rows were queried, items
    worked on, and series adopted from disk."""
    default_node = config.node(options.pacs).name
    retrieved = adopted = 0
    # Started before the queries, so that its start-up overlaps them, not retrieval.
    with _deidentify_push(run, config, options, tracker) as background:
        queried = query_pending(
            store, run, queryfile, config, default_node, retry_for, counts=tracker
        )
        if options.save or background is not None:
            adopted = _record_directories(store, run, options)
        _plan(tracker, store, run, options)
        if options.save:
            retrieved = _retrieve(store, run, config, options, tracker, background, retry_for)
    worked = retrieved + (0 if background is None else background.worked)
    return queried, worked, adopted


def _retrieve(
    store: JobStore,
    run: Run,
    config: Config,
    options: RunOptions,
    tracker: Tracker,
    background: DeidentifyPushProcess | None,
    retry_for: Callable[[PacsNode], RetryPolicy],
    reception: Reception | None = None,
    preflighted: set[str] | None = None,
) -> int:
    """Retrieve the run's unsettled series, announcing each complete study to
    ``background`` (the de-identify/push process); return the series worked on."""
    return retrieve_pending(
        store,
        run,
        config,
        options.out_directory,
        retry_for,
        on_study_complete=None if background is None else background.study_complete,
        counts=tracker,
        reception=reception,
        preflighted=preflighted,
    )


def _work_job(
    store: JobStore,
    run: Run,
    queryfile: QueryFile,
    config: Config,
    options: RunOptions,
    tracker: Tracker,
    job: ServiceJob,
) -> tuple[int, int, int]:
    """A service job: the coordinator queries its rows; then every node working on it
    claims studies and works through them (:mod:`.studies`)."""
    queried = 0
    if job.coordinator:
        default_node = config.node(options.pacs).name
        queried = query_pending(
            store, run, queryfile, config, default_node, _retry_for, counts=tracker
        )
    if not options.save:
        return queried, 0, 0
    _plan(tracker, store, run, options)
    preflighted: set[str] = set()  # once per PACS node for all of this thread's batches
    with _BatchProcess(config, options, tracker) as batches:

        def one_pass(scoped: Run) -> int:
            background = batches.for_batch(scoped)
            batches.adopted += _record_directories(store, scoped, options)
            retrieved = _retrieve(
                store,
                scoped,
                config,
                options,
                tracker,
                background,
                _retry_for,
                job.reception,
                preflighted,
            )
            if background is not None:
                background.sync()  # the batch de-identified and pushed: it can be settled
                batches.raise_if_ended()
            return retrieved

        worked = work_by_study(
            store,
            run,
            job_id=job.job_id,
            node=job.node,
            lease_seconds=job.lease_seconds,
            coordinator=job.coordinator,
            one_pass=one_pass,
            wants=(options.deidentify, options.push),
            takeover=job.takeover,
            leases=job.leases,
        )
    return queried, worked + batches.worked, batches.adopted


class _BatchProcess:
    """The de-identify/push process of a service job's batches: started with the first
    batch's lease, told each next one (``lease G``), and started again if it ended (a lease
    it lost).  Leaving the block ends it like the one-shot command's."""

    def __init__(self, config: Config, options: RunOptions, tracker: Tracker) -> None:
        self._config, self._options, self._tracker = config, options, tracker
        self._stack = ExitStack()
        self._process: DeidentifyPushProcess | None = None
        self.worked = self.adopted = 0

    def __enter__(self) -> _BatchProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc_type, exc, tb)

    def for_batch(self, scoped: Run) -> DeidentifyPushProcess | None:
        if not self._options.deidentify or scoped.lease is None:
            return None
        if self._process is not None and self._process.alive():
            self._process.set_lease(scoped.lease)
            return self._process
        try:
            self._close(None, None, None)  # it ended: on a lease lost, or with an error
        except LeaseLost as exc:  # an earlier batch's: this one goes on with a new process
            _log.warning("lease_lost", problem=str(exc))
        process = _deidentify_push(scoped, self._config, self._options, self._tracker)
        self._process = self._stack.enter_context(process)
        return self._process

    def raise_if_ended(self) -> None:
        """After a batch's sync: if the process ended meanwhile, raise why (a lease lost,
        the job store's connection lost, an error) before the batch is settled.  Its
        studies were not worked through, and must not be settled as failed for it.

        Raises:
            LeaseLost: the batch's lease no longer holds (nothing of it is settled).
            JobStoreConnectionLost: the process lost the job store (the job waits again).
            FatalError: the process stopped for another reason, named.
        """
        if self._process is not None and not self._process.alive():
            self._close(None, None, None)

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        try:
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            self.worked += self._process.worked
            self._process, self._stack = None, ExitStack()


def _tracker(store: JobStore, run: Run, queryfile: QueryFile, options: RunOptions) -> Tracker:
    """The run's progress counters, per stage asked for; the query stage's planned."""
    stages = [Stage.QUERY]
    stages += [Stage.RETRIEVE] if options.save else []
    stages += [Stage.DEIDENTIFY] if options.deidentify else []
    stages += [Stage.NIFTI] if options.nifti else []
    stages += [Stage.PUSH] if options.push is not None else []
    tracker = Tracker(stages)
    settled = Counter(store.row_states(run).values())
    done = settled[ItemState.QUERIED] + settled[ItemState.DUPLICATE]
    tracker.plan(
        Stage.QUERY, total=len(queryfile.rows), done=done, failed=settled[ItemState.NO_MATCH]
    )
    return tracker


def _plan(tracker: Tracker, store: JobStore, run: Run, options: RunOptions) -> None:
    """Once the series are known: each later stage's totals, and what earlier runs did."""
    series = [r for r in store.info_records(run) if r.series_state is not None]
    expected = sum(r.expected_instances or 0 for r in series)
    complete = [r for r in series if r.series_state is ItemState.COMPLETE]
    tracker.plan(
        Stage.RETRIEVE,
        total=len(series),
        done=len(complete),
        instances_total=expected,
        instances=sum(r.received_instances or 0 for r in complete),
    )
    anonymized = [r for r in series if r.anonymization is ItemState.ANONYMIZED]
    tracker.plan(
        Stage.DEIDENTIFY,
        total=len(series),
        done=len(anonymized),
        instances_total=expected,
        instances=sum(r.anonymized_instances or 0 for r in anonymized),
    )
    if options.nifti:  # settled: converted or skipped (a failed series is tried again)
        from pacsman.jobstore.nifti import NIFTI_SETTLED, nifti_by_series

        done = {k for k, v in nifti_by_series(store, run).items() if v.outcome in NIFTI_SETTLED}
        settled = [r for r in anonymized if (r.pacs, r.series_instance_uid) in done]
        tracker.plan(
            Stage.NIFTI,
            total=len(series),
            done=len(settled),
            instances_total=expected,
            instances=sum(r.anonymized_instances or 0 for r in settled),
        )
    if options.push is not None:
        pushed = [p for p in store.push_states(run, options.push).values()]
        done_pushes = [p for p in pushed if p.state is ItemState.DONE]
        tracker.plan(
            Stage.PUSH,
            total=len({(r.study.study_instance_uid, r.line) for r in series if r.study}),
            done=len(done_pushes),
            instances_total=expected,
            instances=sum(p.files_on_target for p in done_pushes),
        )


def _check_deidentification(config: Config, options: RunOptions) -> None:
    """Before anything is sent: the config must allow what the options ask for.

    Raises:
        InputError: anonymization is switched off, or its profile is invalid.
    """
    if options.push is not None:
        from pacsman.push import check_anonymization

        check_anonymization(config, kind=options.push)
    if not options.deidentify:
        return
    if not config.anonymization.enabled and options.push is not None:
        raise InputError(
            f"--push {options.push} pushes de-identified sessions, but anonymization.enabled "
            "is false in the config; set it to true (the default), or retrieve with --save and "
            "push identified data with 'pacsman upload DIR' (XNAT: with xnat.allow_identified)"
        )
    if not config.anonymization.enabled:
        raise InputError(
            "--anonymize was asked for but anonymization.enabled is false in the config; "
            "set it to true (the default) or drop --anonymize"
        )
    from pacsman.anonymize import load_profile  # the PS3.15 tables: when de-identifying only

    load_profile(config.anonymization.profile)


def _check_nifti(options: RunOptions) -> None:
    """--nifti: de-identified input, dcm2niix runnable, the BIDS mapping file valid.

    Raises:
        InputError: --nifti without de-identification, --bids without --nifti, or a bad
            mapping file.
    """
    if options.nifti or options.bids is not None:
        from pacsman.pipeline.nifti import check_nifti_options

        check_nifti_options(nifti=options.nifti, bids=options.bids, deidentify=options.deidentify)


def _deidentify_push(
    run: Run, config: Config, options: RunOptions, tracker: Tracker
) -> AbstractContextManager[DeidentifyPushProcess | None]:
    """The de-identify/push process for this run, or nothing when neither is asked for."""
    if not options.deidentify:
        return nullcontext()
    request = Request(
        config=config,
        run_id=run.id,
        lease=run.lease,
        out_directory=options.out_directory,
        workers=options.workers,
        push=options.push,
        log_level=current_settings().level,
        nifti=NiftiOptions(bids=options.bids) if options.nifti else None,
    )
    return DeidentifyPushProcess(request, tracker=tracker)


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
    config: Config,
    options: RunOptions,
    tracker: Tracker,
    done_now: tuple[int, int, int],
) -> RunSummary:
    """Write the info CSV; the summary of every stage this command was asked for."""
    records = store.info_records(run)
    nifti = None
    if options.nifti:  # its columns: outcome, reason, upload per series
        from pacsman.jobstore.nifti import nifti_by_series

        nifti = nifti_by_series(store, run)
    csv_path = write_info_csv(
        info_path(options.out_directory, queryfile.path), records, nifti=nifti
    )
    moved = {stage.key: tracker.size(stage) / 1e6 for stage in tracker.stages}
    figures = StageFigures(
        retrieve=options.save,
        deidentify=options.deidentify,
        push=options.push,
        nifti=options.nifti,
        moved_mb=moved,
        elapsed_s=tracker.elapsed(),
    )
    return summarize(
        store,
        run,
        config,
        records=records,
        out_directory=options.out_directory,
        info_csv=csv_path,
        figures=figures,
        done_now=done_now,
    )
