"""The query step: a C-FIND per unsettled query row, recorded in the job store.

Private to :mod:`pacsman.pipeline`.  Rows are grouped by PACS node; each node is C-ECHOed
first (at most 3 attempts: a PACS that does not answer at the start of a night's run is
usually misconfigured, and the user should hear so at once), then queried on one association.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import structlog

from pacsman.config import Config, PacsNode
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.errors import ItemFailed, TransientError
from pacsman.jobstore import JobStore, Run
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, StudyMatch
from pacsman.query import FindAssociation, query_row
from pacsman.throttle import RetryPolicy

__all__ = ["query_pending"]

_log = structlog.get_logger("pacsman.pipeline")

#: Row states that need no more work from the query step.
_SETTLED = frozenset({ItemState.QUERIED, ItemState.NO_MATCH, ItemState.DUPLICATE})


def query_pending(
    store: JobStore,
    run: Run,
    queryfile: QueryFile,
    config: Config,
    default_node: str,
    retry_for: Callable[[PacsNode], RetryPolicy],
) -> int:
    """C-FIND every row of ``queryfile`` not settled in ``run``; return how many were queried.

    Raises:
        FatalError: a PACS rejects pacsman for good; state is kept.
    """
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
        with FindAssociation(peer, retry=retry) as association:
            for row in rows:
                _query_one(store, run, association, row)
    return len(pending)


def _query_one(store: JobStore, run: Run, association: FindAssociation, row: QueryRow) -> None:
    pacs = association.peer.node.name
    try:
        studies = query_row(association, row)
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
