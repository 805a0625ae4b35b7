"""Ctrl-C during a run (private to :mod:`pacsman.pipeline`).

* The first Ctrl-C (or SIGTERM: ``kill``, ``systemctl stop``) raises
  :class:`KeyboardInterrupt` in the run: the de-identify/push process
  is stopped, the job store records how far the run got, and the command exits 130 with
  "interrupted; run the same command again to resume" (the CLI).  Every state change is one
  job-store transaction and every file is renamed into place whole, so the rerun resumes.
* A second Ctrl-C while that happens ends the command at once (exit 130, no traceback); the
  de-identify/push process ends with it (it never works on without the run).
* Once the run has stopped its own work, the process ends within :data:`GRACE_SECONDS`
  (:func:`end_soon`), even if a thread of the DICOM library still waits for a busy peer to
  let go of an association (it would otherwise hold the exit for up to its timeout).
* An association that was busy when Ctrl-C came is closed beside (:func:`closed`): a polite
  release waits for the PACS, which may still be working on our request for minutes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol, TypeVar

from pacsman.errors import EXIT_INTERRUPTED

__all__ = ["GRACE_SECONDS", "INTERRUPTED", "closed", "end_soon", "interruptible"]

#: What the command says when Ctrl-C ended it.
INTERRUPTED = "interrupted; run the same command again to resume"
#: Seconds the process has, once the run stopped after Ctrl-C, to say so and exit.
GRACE_SECONDS = 5.0
#: Set by a Ctrl-C that reached :func:`interruptible`'s handler (not a KeyboardInterrupt
#: raised by code).
_received = threading.Event()


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


#: The signals that interrupt a run, and the handler each must have for pacsman to take it
#: over: Ctrl-C (SIGINT), and SIGTERM (``kill``, ``systemctl stop``) when nothing handles it.
_SIGNALS: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, the first Ctrl-C or SIGTERM raises KeyboardInterrupt, and a second
    one ends the process at once.  Only in the main thread, and only over the default
    handlers (a service that handles SIGTERM itself keeps its handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        for number in taken:
            signal.signal(number, _again)
        _received.set()
        raise KeyboardInterrupt

    taken = [n for n, default in _SIGNALS.items() if signal.getsignal(n) is default]
    for number in taken:
        signal.signal(number, interrupted)
    try:
        yield
    finally:
        for number in taken:
            if signal.getsignal(number) is interrupted:
                signal.signal(number, _SIGNALS[number])


def _again(signum: int, frame: FrameType | None) -> None:
    """The second Ctrl-C (or SIGTERM): end now."""
    _exit(say=True)


def end_soon() -> None:
    """After Ctrl-C, once the run stopped its work: end the process in
    :data:`GRACE_SECONDS` should it still be running then (a no-op for a KeyboardInterrupt
    that no Ctrl-C caused)."""
    if _received.is_set():
        timer = threading.Timer(GRACE_SECONDS, _exit, kwargs={"say": False})
        timer.daemon = True
        timer.start()


def _exit(*, say: bool) -> None:
    """Exit 130 now: the cursor shown again (a display may have hidden it), and the line."""
    show_cursor = "\x1b[?25h" if sys.stderr.isatty() else ""
    line = f"\npacsman: {INTERRUPTED}\n" if say else ""
    os.write(2, f"{show_cursor}{line}".encode())
    os._exit(EXIT_INTERRUPTED)


@contextmanager
def closed(resource: _C) -> Iterator[_C]:
    """``resource``, closed on leaving the block; on Ctrl-C, closed in a daemon thread, so
    the command does not wait for the peer (the process ends, and the connection with it)."""
    try:
        yield resource
    except KeyboardInterrupt:
        threading.Thread(target=resource.close, name="pacsman-close", daemon=True).start()
        raise
    except BaseException:
        resource.close()
        raise
    resource.close()
