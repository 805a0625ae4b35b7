"""What every route handler gets: the store, the fault switches, users and login sessions."""

from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass, field

from pacsman.testing.xnat_emulator._dqr_model import AnonymizationScripts
from pacsman.testing.xnat_emulator._dqr_queue import DqrService
from pacsman.testing.xnat_emulator._faults import Faults
from pacsman.testing.xnat_emulator._store import Store

__all__ = ["Context", "LoggedRequest"]

_LOG_LIMIT = 100_000
_SESSION_LIMIT = 1000  # XNAT's default concurrent-session cap per account


@dataclass(frozen=True)
class LoggedRequest:
    """One answered request as sent (path not normalised); ``status`` 0 = connection dropped."""

    method: str
    path: str
    query: str
    status: int
    user: str | None


@dataclass
class Context:
    """Shared state of one emulator. ``strict_labels`` makes odd labels a 417 (contract §12);
    ``dqr`` is the DQR plugin (queue, worker, receiver), ``anonymization`` the project scripts.
    """

    store: Store
    faults: Faults
    users: dict[str, str]
    strict_labels: bool = True
    dqr: DqrService | None = None
    anonymization: AnonymizationScripts = field(default_factory=AnonymizationScripts)
    sessions: dict[str, str] = field(default_factory=dict)
    log: deque[LoggedRequest] = field(default_factory=lambda: deque(maxlen=_LOG_LIMIT))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def login(self, user: str, password: str) -> str | None:
        """Return a new JSESSIONID for good credentials, else None."""
        if not user or self.users.get(user) != password:
            return None
        return self.open_session(user)

    def open_session(self, user: str) -> str:
        """Start a session for an authenticated user and return its JSESSIONID."""
        token = secrets.token_hex(16).upper()
        with self._lock:
            while len(self.sessions) >= _SESSION_LIMIT:  # bounded: forget the oldest
                self.sessions.pop(next(iter(self.sessions)))
            self.sessions[token] = user
        return token

    def session_user(self, token: str | None) -> str | None:
        """The user a JSESSIONID belongs to, if it is live."""
        with self._lock:
            return self.sessions.get(token or "")

    def logout(self, token: str | None) -> None:
        """Invalidate a JSESSIONID (unknown ones are ignored)."""
        with self._lock:
            self.sessions.pop(token or "", None)
