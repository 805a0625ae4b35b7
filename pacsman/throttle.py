"""Retry and back-off policy objects (tenacity underneath).

A :class:`RetryPolicy` is a small value object: how many attempts, how long to wait.  Only
:class:`~pacsman.errors.TransientError` is retried; everything else goes straight up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
import tenacity

from pacsman.errors import TransientError

__all__ = ["RetryPolicy"]

T = TypeVar("T")
_log = structlog.get_logger("pacsman.throttle")


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` tries, exponential back-off from ``initial`` to ``cap`` seconds.

    ``jitter`` adds up to that many random seconds to each wait, so that many clients
    retrying against one PACS do not fall into step.
    """

    max_attempts: int = 50
    initial: float = 1.0
    cap: float = 60.0
    jitter: float = 1.0

    def call(self, fn: Callable[[], T], *, operation: str, **context: object) -> T:
        """Call ``fn`` until it succeeds, raises a non-transient error, or attempts run out.

        Raises:
            TransientError: the last transient error, once ``max_attempts`` is spent.
            Exception: anything non-transient ``fn`` raises, at once.
        """

        def _before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            _log.warning(
                "retrying",
                operation=operation,
                attempt=state.attempt_number,
                max_attempts=self.max_attempts,
                wait_s=round(state.upcoming_sleep, 2),
                reason=str(error),
                **context,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_exponential(multiplier=self.initial, max=self.cap)
            + tenacity.wait_random(0, self.jitter),
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=_before_sleep,
            reraise=True,
        )
        return retrying(fn)
