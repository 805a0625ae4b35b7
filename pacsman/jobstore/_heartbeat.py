"""The heartbeat of a run being worked on: a daemon thread that beats (private to the package).

A run counts as running only while its heartbeat in the job store is fresh; a process that
is killed (``kill -9``, power loss) simply stops beating.  A beat that fails (the disk is
full, the store is locked for long) is logged and tried again at the next interval: the
heartbeat never stops the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

__all__ = ["Heartbeat"]

_log = structlog.get_logger("pacsman.jobstore")


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds from a daemon thread until :meth:`stop`."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pacsman-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Start beating (the first beat comes after one interval)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; returns once no beat is under way."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self._interval))

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # a missed beat must not end the run
                _log.warning("heartbeat_failed", problem=str(exc))
