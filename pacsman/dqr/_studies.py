"""One ``pacsman dqr`` run's studies, and every change of one (private to the package).

:class:`Studies` holds the run's study records as the job store holds them and what the run
remembers between polls (:class:`~pacsman.dqr._follow.Watch`).  Every change of a study is
one job-store call (:meth:`Studies.save`); the changes both the import step
(:mod:`._loop`) and the follow step (:mod:`._poll`) make are here: a request given up
(PENDING with back-off, or FAILED after ``dqr.max_attempts``) and a partial session
(replaced with ``dqr.replace_partial``, else PARTIAL).
"""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from pacsman.config.dqr import DqrConfig
from pacsman.dqr._follow import Watch, backoff
from pacsman.dqr._model import DqrState, SessionArrival
from pacsman.dqr._xapi import DqrApi
from pacsman.errors import TransientError
from pacsman.jobstore import Run
from pacsman.jobstore.dqr import DqrLedger, DqrStudyRecord

__all__ = ["Studies"]

_log = structlog.get_logger("pacsman.dqr")


class Studies:
    """One run's studies (by StudyInstanceUID), saved through ``ledger``."""

    def __init__(self, api: DqrApi, ledger: DqrLedger, run: Run, dqr: DqrConfig) -> None:
        self.api, self.dqr = api, dqr
        self._ledger, self._run = ledger, run
        self.records = {r.study.study_instance_uid: r for r in ledger.studies(run)}
        self.watch = Watch()

    def unsettled(self) -> bool:
        """True while a study needs more XNAT traffic."""
        return any(not r.state.settled for r in self.records.values())

    def in_flight(self) -> list[DqrStudyRecord]:
        """The studies between their import call and their verdict."""
        return [r for r in self.records.values() if r.in_flight]

    def save(self, before: DqrStudyRecord, after: DqrStudyRecord) -> None:
        """Record ``after`` (one job-store call); log a change of state."""
        saved = self._ledger.save(self._run, after, before=before)
        self.records[saved.study.study_instance_uid] = saved
        if saved.state is not before.state:
            event = "dqr_study_settled" if saved.state.settled else "dqr_study"
            _log.info(
                event,
                row=saved.line,
                state=saved.state.value,
                request_id=saved.request_id,
                attempts=saved.attempts,
                detail=saved.detail,
            )

    def retry_or_fail(
        self, record: DqrStudyRecord, reason: str, *, before: DqrStudyRecord | None = None
    ) -> None:
        """Give the study's request up: PENDING with back-off, or FAILED after
        ``dqr.max_attempts`` (``before``: the record as stored, when ``record`` is not)."""
        before = before or record
        now, most = time.time(), self.dqr.max_attempts
        if record.attempts >= most:
            detail = (
                f"{reason}; gave up after {record.attempts} attempt(s) (dqr.max_attempts {most})"
            )
            self.save(before, replace(record, state=DqrState.FAILED, detail=detail))
            return
        wait = backoff(record.attempts, self.dqr)
        after = replace(  # request_id stays: the last request, never taken over again
            record,
            state=DqrState.PENDING,
            request_status="",
            status_since=now,
            next_attempt_at=now + wait,
            detail=f"{reason}; asking again in {wait:g} s "
            f"(attempt {record.attempts + 1} of {most})",
        )
        self.save(before, after)
        _log.info("dqr_retry", row=record.line, attempts=record.attempts, wait_s=wait)

    def partial(
        self, record: DqrStudyRecord, arrival: SessionArrival, text: str, *, asked: bool
    ) -> bool:
        """A partial or empty session: deleted (``dqr.replace_partial``, attempts left) and
        asked for again, else PARTIAL.  ``asked``: our request delivered it (the study is in
        flight).  Returns True when the study is settled or waits (no import now)."""
        attempts_left = record.attempts < self.dqr.max_attempts
        if not (self.dqr.replace_partial and attempts_left):
            fix = (
                "" if self.dqr.replace_partial else "; set dqr.replace_partial: true to replace it"
            )
            done = replace(record, state=DqrState.PARTIAL, files=arrival.files, detail=text + fix)
            self.save(record, done)
            return True
        try:
            self.api.delete_session(record.study.session)
        except TransientError as exc:  # before an import, counted as an attempt
            tried = record if asked else replace(record, attempts=record.attempts + 1)
            self.retry_or_fail(tried, f"{text}; deleting it failed: {exc}", before=record)
            return True
        _log.info("dqr_session_replaced", row=record.line, files=arrival.files)
        self.watch.forget(record.study.study_instance_uid)
        if asked:
            self.retry_or_fail(record, f"{text}: deleted, to be asked for again")
            return True
        return False
