"""The import-and-follow loop of ``pacsman dqr``, and its import step (private to the
package).

One readable loop until every study is settled:

* **poll** (every ``dqr.poll_interval``, while requests are in flight): XNAT's queue and
  history once, then each study in flight judged, its session looked at once its request
  is ISSUED or RECEIVED (:func:`pacsman.dqr._poll.poll`);
* **import** the next PENDING study whose back-off has passed, while fewer than
  ``dqr.max_in_flight`` are in flight and ``dqr.interval`` has passed since the last call
  (the first call at once); a study asked for again is first looked for in XNAT's queue
  (a request newer than any the run recorded is followed, not asked for twice: the import
  answer was refused, or the run was killed) and then in the archive: a session that
  arrived meanwhile settles it, a partial one is replaced or reported;
* **sleep** until the next of those is due.

Every change of a study is one job-store call (:class:`pacsman.dqr._studies.Studies`).
Every import call counts as an attempt; a request given up (stale, FAILED or ERROR inside
XNAT, vanished) sends the study back to PENDING with back-off, or FAILED after
``dqr.max_attempts``.  XNAT's 403 on an import (:class:`~pacsman.dqr._xapi.DqrRefused`)
stops the run and leaves every study resumable.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

import structlog

from pacsman.config import Config
from pacsman.dqr._arrival import check_arrival, labels_taken
from pacsman.dqr._follow import arrival_text
from pacsman.dqr._model import ArrivalVerdict, DqrState, PacsEntry, RequestStatus, SessionArrival
from pacsman.dqr._poll import poll
from pacsman.dqr._studies import Studies
from pacsman.dqr._xapi import DqrApi
from pacsman.errors import ItemFailed, TransientError
from pacsman.jobstore import Run
from pacsman.jobstore.dqr import DqrLedger, DqrStudyRecord

__all__ = ["Loop"]

_log = structlog.get_logger("pacsman.dqr")
#: The longest single sleep, so that progress events and Ctrl-C are never held up for long.
_MAX_SLEEP = 1.0


@dataclass(frozen=True)
class _Target:
    """Where the studies come from and go to."""

    pacs: PacsEntry
    receiver: tuple[str, int]


class Loop:
    """One run's studies, imported and followed until each is settled."""

    def __init__(
        self, api: DqrApi, ledger: DqrLedger, run: Run, config: Config, pacs: PacsEntry
    ) -> None:
        self._api, self._config, self._dqr = api, config, config.dqr
        self._target = _Target(pacs, (config.dqr.receiver_ae_title, config.dqr.receiver_port))
        self._studies = Studies(api, ledger, run, config.dqr)
        #: Studies to look up in the archive before their first import (labels unchecked).
        self._look_first: set[str] = set()
        self._last_import = float("-inf")  # time.monotonic() of the last import call
        self._next_poll = 0.0
        self._next_progress = time.monotonic() + config.log.progress_interval
        #: Import calls made by this invocation.
        self.imports = 0

    # -- the loop ---------------------------------------------------------------------------

    def work(self) -> None:
        """Take over requests already at XNAT, settle what the archive already holds, then
        import and follow until every study is settled.

        Raises:
            DqrRefused: XNAT refused an import (403); studies stay resumable.
            FatalError: XNAT refused pacsman for good (login, receiver, PACS id).
        """
        self._try_failed_again()
        self._adopt_queued()
        self._settle_existing()
        while self._studies.unsettled():
            if self._studies.in_flight() and time.monotonic() >= self._next_poll:
                poll(self._studies)
                self._next_poll = time.monotonic() + self._dqr.poll_interval
            self._import_due()
            self._progress()
            if self._studies.unsettled():
                time.sleep(self._pause())
        self._progress(force=True)

    def _pause(self) -> float:
        """Seconds until the next poll, import or back-off is due (at most a second)."""
        now, wall = time.monotonic(), time.time()
        due = [now + _MAX_SLEEP]
        if self._studies.in_flight():
            due.append(self._next_poll)
        if len(self._studies.in_flight()) < self._dqr.max_in_flight:
            pending = [
                r.next_attempt_at
                for r in self._studies.records.values()
                if r.state is DqrState.PENDING
            ]
            if pending:
                backed_off = now + max(0.0, min(pending) - wall)
                due.append(max(backed_off, self._last_import + self._dqr.interval))
        return min(max(0.0, min(due) - now), _MAX_SLEEP)

    def _progress(self, *, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_progress:
            return
        self._next_progress = time.monotonic() + self._config.log.progress_interval
        states = Counter(r.state.value for r in self._studies.records.values())
        _log.info(
            "dqr_progress", studies=len(self._studies.records), imports=self.imports, **states
        )

    # -- before the first import ------------------------------------------------------------

    def _try_failed_again(self) -> None:
        """A new invocation tries FAILED and PARTIAL studies again, with a fresh budget of
        ``dqr.max_attempts`` (what XNAT already holds is looked at first: nothing complete
        is asked for twice, a partial session is only replaced with ``dqr.replace_partial``)."""
        for record in list(self._studies.records.values()):
            if record.state in (DqrState.FAILED, DqrState.PARTIAL):
                again = replace(
                    record,
                    state=DqrState.PENDING,
                    request_status="",
                    attempts=0,
                    next_attempt_at=0.0,
                    detail=f"tried again (was {record.state.name}: {record.detail})",
                )
                self._studies.save(record, again)

    def _adopt_queued(self, only: DqrStudyRecord | None = None) -> bool:
        """Follow a request XNAT holds in its queue for a PENDING study (``only``: for that
        one) instead of asking twice: the oldest one newer than every request the run
        recorded (an older one was given up, even when XNAT still lists it).  It is there
        when the run was killed between an import call and recording it, or XNAT's answer to
        an import was not the one QUEUED request expected (the import was refused, but XNAT
        may have queued it).  Returns True when a request was taken over."""
        pending = {u: r for u, r in self._studies.records.items() if r.state is DqrState.PENDING}
        if only is not None:
            pending = {only.study.study_instance_uid: only}
        if not pending:
            return False
        newest = max((r.request_id or 0 for r in self._studies.records.values()), default=0)
        try:
            queued = self._api.queue()
        except TransientError as exc:
            _log.warning("dqr_poll_failed", problem=str(exc))
            return False
        adopted = False
        for request in sorted(queued, key=lambda q: q.id):  # the oldest newer one of each
            record = pending.get(request.study_instance_uid)
            if record is None or request.id <= newest:  # an older one: given up, never again
                continue
            del pending[request.study_instance_uid]
            adopted = True
            processing = request.status is RequestStatus.PROCESSING
            state = DqrState.PROCESSING if processing else DqrState.QUEUED
            after = replace(
                record,
                state=state,
                request_id=request.id,
                request_status=request.status.value,
                status_since=time.time(),
                attempts=record.attempts + 1,
                detail=f"XNAT request {request.id} found in its queue; followed",
            )
            self._studies.save(record, after)
        return adopted

    def _settle_existing(self) -> None:
        """Sessions already in the project: complete ones settle without an import, a label
        held by another study fails its row before any import (:func:`labels_taken`)."""
        pending = [r.study for r in self._studies.records.values() if r.state is DqrState.PENDING]
        if not pending:
            return
        try:
            taken = labels_taken(self._api, pending)
        except TransientError as exc:  # each study is then looked up before its import
            _log.warning("dqr_labels_unchecked", problem=str(exc))
            self._look_first.update(s.study_instance_uid for s in pending)
            return
        for study, arrival in taken:
            record = self._studies.records[study.study_instance_uid]
            self._existing(record, arrival, found="already in XNAT")

    def _existing(self, record: DqrStudyRecord, arrival: SessionArrival, *, found: str) -> bool:
        """Settle ``record`` from the session already there; True when it is settled (no
        import), False when it is to be imported (no session, or a partial one deleted)."""
        verdict = arrival.verdict
        text = arrival_text(arrival, record.study.session)
        settled = {
            ArrivalVerdict.COMPLETE: DqrState.DONE,
            ArrivalVerdict.UNVERIFIED: DqrState.UNVERIFIED,
            ArrivalVerdict.OTHER_STUDY: DqrState.FAILED,
        }
        if verdict in settled:
            fix = (
                "; give this row another Session label"
                if verdict is ArrivalVerdict.OTHER_STUDY
                else ""
            )
            self._studies.save(
                record,
                replace(
                    record,
                    state=settled[verdict],
                    files=arrival.files,
                    detail=f"{found}: {text}{fix}",
                ),
            )
            return True
        if verdict is ArrivalVerdict.MISSING:
            return False
        return self._studies.partial(record, arrival, text, asked=False)

    # -- import -----------------------------------------------------------------------------

    def _import_due(self) -> None:
        """Import PENDING studies while there is room in flight and the interval has passed."""
        while len(self._studies.in_flight()) < self._dqr.max_in_flight:
            if time.monotonic() < self._last_import + self._dqr.interval:
                return
            due = self._next_due()
            if due is None:
                return
            look = due.attempts or due.study.study_instance_uid in self._look_first
            self._look_first.discard(due.study.study_instance_uid)
            if look and self._found_before_import(due):
                continue
            self._import(due)

    def _next_due(self) -> DqrStudyRecord | None:
        wall = time.time()
        due = [
            r
            for r in self._studies.records.values()
            if r.state is DqrState.PENDING and r.next_attempt_at <= wall
        ]
        return min(due, key=lambda r: (r.line, r.study.study_instance_uid), default=None)

    def _found_before_import(self, record: DqrStudyRecord) -> bool:
        """Before asking again: True when XNAT's queue holds a request for the study (taken
        over) or the archive settles it (or a problem there put it back to wait)."""
        if record.attempts and self._adopt_queued(record):
            return True
        try:
            arrival = check_arrival(self._api, record.study)
        except TransientError as exc:  # counted as an attempt: it cannot go on for ever
            tried = replace(record, attempts=record.attempts + 1)
            reason = f"checking session {record.study.session!r}: {exc}"
            self._studies.retry_or_fail(tried, reason, before=record)
            return True
        return self._existing(record, arrival, found="found in XNAT before asking again")

    def _import(self, record: DqrStudyRecord) -> None:
        """One import call for one study (one attempt).

        Raises:
            DqrRefused, FatalError: as :meth:`work`.
        """
        self._last_import = time.monotonic()
        self.imports += 1
        tried = replace(record, attempts=record.attempts + 1)
        target = self._target
        try:
            request = self._api.import_study(target.pacs.id, target.receiver, record.study)
        except TransientError as exc:
            self._studies.retry_or_fail(tried, f"import call failed: {exc}", before=record)
            return
        except ItemFailed as exc:
            self._studies.save(record, replace(tried, state=DqrState.FAILED, detail=str(exc)))
            return
        self._studies.watch.forget(record.study.study_instance_uid)
        after = replace(
            tried,
            state=DqrState.QUEUED,
            request_id=request.id,
            request_status=request.status.value,
            status_since=time.time(),
            next_attempt_at=0.0,
            detail=f"XNAT request {request.id} queued (attempt {tried.attempts} of "
            f"{self._dqr.max_attempts})",
        )
        self._studies.save(record, after)
        _log.info(
            "dqr_request_queued", row=record.line, request_id=request.id, attempt=tried.attempts
        )
