"""The follow step of ``pacsman dqr`` (private to the package): one look at XNAT's queue
and history per ``dqr.poll_interval``, then each study in flight judged
(:func:`pacsman.dqr._follow.judge`), its session looked at once its request is ISSUED or
RECEIVED, and the verdict applied (:class:`~pacsman.dqr._studies.Studies`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from pacsman.dqr._arrival import check_arrival
from pacsman.dqr._follow import Action, Seen, Verdict, followed_state, judge
from pacsman.dqr._model import DqrState, QueuedRequest, SessionArrival
from pacsman.dqr._studies import Studies
from pacsman.errors import TransientError
from pacsman.jobstore.dqr import DqrStudyRecord

__all__ = ["poll"]

_log = structlog.get_logger("pacsman.dqr")


def poll(studies: Studies) -> None:
    """One look at XNAT's queue and history, then each study in flight judged."""
    try:  # the queue first: a request leaving it meanwhile is then in the history
        queued = studies.api.queue()
        seen = {q.id: q for q in [*queued, *studies.api.history()]}
    except TransientError as exc:
        _log.warning("dqr_poll_failed", problem=str(exc))
        return
    for record in studies.in_flight():
        _follow(studies, record, seen)


def _follow(studies: Studies, record: DqrStudyRecord, seen: dict[int, QueuedRequest]) -> None:
    assert record.request_id is not None
    found = seen.get(record.request_id)
    missing = 0
    if found is None:
        missing = studies.watch.missing(record.request_id)
    else:
        studies.watch.present(record.request_id)
    shown = "" if found is None else (found.status_text or found.status.value)
    now = time.time()
    since = record.status_since if shown in ("", record.request_status) else now
    arrival, looks = _look(studies, record, found)
    view = Seen(record.state, record.request_id, found, missing, since, arrival, looks)
    _apply(
        studies,
        record,
        judge(view, record.study.session, now, studies.dqr),
        shown or record.request_status,
        since,
        arrival,
    )


def _look(
    studies: Studies, record: DqrStudyRecord, found: QueuedRequest | None
) -> tuple[SessionArrival | None, int]:
    """The session, once the request was ISSUED or RECEIVED (else None)."""
    if found is None:
        return None, 0
    if followed_state(found.status) not in (DqrState.ISSUED, DqrState.RECEIVED):
        return None, 0
    try:
        arrival = check_arrival(studies.api, record.study)
    except TransientError as exc:
        _log.warning("dqr_arrival_check_failed", row=record.line, problem=str(exc))
        return None, 0
    return arrival, studies.watch.look(record.study.study_instance_uid, arrival)


def _apply(
    studies: Studies,
    record: DqrStudyRecord,
    verdict: Verdict,
    status: str,
    since: float,
    arrival: SessionArrival | None,
) -> None:
    files = record.files if arrival is None else arrival.files
    if verdict.action is Action.WAIT:
        detail = verdict.detail or record.detail
        after = replace(
            record,
            state=verdict.state,
            request_status=status,
            status_since=since,
            files=files,
            detail=detail,
        )
        if after != record:
            studies.save(record, after)
    elif verdict.action is Action.SETTLE:
        studies.save(
            record,
            replace(
                record,
                state=verdict.state,
                request_status=status,
                files=files,
                detail=verdict.detail,
            ),
        )
    elif verdict.action is Action.GIVE_UP:
        studies.retry_or_fail(record, verdict.detail)
    else:
        assert arrival is not None
        studies.partial(
            replace(record, request_status=status, files=files),
            arrival,
            verdict.detail,
            asked=True,
        )
