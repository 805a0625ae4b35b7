"""Telling systemd how the service is doing: the ``sd_notify`` protocol, written out here.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket, a
file path or an abstract name written ``@name``.  Each message is **one datagram** of
newline-separated ``KEY=value`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``, ``RELOADING=1``, ``EXTEND_TIMEOUT_USEC=...``).  That is the whole protocol,
so it is written here instead of taken from a library: ``python-systemd`` (``systemd.daemon``)
builds against libsystemd's headers, which a ``pip install`` on a head node may not have,
and the pure-Python packages add a dependency for twenty lines.

:class:`Notifier` is made once, at start-up, from the environment (:meth:`Notifier.from_environ`):

- with no ``NOTIFY_SOCKET`` (the foreground, tests, the one-shot command) every call is a no-op;
- it never raises into the service: a failed send is logged once (``sd_notify_failed``) and
  later failures only at debug level, as systemd's own ``sd_notify()`` ignores them;
- it **removes** ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``os.environ``
  (as ``sd_notify(unset_environment=1)`` does), so no child process inherits them: the
  de-identify/push process must not speak for the service.  The unit's ``NotifyAccess=main``
  makes systemd ignore any other process anyway; this keeps children from trying.

The watchdog: with ``WatchdogSec=`` systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, which
must be this process).  :meth:`Notifier.watchdog_interval` is half that period, the interval
systemd's documentation recommends for ``WATCHDOG=1``.

Credentials: :func:`credential_path` finds a file that ``LoadCredential=`` passed in
``$CREDENTIALS_DIRECTORY``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path

import structlog

__all__ = ["STATUS_MAX", "Notifier", "credential_path"]

_log = structlog.get_logger("pacsman.service.systemd")

#: The environment systemd sets for a ``Type=notify`` service with a watchdog.
_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: The longest ``STATUS=`` text sent (``systemctl status`` shows one line).
STATUS_MAX = 200
#: A datagram to systemd never waits longer than this (its queue is full only if it hangs).
_SEND_TIMEOUT = 2.0


def credential_path(name: str, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """The file ``LoadCredential=<name>:...`` passed to the service, if there is one."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory or "/" in name:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def _socket_address(value: str) -> str | None:
    """``@name`` → the abstract address ``\\0name``; an absolute path as is; else None."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_usec(env: MutableMapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for this process (``WATCHDOG_PID`` unset or ours)."""
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "").strip())
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    """``text`` as one line of at most :data:`STATUS_MAX` characters (control characters out)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "..."


class Notifier:
    """Messages to systemd's ``$NOTIFY_SOCKET`` (see the module docstring).

    Thread-safe, and safe in a signal handler (the lock is re-entrant): the scheduler loop,
    the drain and the HTTP server may all send.
    """

    def __init__(
        self, notify_socket: str | None = None, *, watchdog_usec: int | None = None
    ) -> None:
        self._address = _socket_address(notify_socket) if notify_socket else None
        self._watchdog_usec = watchdog_usec
        self._lock = threading.RLock()
        self._socket: socket.socket | None = None
        self._failed = False
        if notify_socket and self._address is None:
            _log.warning(
                "sd_notify_unsupported",
                notify_socket=notify_socket,
                reason="NOTIFY_SOCKET is neither an absolute path nor an @abstract name; "
                "systemd notifications are off",
            )

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier systemd's environment asks for (a no-op one outside systemd).

        With ``unset`` (the default) the variables are removed from ``environ`` (by default
        ``os.environ``), so that child processes do not inherit them.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))
        if unset:
            for name in _NOTIFY_ENV:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (systemd started us with ``Type=notify``)."""
        return self._address is not None

    # -- the messages ---------------------------------------------------------------------

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: start-up is complete (also the end of a reload)."""
        self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> None:
        """``STATUS=``: the one line ``systemctl status`` shows (newlines removed, capped)."""
        self.notify(*self._status(text))

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1``: the service is draining and will exit."""
        self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> None:
        """``RELOADING=1`` with ``MONOTONIC_USEC``; call :meth:`ready` when the reload is done."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={now}", *self._status(status))

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the scheduler loop is alive (every :meth:`watchdog_interval` s)."""
        if self._watchdog_usec is not None:
            self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """``EXTEND_TIMEOUT_USEC``: the current start, reload or stop needs ``seconds`` more
        from now (send it again before they run out; for a long drain or start-up)."""
        self.notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between two :meth:`watchdog` calls: half of ``WatchdogSec``; None if off."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2_000_000

    # -- sending --------------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; return whether it was sent.

        Never raises: the first failure is logged as ``sd_notify_failed`` (with the socket
        and the reason), later ones at debug level.
        """
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.settimeout(_SEND_TIMEOUT)
                self._socket.sendto(message, self._address)
            except OSError as exc:
                self._report(exc)
                return False
        return True

    def close(self) -> None:
        """Close the socket (a later message opens a new one)."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _report(self, exc: OSError) -> None:
        level = _log.debug if self._failed else _log.warning
        self._failed = True
        shown = "@" + self._address[1:] if self._address and self._address[0] == "\0" else ""
        level(
            "sd_notify_failed",
            notify_socket=shown or self._address,
            reason=exc.strerror or str(exc),
            hint="systemd cannot hear the service: its unit's WatchdogSec= may stop it",
        )

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={_one_line(text)}",)
