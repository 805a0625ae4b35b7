"""The query step: a C-FIND per unsettled query row, recorded in the job store.

Private to :mod:`pacsman.pipeline`.  Rows are grouped by PACS node; each node is C-ECHOed
first (at most 3 attempts: a PACS that does not answer at the start of a night's run is
usually misconfigured, and the user should hear so at once), then queried on one association.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import structlog
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacsman.config import Config, PacsNode
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.hooks import set_unvalidated
from pacsman.errors import ItemFailed, TransientError
from pacsman.jobstore import JobStore, Run
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, StudyMatch
from pacsman.pipeline._interrupt import closed
from pacsman.pipeline.progress import Counts, Stage
from pacsman.query import FindAssociation, query_row
from pacsman.queryfile import column_number, sendable_problem
from pacsman.throttle import RetryPolicy, check_halt, give_way

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
    *,
    counts: Counts | None = None,
) -> int:
    """C-FIND every row of ``queryfile`` not settled in ``run``; return how many were queried.

    ``counts`` gets each row as it is settled (failed: no match, or the query failed).

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
    if counts is not None:
        counts.start(Stage.QUERY)
    for name, rows in by_node.items():
        node = config.node(name)
        peer = DicomPeer(node, config.local.ae_title, config.local.port)
        retry = retry_for(node)
        preflight = replace(retry, max_attempts=min(3, retry.max_attempts))
        preflight.call(partial(client.echo, peer), operation="c_echo", pacs=name)
        _log.info("pacs_ready", pacs=name, rows=len(rows))
        with closed(FindAssociation(peer, retry=retry)) as association:
            for row in rows:
                check_halt()  # a service job asked to stop queries no further row
                found = _query_one(store, run, association, row, queryfile.path)
                if counts is not None:
                    counts.add(Stage.QUERY, units=int(found), failed=int(not found))
                if give_way(name, node.head_node_associations):
                    association.close()  # reopened, in turn, for the next row
    return len(pending)


def _query_one(
    store: JobStore, run: Run, association: FindAssociation, row: QueryRow, path: Path
) -> bool:
    """Query and record one row; False when it failed or matched nothing."""
    pacs = association.peer.node.name
    try:
        _check_sendable(row, association.peer.node, path)
        studies = _query_row(association, row, path)
        _check_one_session(row, studies)
    except (ItemFailed, TransientError) as exc:
        store.fail_row(run, row.line, str(exc))
        _log.error("row_failed", row=row.line, pacs=pacs, reason=str(exc))
        return False
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
    return bool(result.studies or result.duplicate_of)


def _check_sendable(row: QueryRow, node: PacsNode, path: Path) -> None:
    """Before any C-FIND: every value of the row can be sent in the node's character set.

    Raises:
        ItemFailed: a value cannot be sent; the message locates it as ``file:line:column``.
    """
    found = sendable_problem(row, node=node.name, character_set=node.character_set)
    if found is not None:
        column, message = found
        raise ItemFailed(f"{_where(path, row, column)}: {message}")


def _query_row(association: FindAssociation, row: QueryRow, path: Path) -> tuple[StudyMatch, ...]:
    """:func:`query_row`, with an identifier that cannot be encoded failing only this row.

    The identifier is encoded before anything is sent, so the association stays usable.

    Raises:
        ItemFailed: the PACS refused, or the identifier could not be encoded (located).
        TransientError: the PACS still pushes back after every attempt.
    """
    try:
        return query_row(association, row)
    except ValueError as exc:  # pynetdicom and the fast path both say "... encode ..."
        if not isinstance(exc, UnicodeError) and "encod" not in str(exc):
            raise
        node = association.peer.node
        column = _unencodable_column(row, node.character_set)
        raise ItemFailed(
            f"{_where(path, row, column)}: the C-FIND identifier of this row could not be "
            f"encoded for PACS node '{node.name}' (character set {node.character_set!r}); "
            f"correct the value, or pacs.{node.name}.character_set"
        ) from None


def _unencodable_column(row: QueryRow, character_set: str) -> str | None:
    """The first key of ``row`` that pydicom cannot encode alone, if any."""
    for keyword, value in row.keys.items():
        dataset = Dataset()
        set_unvalidated(dataset, "SpecificCharacterSet", character_set.split("\\"))
        set_unvalidated(dataset, keyword, value.split("\\") if "\\" in value else value)
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, True
        try:
            write_dataset(out, dataset)
        except (ValueError, TypeError, LookupError):  # pydicom re-raises UnicodeEncodeError
            return keyword  # as TypeError ("function takes exactly 5 arguments")
    return None


def _where(path: Path, row: QueryRow, column: str | None) -> str:
    """``file:line:column`` of a row's value (``file:line`` when the column is unknown)."""
    number = column_number(path, column) if column is not None else None
    return f"{path}:{row.line}" + (f":{number}" if number is not None else "")


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
