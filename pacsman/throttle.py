"""Retry, back-off and PACS-courtesy policy objects (tenacity underneath).

* :class:`RetryPolicy` is a small value object: how many attempts, how long to wait.  Only
  :class:`~pacsman.errors.TransientError` is retried; everything else goes straight up.
* :class:`Courtesy` paces retrieve starts towards one PACS: a minimum interval, an optional
  daily time window, and a capped pause after congestion that the next answer ends.
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

    ``interval`` is the configured minimum time between two C-MOVE/C-GET starts.  When the
    PACS pushes back (congestion: 0xA70x, a transient association reject, an abort), the
    node's *next* start waits a pause: 1 s after the first signal, doubling with each further
    signal in a row, never more than ``max_backoff``.  Any answer from the PACS -- a success,
    or the refusal of one request -- ends the streak, so the series after it wait only the
    interval: the back-off never grows into a penalty on unrelated series.  Thread-safe: the
    retrieve workers of one PACS share one instance.
    """

    def __init__(
        self,
        *,
        interval: float = 0.0,
        window: str | None = None,
        max_backoff: float = 60.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.minimum = interval
        self.window = window
        self.max_backoff = max_backoff
        self.stop = stop or threading.Event()
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._last_start: float | None = None
        self._streak = 0
        self._paused_until = 0.0

    @property
    def backoff(self) -> float:
        """The pause the current congestion streak calls for (0 when there is none)."""
        if self._streak == 0:
            return 0.0
        return float(min(self.max_backoff, 2.0 ** (self._streak - 1)))

    def wait_turn(self, **context: object) -> None:
        """Block until this PACS may get the next retrieve; return at once if stopped."""
        with self._lock:
            opens_in = seconds_until_window(self.window, self._now())
            if opens_in > 0:
                _log.info(
                    "waiting_for_window", window=self.window, wait_s=round(opens_in), **context
                )
                self.stop.wait(opens_in)
            start = self._paused_until
            if self._last_start is not None:
                start = max(start, self._last_start + self.minimum)
            remaining = start - self._clock()
            if remaining > 0:
                self.stop.wait(remaining)
            self._last_start = self._clock()

    def congested(self) -> None:
        """The PACS pushed back: pause the node's next start (see the class docstring)."""
        with self._lock:
            self._streak += 1
            self._paused_until = max(self._paused_until, self._clock() + self.backoff)

    def succeeded(self) -> None:
        """The PACS answered (a success, or a refusal of this one request): end the streak."""
        with self._lock:
            self._streak = 0
            self._paused_until = 0.0
