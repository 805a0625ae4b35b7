"""The pipeline: the one place that wires the stages together.

validate (query file, config) -> job store -> pre-flight C-ECHO -> C-FIND per row -> info CSV.
Rows already settled in the job store are not queried again, so a killed run resumes.
The pre-flight C-ECHO gets at most 3 attempts: a PACS that does not answer at the start of a
night's run is usually misconfigured, and the user should hear so at once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import structlog

from pacsman import dicomnet
from pacsman.config import Config, PacsNode
from pacsman.dicomnet import DicomPeer
from pacsman.errors import ItemFailed, TransientError
from pacsman.jobstore import JobStore, Run
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult
from pacsman.query import FindSession, query_row
from pacsman.queryfile import load_queryfile
from pacsman.report import info_path, write_info_csv
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
    info: bool = True
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
    failed_lines: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every row is settled and selected something."""
        return not self.failed_lines


def config_sha256(config: Config) -> str:
    """Hash of what defines a run's results (PACS nodes and local AE; not logging or paths)."""
    material = repr((config.local, sorted(config.pacs.items()), config.default_pacs))
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
    for warning in queryfile.warnings:
        _log.warning("queryfile_cleaned", problem=str(warning))
    default_node = config.node(options.pacs).name
    with JobStore(config.jobstore) as store:
        run = store.open_run(queryfile, config_sha256(config))
        structlog.contextvars.bind_contextvars(run_id=run.id)
        store.add_rows(run, [(row, row.pacs or default_node) for row in queryfile.rows])
        queried = _query_pending(store, run, queryfile, config, default_node, retry_for)
        return _finish(store, run, queryfile, options, queried)


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
        preflight.call(partial(dicomnet.echo, peer), operation="c_echo", pacs=name)
        _log.info("pacs_ready", pacs=name, rows=len(rows))
        with FindSession(peer, retry=retry) as session:
            for row in rows:
                _query_one(store, run, session, row)
    return len(pending)


def _query_one(store: JobStore, run: Run, session: FindSession, row: QueryRow) -> None:
    pacs = session.peer.node.name
    try:
        studies = query_row(session, row)
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


def _finish(
    store: JobStore, run: Run, queryfile: QueryFile, options: RunOptions, queried: int
) -> RunSummary:
    records = store.info_records(run)
    states = store.row_states(run)
    csv_path = write_info_csv(info_path(options.out_directory, queryfile.path), records)
    series = [r for r in records if r.series_state is not None]
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
        failed_lines=tuple(sorted(line for line, s in states.items() if s in _FAILED)),
    )
