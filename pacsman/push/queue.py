"""The throttled push queue: labels first, then at most N pushes at once, paced, retried.

One loop per worker: wait for its turn (the minimum interval between push starts), make one
attempt, and let :class:`~pacsman.throttle.RetryPolicy` retry transient failures with
back-off (50 attempts by default).  A session whose labels are wrong is refused before
anything is transferred.  An item that fails is recorded and the queue goes on; a fatal error
lets the pushes under way finish, starts no new one, and is raised at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import structlog

from pacsman.config.push import PushConfig
from pacsman.errors import FatalError, PacsmanError, TransientError
from pacsman.push.models import LabelProblem, PushOutcome, SessionUpload, Target
from pacsman.throttle import Courtesy, RetryPolicy

__all__ = ["push_all", "retry_policy"]

_log = structlog.get_logger("pacsman.push")
OnDone = Callable[[PushOutcome], None]


def retry_policy(config: PushConfig) -> RetryPolicy:
    """The retry policy the ``push`` config asks for."""
    return RetryPolicy(max_attempts=config.max_attempts, cap=config.backoff_max)


def push_all(
    uploads: Sequence[SessionUpload],
    target: Target,
    *,
    max_concurrent: int = 1,
    interval: float = 0.0,
    retry: RetryPolicy | None = None,
    on_done: OnDone | None = None,
    stop: threading.Event | None = None,
) -> list[PushOutcome]:
    """Push every upload to ``target``; return the outcomes, in the order of ``uploads``.

    ``on_done`` is called once per finished session (DONE or FAILED), from a worker thread.
    Setting ``stop`` starts no new push; uploads never started get no outcome.

    Raises:
        TransientError: XNAT could not be asked about the labels, even after every attempt.
        FatalError: from the target (refused login, permission, AE titles), once the pushes
            under way have finished.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent {max_concurrent} must be at least 1")
    if not uploads:
        return []
    policy = retry or RetryPolicy()
    stop = stop or threading.Event()
    problems = policy.call(lambda: target.check_labels(uploads), operation="push_check_labels")
    run = _Run(uploads, target, policy, Courtesy(interval=interval, stop=stop), stop, on_done)
    run.refused = _refused(uploads, problems)
    with ThreadPoolExecutor(max_concurrent, thread_name_prefix="push") as pool:
        results = list(pool.map(run.work, range(len(uploads))))
    if run.fatal:
        raise run.fatal[0]
    return [r for r in results if r is not None]


@dataclass
class _Run:
    """One push_all call: what each worker needs, and the first fatal error."""

    uploads: Sequence[SessionUpload]
    target: Target
    policy: RetryPolicy
    courtesy: Courtesy
    stop: threading.Event
    on_done: OnDone | None
    refused: dict[int, PushOutcome] = field(default_factory=dict)
    fatal: list[FatalError] = field(default_factory=list)

    def work(self, index: int) -> PushOutcome | None:
        """Push one upload (unless stopped); a fatal error stops the queue."""
        if self.stop.is_set():
            return None
        upload = self.uploads[index]
        try:
            outcome = self.refused.get(index) or _push_one(
                upload, self.target, self.policy, self.courtesy
            )
        except FatalError as exc:
            self.fatal.append(exc)
            self.stop.set()
            return None
        _finished(outcome, self.on_done)
        return outcome


def _refused(
    uploads: Sequence[SessionUpload], problems: Sequence[LabelProblem]
) -> dict[int, PushOutcome]:
    """A FAILED outcome for every upload with a label problem."""
    refused: dict[int, PushOutcome] = {}
    for index, upload in enumerate(uploads):
        mine = [p.message for p in problems if p.upload is upload]
        if mine:
            detail = "; ".join(dict.fromkeys(mine)) + "; nothing was sent"
            refused[index] = PushOutcome(upload, "FAILED", None, 0, detail)
    return refused


def _push_one(
    upload: SessionUpload, target: Target, retry: RetryPolicy, courtesy: Courtesy
) -> PushOutcome:
    attempts = 0

    def attempt() -> PushOutcome:
        nonlocal attempts
        courtesy.wait_turn(session=upload.describe())
        attempts += 1
        return target.push(upload)

    _log.info("push_started", target=target.name, session=upload.describe())
    started = time.monotonic()

    def took() -> float:
        return round(time.monotonic() - started, 3)

    try:
        outcome = retry.call(attempt, operation="push", session=upload.describe())
    except FatalError:
        raise
    except TransientError as exc:
        detail = f"gave up after {attempts} attempt(s): {exc}"
        return PushOutcome(upload, "FAILED", None, 0, detail, attempts, took())
    except PacsmanError as exc:  # ItemFailed, InputError: this session only
        return PushOutcome(upload, "FAILED", None, 0, str(exc), attempts, took())
    return replace(outcome, attempts=attempts, elapsed_s=took())


def _finished(outcome: PushOutcome, on_done: OnDone | None) -> None:
    session = outcome.upload.describe()
    if outcome.state == "DONE":
        _log.info(
            "push_done",
            session=session,
            uri=outcome.uri,
            files=outcome.files_on_target,
            attempts=outcome.attempts,
            elapsed_s=outcome.elapsed_s,
        )
    else:
        _log.warning(
            "push_failed", session=session, reason=outcome.detail, elapsed_s=outcome.elapsed_s
        )
    if on_done is not None:
        on_done(outcome)
