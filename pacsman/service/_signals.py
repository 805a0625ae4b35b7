"""The service's signals and its last-resort exit (private to the service).

SIGTERM and SIGINT ask for a drain (a second one aborts), SIGHUP for a reload: the handlers
only take note and wake the loop, which does the work.  After an abort, :func:`exit_later`
makes sure a peer's thread that does not let go cannot hold the process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import structlog

from pacsman.errors import EXIT_OK

__all__ = ["exit_later", "handling_signals"]

_log = structlog.get_logger("pacsman.service")


@contextmanager
def handling_signals(stop: Callable[[], None], reload: Callable[[], None]) -> Iterator[None]:
    """Within the block: SIGTERM/SIGINT call ``stop``, SIGHUP ``reload``; the old handlers
    after."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        reload()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_reload),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_later(seconds: float) -> None:
    """End the process (exit 0: every series is resumable) in ``seconds``, should closing the
    SCP, HTTP or the job store still be waiting on a peer then."""

    def leave() -> None:
        _log.warning("service_exit_forced", after_s=seconds)
        os._exit(EXIT_OK)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
