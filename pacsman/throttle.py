"""Retry, back-off and PACS-courtesy policy objects (tenacity underneath).

* :class:`RetryPolicy` is a small value object: how many attempts, how long to wait.  Only
  :class:`~pacsman.errors.TransientError` is retried; everything else goes straight up.
* :class:`Courtesy` paces retrieve starts towards one PACS: a minimum interval that grows with
  congestion and shrinks with success, and an optional daily time window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog
import tenacity

from pacsman.errors import TransientError

__all__ = ["Courtesy", "RetryPolicy", "seconds_until_window"]

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


def _parse_window(window: str) -> tuple[int, int]:
    start, _, end = window.partition("-")

    def minutes(text: str) -> int:
        hours, _, mins = text.strip().partition(":")
        return int(hours) * 60 + int(mins)

    return minutes(start), minutes(end)


def seconds_until_window(window: str | None, now: datetime) -> float:
    """Seconds from ``now`` until the daily window ``HH:MM-HH:MM`` opens (0 when inside it).

    The window may wrap midnight (``19:00-07:00``).
    """
    if window is None:
        return 0.0
    start, end = _parse_window(window)
    current = now.hour * 60 + now.minute + now.second / 60
    inside = start <= current < end if start < end else current >= start or current < end
    if inside:
        return 0.0
    wait_minutes = (start - current) % (24 * 60)
    return wait_minutes * 60


class Courtesy:
    """Paces retrieve starts towards one PACS: interval, daily window, congestion back-off.

    ``interval`` is the configured minimum time between two C-MOVE/C-GET starts.  Each
    congestion signal doubles the current interval (at least 1 s, at most ``max_interval``);
    each success halves it again, down to the configured minimum.  Thread-safe: the
    retrieve workers of one PACS share one instance.
    """

    def __init__(
        self,
        *,
        interval: float = 0.0,
        window: str | None = None,
        max_interval: float = 600.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.minimum = interval
        self.current = interval
        self.window = window
        self.max_interval = max_interval
        self.stop = stop or threading.Event()
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._last_start: float | None = None

    def wait_turn(self, **context: object) -> None:
        """Block until this PACS may get the next retrieve; return at once if stopped."""
        with self._lock:
            opens_in = seconds_until_window(self.window, self._now())
            if opens_in > 0:
                _log.info(
                    "waiting_for_window", window=self.window, wait_s=round(opens_in), **context
                )
                self.stop.wait(opens_in)
            if self._last_start is not None:
                remaining = self._last_start + self.current - self._clock()
                if remaining > 0:
                    self.stop.wait(remaining)
            self._last_start = self._clock()

    def congested(self) -> None:
        """The PACS pushed back: lengthen the interval."""
        with self._lock:
            self.current = min(self.max_interval, max(1.0, self.current * 2))

    def succeeded(self) -> None:
        """A retrieve went through: shorten the interval towards the configured minimum."""
        with self._lock:
            self.current = max(self.minimum, self.current / 2)
            if self.current < 1.0 and self.minimum < 1.0:
                self.current = self.minimum
