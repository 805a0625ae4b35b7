"""The pipeline: the one place that wires the stages together.

validate (query file, config) -> job store -> pre-flight C-ECHO -> C-FIND per row
-> (--save) Storage SCP + pre-flight move -> C-MOVE/C-GET per series -> verify
-> (--anonymize) PS3.15 de-identification + leak check per COMPLETE series
-> (--push) each fully de-identified session to XNAT (or a DICOM/folder target), verified
-> info CSV.
Rows and series already settled in the job store are not worked on again, so a killed run
resumes where it stopped.
The pre-flight C-ECHO gets at most 3 attempts: a PACS that does not answer at the start of a
night's run is usually misconfigured, and the user should hear so at once.
"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import structlog

from pacsman.config import Config, PacsNode
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.errors import FatalError, ItemFailed, TransientError
from pacsman.jobstore import JobStore, Run
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, StudyMatch
from pacsman.pipeline.anonymize import anonymize_complete
from pacsman.pipeline.push import push_ready_sessions
from pacsman.pipeline.report import info_path, write_info_csv
from pacsman.pipeline.retrieve import retrieve_pending
from pacsman.push import check_anonymization
from pacsman.push.targets import TargetKind
from pacsman.query import FindAssociation, query_row
from pacsman.queryfile import load_queryfile
from pacsman.throttle import RetryPolicy

__all__ = ["RunOptions", "RunSummary", "config_sha256", "run_queryfile"]

_log = structlog.get_logger("pacsman.pipeline")

#: Row states that need no more work from the query stage.
_SETTLED = frozenset({ItemState.QUERIED, ItemState.NO_MATCH, ItemState.DUPLICATE})
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
    worked_now: int = 0  # series retrieved or de-identified plus sessions pushed, this run
    series_states: dict[str, int] = field(default_factory=dict)
    received_instances: int = 0
    failed_lines: tuple[int, ...] = ()

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
    """Validate, query every unsettled row, record it, and write the info CSV.

    Raises:
        QueryFileError: the query file is invalid (nothing was sent).
        ConfigError: a row or ``--pacs`` names an unknown PACS node.
        FatalError: a PACS rejects pacsman for good; the run stops, state is kept.
    """
    queryfile = load_queryfile(options.queryfile, pacs_names=tuple(config.pacs))
    if options.push is not None:
        check_anonymization(config, kind=options.push)
    for warning in queryfile.warnings:
        _log.warning("queryfile_cleaned", problem=str(warning))
    default_node = config.node(options.pacs).name
    with JobStore(config.jobstore) as store:
        run = store.open_run(queryfile, config_sha256(config))
        structlog.contextvars.bind_contextvars(run_id=run.id)
        store.add_rows(run, [(row, row.pacs or default_node) for row in queryfile.rows])
        later = _LaterStages(store, run, config, options)
        worked = 0
        # Started before the queries, so that its start-up overlaps them, not retrieval.
        with later.beside_retrieval() if options.save else nullcontext() as on_study_complete:
            queried = _query_pending(store, run, queryfile, config, default_node, retry_for)
            if options.save:
                worked = retrieve_pending(
                    store,
                    run,
                    config,
                    options.out_directory,
                    retry_for,
                    on_study_complete=on_study_complete,
                )
        worked += later.worked_beside + later.run()
        return _finish(store, run, queryfile, options, queried, worked)


def _query_pending(
    store: JobStore,
    run: Run,
    queryfile: QueryFile,
    config: Config,
    default_node: str,
    retry_for: Callable[[PacsNode], RetryPolicy],
) -> int:
    states = store.row_states(run)
    pending = [row for row in queryfile.rows if states.get(row.line) not in _SETTLED]
    if not pending:
        _log.info("nothing_to_query", rows=len(queryfile.rows), resumed=run.resumed)
        return 0
    by_node: dict[str, list[QueryRow]] = {}
    for row in pending:
        by_node.setdefault(row.pacs or default_node, []).append(row)
    for name, rows in by_node.items():
        node = config.node(name)
        peer = DicomPeer(node, config.local.ae_title, config.local.port)
        retry = retry_for(node)
        preflight = replace(retry, max_attempts=min(3, retry.max_attempts))
        preflight.call(partial(client.echo, peer), operation="c_echo", pacs=name)
        _log.info("pacs_ready", pacs=name, rows=len(rows))
        with FindAssociation(peer, retry=retry) as session:
            for row in rows:
                _query_one(store, run, session, row)
    return len(pending)


def _query_one(store: JobStore, run: Run, session: FindAssociation, row: QueryRow) -> None:
    pacs = session.peer.node.name
    try:
        studies = query_row(session, row)
        _check_one_session(row, studies)
    except (ItemFailed, TransientError) as exc:
        store.fail_row(run, row.line, str(exc))
        _log.error("row_failed", row=row.line, pacs=pacs, reason=str(exc))
        return
    result = store.record_query(run, RowResult(row=row, pacs=pacs, studies=studies))
    for owner, study_uid in result.duplicate_of:
        _log.warning("study_duplicate", row=row.line, first_row=owner, study_uid=study_uid)
    _log.info(
        "row_queried",
        row=row.line,
        pacs=pacs,
        studies=len(result.studies),
        series=sum(len(s.series) for s in result.studies),
    )


class _LaterStages:
    """Anonymize and push: after retrieval, and beside it for studies already complete.

    While retrieval runs, a helper process (or thread) de-identifies and pushes each study as
    soon as all its series are COMPLETE, so study k is pushed while study k+1 is retrieved.  Both
    stages are idempotent, so the final :meth:`run` simply picks up whatever is left.
    """

    def __init__(self, store: JobStore, run: Run, config: Config, options: RunOptions) -> None:
        self.store, self.run_, self.config, self.options = store, run, config, options
        self.enabled = options.anonymize or options.push is not None
        self._wake = threading.Event()
        self._closing = False
        self._error: BaseException | None = None
        #: Items the stages worked on beside retrieval (a resume may do all its work there).
        self.worked_beside = 0

    def run(self) -> int:
        """Run the stages once over everything ready; return how many items were worked on."""
        if not self.enabled:
            return 0
        options, out = self.options, self.options.out_directory
        done = anonymize_complete(self.store, self.run_, self.config, out, workers=options.workers)
        if options.push is not None:
            done += push_ready_sessions(self.store, self.run_, self.config, out, kind=options.push)
        return done

    @contextmanager
    def beside_retrieval(self) -> Iterator[Callable[[str], None] | None]:
        """Yield the study-complete callback for retrieval (``None`` when not needed).

        The stages run in a process of their own when the config came from a file (the usual
        case): retrieval and de-identification are both CPU-bound Python, and only separate
        processes use both cores.  Otherwise they run in a thread.
        """
        if not self.enabled:
            yield None
        elif self.config.source is not None:
            with self._process() as notify:
                yield notify
        else:
            with self._thread() as notify:
                yield notify

    @contextmanager
    def _process(self) -> Iterator[Callable[[str], None]]:
        options = self.options
        command = [sys.executable, "-m", "pacsman.pipeline.helper", str(self.config.source)]
        command += [str(self.run_.id), str(options.out_directory), "--workers"]
        command += [str(options.workers)] + (["--push", options.push] if options.push else [])
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        lock = threading.Lock()

        def notify(study_uid: str) -> None:
            with lock, suppress(BrokenPipeError, ValueError):
                assert child.stdin is not None
                child.stdin.write("study\n")
                child.stdin.flush()

        try:
            yield notify
        finally:
            with lock, suppress(BrokenPipeError):
                assert child.stdin is not None
                child.stdin.close()
            status = child.wait()
            self.worked_beside = _reported_count(child)
        if status != 0:
            raise FatalError(
                f"the de-identify/push stage stopped (exit {status}); its reason is logged "
                "above, and the job store keeps everything done so far"
            )

    @contextmanager
    def _thread(self) -> Iterator[Callable[[str], None]]:
        thread = threading.Thread(target=self._loop, name="pacsman-later-stages", daemon=True)
        thread.start()
        try:
            yield lambda study_uid: self._wake.set()
        finally:
            self._closing = True
            self._wake.set()
            thread.join()
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closing:
                return
            self._wake.clear()
            try:
                self.worked_beside += self.run()
            except BaseException as exc:  # re-raised by beside_retrieval in the main thread
                self._error = exc
                return


def _reported_count(child: subprocess.Popen[str]) -> int:
    """The count an exited helper printed last on its stdout (0 if none).

    Only what is already in the pipe is read, never up to end-of-file: a grandchild left over
    from a helper that was killed could hold the pipe open for ever.
    """
    assert child.stdout is not None
    fd, data = child.stdout.fileno(), b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    child.stdout.close()
    words = data.split()
    return int(words[-1]) if words and words[-1].isdigit() else 0


def _check_one_session(row: QueryRow, studies: tuple[StudyMatch, ...]) -> None:
    """A Session label names ONE XNAT session, so it must select one study.

    Raises:
        ItemFailed: the row names a Session but matches several studies.
    """
    if row.session and len(studies) > 1:
        dates = ", ".join(sorted({s.study_date or "no date" for s in studies}))
        raise ItemFailed(
            f"the row names Session {row.session!r} but matches {len(studies)} studies "
            f"(dates {dates}); narrow it with StudyDate, AccessionNumber or StudyInstanceUID, "
            "or leave Session empty to get one session per study"
        )


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
    if options.anonymize or options.push is not None:
        failed |= {r.line for r in series if r.anonymization != ItemState.ANONYMIZED.value}
    if options.push is not None:
        failed |= {r.line for r in series if r.push != "DONE"}
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
