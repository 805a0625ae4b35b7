"""What one look at XNAT means for one study in flight (private to the package).

The run looks at XNAT's queue and history once per ``dqr.poll_interval`` (not once per
study), and at the session of each study whose request was ISSUED or RECEIVED.  This module
turns what it saw into a :class:`Verdict` for the study: wait (in which state), settle (DONE,
UNVERIFIED, FAILED), give the request up (stale, FAILED inside XNAT, vanished: the run asks
again or fails the study after ``dqr.max_attempts``), or a partial session (replaced when
``dqr.replace_partial``, else reported).  Nothing here talks to XNAT or the job store.

Staleness timers run from when the status was first seen (``status_since``, kept in the job
store, so a rerun after ``kill -9`` keeps counting): ``queued``, ``processing``, ``issued``
(also RECEIVING, BUILDING and any status XNAT's REST does not document) and ``received``.
A session settles UNVERIFIED (files there, nothing to compare them with) only once it held
still over two polls; a partial or empty one after RECEIVED likewise, or at the received
timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pacsman.config.dqr import DqrConfig, DqrStaleAfter
from pacsman.dqr._model import (
    ArrivalVerdict,
    DqrState,
    QueuedRequest,
    RequestStatus,
    SessionArrival,
)

__all__ = [
    "MISSING_POLLS",
    "STILL_LOOKS",
    "Action",
    "Seen",
    "Verdict",
    "Watch",
    "arrival_text",
    "backoff",
    "followed_state",
    "judge",
    "stale_limit",
]

#: Identical looks at a session (over two polls) before it counts as holding still.
STILL_LOOKS = 3
#: A request missing from both the queue and the history for more polls than this is stale.
MISSING_POLLS = 1
_GIVEN_UP = frozenset({RequestStatus.FAILED, RequestStatus.ERROR})
_STATE = {
    RequestStatus.QUEUED: DqrState.QUEUED,
    RequestStatus.PROCESSING: DqrState.PROCESSING,
    RequestStatus.RECEIVED: DqrState.RECEIVED,
}


class Action(StrEnum):
    """What the run does with a study after a poll."""

    WAIT = "wait"  # keep following the request (state may have moved on)
    SETTLE = "settle"  # the study's verdict is final
    GIVE_UP = "give_up"  # the request is given up: ask again, or fail after max_attempts
    PARTIAL = "partial"  # the session is partial or empty: replace it, or report it


@dataclass(frozen=True)
class Verdict:
    """The :class:`Action` for one study, its (next) state and the reason."""

    action: Action
    state: DqrState
    detail: str


def followed_state(status: RequestStatus) -> DqrState | None:
    """pacsman's state for XNAT's status; None for FAILED and ERROR (given up)."""
    if status in _GIVEN_UP:
        return None
    return _STATE.get(status, DqrState.ISSUED)


def stale_limit(status: RequestStatus, stale: DqrStaleAfter) -> tuple[str, float]:
    """The ``dqr.stale_after`` key and seconds for a request in ``status``."""
    key = {
        RequestStatus.QUEUED: "queued",
        RequestStatus.PROCESSING: "processing",
        RequestStatus.RECEIVED: "received",
    }.get(status, "issued")
    seconds: float = getattr(stale, key)
    return key, seconds


def backoff(attempts: int, config: DqrConfig) -> float:
    """Seconds before the next attempt after ``attempts`` (1 or more): one poll interval,
    doubled per attempt, at most ``dqr.backoff_max``."""
    exponent = min(max(attempts - 1, 0), 30)
    return float(min(config.backoff_max, config.poll_interval * 2**exponent))


class Watch:
    """What the run remembers between polls, in memory: how many polls each request was
    missing from both lists, and the last looks at each session."""

    def __init__(self) -> None:
        self._missing: dict[int, int] = {}
        self._looks: dict[str, list[tuple[str, int, tuple[tuple[str, int], ...]]]] = {}

    def missing(self, request_id: int) -> int:
        """Count one more poll without ``request_id``; return how many in a row."""
        self._missing[request_id] = self._missing.get(request_id, 0) + 1
        return self._missing[request_id]

    def present(self, request_id: int) -> None:
        """``request_id`` was seen."""
        self._missing.pop(request_id, None)

    def look(self, study_instance_uid: str, arrival: SessionArrival) -> int:
        """Record one look at the study's session; return how many looks in a row found it
        the same (verdict, files, files per scan)."""
        looks = self._looks.setdefault(study_instance_uid, [])
        looks.append((arrival.verdict.value, arrival.files, arrival.scans))
        del looks[:-STILL_LOOKS]
        same = 1
        for earlier in reversed(looks[:-1]):
            if earlier != looks[-1]:
                break
            same += 1
        return same

    def forget(self, study_instance_uid: str) -> None:
        """Start over for this study's session (a new request)."""
        self._looks.pop(study_instance_uid, None)


@dataclass(frozen=True)
class Seen:
    """What one poll showed of one study's request, and of its session."""

    state: DqrState
    request_id: int
    request: QueuedRequest | None
    missing_polls: int
    status_since: float
    arrival: SessionArrival | None = None
    still_looks: int = 0


def judge(seen: Seen, session: str, now: float, config: DqrConfig) -> Verdict:
    """The verdict for a study in flight after one poll (see the module docstring)."""
    if seen.request is None:
        if seen.missing_polls > MISSING_POLLS:
            return Verdict(
                Action.GIVE_UP,
                DqrState.PENDING,
                f"XNAT request {seen.request_id} is in neither its queue nor its history "
                f"({seen.missing_polls} polls)",
            )
        return Verdict(Action.WAIT, seen.state, "")
    status = seen.request.status
    shown = seen.request.status_text or status.value
    state = followed_state(status)
    if state is None:
        return Verdict(
            Action.GIVE_UP, DqrState.PENDING, f"XNAT reported request {seen.request_id} {shown}"
        )
    on_arrival = _arrival_verdict(seen, state, session)
    if on_arrival is not None:
        return on_arrival
    key, limit = stale_limit(status, config.stale_after)
    age = now - seen.status_since
    if age > limit:
        if seen.arrival is not None and seen.arrival.verdict in _SHORT:
            return _partial(seen.arrival, session)
        return Verdict(
            Action.GIVE_UP,
            DqrState.PENDING,
            f"XNAT request {seen.request_id} stayed {shown} for {age:.0f} s, longer than "
            f"dqr.stale_after.{key} ({limit:g} s)",
        )
    return Verdict(Action.WAIT, state, f"XNAT request {seen.request_id} {shown}")


_SHORT = frozenset({ArrivalVerdict.PARTIAL, ArrivalVerdict.EMPTY})


def _arrival_verdict(seen: Seen, state: DqrState, session: str) -> Verdict | None:
    """A final verdict from the session itself, if it gives one now."""
    arrival = seen.arrival
    if arrival is None:
        return None
    verdict = arrival.verdict
    if verdict is ArrivalVerdict.COMPLETE:
        return Verdict(Action.SETTLE, DqrState.DONE, arrival_text(arrival, session))
    if verdict is ArrivalVerdict.OTHER_STUDY:
        return Verdict(Action.SETTLE, DqrState.FAILED, arrival_text(arrival, session))
    if verdict is ArrivalVerdict.UNVERIFIED and seen.still_looks >= STILL_LOOKS:
        return Verdict(Action.SETTLE, DqrState.UNVERIFIED, arrival_text(arrival, session))
    if verdict in _SHORT and state is DqrState.RECEIVED and seen.still_looks >= STILL_LOOKS:
        return _partial(arrival, session)
    return None


def _partial(arrival: SessionArrival, session: str) -> Verdict:
    return Verdict(Action.PARTIAL, DqrState.PARTIAL, arrival_text(arrival, session))


def arrival_text(arrival: SessionArrival, session: str) -> str:
    """The reason a study gets from its session (no patient identifiers)."""
    detail = arrival.detail or f"{arrival.files} file(s) in {len(arrival.scans)} scan(s)"
    if arrival.verdict is ArrivalVerdict.UNVERIFIED and "counts unverified" not in detail:
        detail += "; counts unverified"
    if detail.startswith(("session ", "subject ")):
        return detail
    return f"session {session!r}: {detail}"
