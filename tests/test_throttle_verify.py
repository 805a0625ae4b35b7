"""Courtesy pacing (interval, window, capped congestion back-off) and the per-series verdict."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from pacsman.models import ItemState
from pacsman.throttle import Courtesy, seconds_until_window
from pacsman.verify import verify_series


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        (None, "12:00", 0),
        ("19:00-07:00", "20:00", 0),
        ("19:00-07:00", "03:00", 0),
        ("19:00-07:00", "07:00", 12 * 3600),
        ("19:00-07:00", "18:30", 30 * 60),
        ("08:00-17:00", "12:00", 0),
        ("08:00-17:00", "17:30", 14.5 * 3600),
    ],
)
def test_seconds_until_window(window: str | None, now: str, expected: float) -> None:
    """The wait until a daily window opens, including windows that wrap midnight."""
    moment = datetime.strptime(f"2026-11-23 {now}", "%Y-%m-%d %H:%M")
    assert seconds_until_window(window, moment) == expected


class _Clock:
    """A fake monotonic clock that a stopped Event's wait() advances."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Stop(threading.Event):
    """A stop event whose wait() records the wait and advances the fake clock instead."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(round(timeout or 0.0, 6))
        self.clock.t += timeout or 0.0
        return False


def test_courtesy_backoff_doubles_is_capped_and_ends_with_an_answer() -> None:
    """Congestion in a row pauses the next start 1, 2, 4, 8, 8 s (capped); one answer ends
    the streak at once, so the series after it wait only the interval."""
    courtesy = Courtesy(interval=0.0, max_backoff=8.0)
    backoffs = []
    for _ in range(5):
        courtesy.congested()
        backoffs.append(courtesy.backoff)
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 8.0]
    courtesy.succeeded()
    assert courtesy.backoff == 0.0


def test_congestion_pauses_the_next_start_not_the_series_after_an_answer() -> None:
    """The pause applies to the node's next start; after the PACS answers, later starts wait
    only the configured interval, however long the streak was."""
    clock = _Clock()
    stop = _Stop(clock)
    courtesy = Courtesy(interval=0.5, max_backoff=60.0, stop=stop, clock=clock)
    courtesy.wait_turn()
    for _ in range(20):
        courtesy.congested()
    courtesy.wait_turn()  # the next start waits the capped pause
    courtesy.succeeded()
    courtesy.wait_turn()  # then only the interval
    courtesy.wait_turn()
    assert stop.waits == [60.0, 0.5, 0.5]


def test_courtesy_waits_for_the_interval() -> None:
    """A second start within the interval waits for the rest of it."""
    clock = _Clock()
    stop = _Stop(clock)
    courtesy = Courtesy(interval=60.0, stop=stop, clock=clock)
    courtesy.wait_turn()
    clock.t += 15.0
    courtesy.wait_turn()
    assert stop.waits == [45.0]


@pytest.mark.parametrize(
    ("received", "expected", "completed", "failed", "state", "detail"),
    [
        (12, 12, 12, 0, ItemState.COMPLETE, ""),
        (
            9,
            12,
            12,
            0,
            ItemState.INCOMPLETE,
            "9 of 12 received; the PACS reported 12 completed, 0 failed",
        ),
        (
            9,
            12,
            9,
            3,
            ItemState.INCOMPLETE,
            "9 of 12 received; the PACS reported 9 completed, 3 failed",
        ),
        (
            13,
            12,
            13,
            0,
            ItemState.COMPLETE,
            "received 13, more than the 12 expected (the PACS gained instances since the query)",
        ),
        (5, None, 5, 0, ItemState.COMPLETE, ""),
        (
            4,
            None,
            5,
            0,
            ItemState.INCOMPLETE,
            "4 of 5 received; the PACS reported 5 completed, 0 failed",
        ),
        (
            0,
            None,
            None,
            None,
            ItemState.INCOMPLETE,
            "received 0; no count to verify against (the PACS reported no counts)",
        ),
    ],
)
def test_verify_series(
    received: int,
    expected: int | None,
    completed: int | None,
    failed: int | None,
    state: ItemState,
    detail: str,
) -> None:
    """Received is checked against C-FIND's count (or the PACS's report when there is none)."""
    verdict = verify_series(
        received=received, expected=expected, reported_completed=completed, reported_failed=failed
    )
    assert (verdict.state, verdict.detail) == (state, detail)
