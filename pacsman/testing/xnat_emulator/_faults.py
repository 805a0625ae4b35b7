"""Fault switches: how the emulator misbehaves on purpose.

Every switch is bounded and validated when set, from Python (``emulator.faults.latency = 0.2``),
through :meth:`Faults.update` (the admin endpoint ``PUT /data/_emulator/faults`` uses it), or
from the standalone command's flags. Counted switches apply to the next N imports and then
switch themselves off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

__all__ = ["DqrFault", "DqrFaultKind", "Faults", "ImportFault", "ImportFaultKind"]

_MAX_COUNT = 100_000
_MAX_SECONDS = 600.0


class ImportFaultKind(StrEnum):
    """What happens to one import request."""

    NONE = "none"
    STATUS = "status"  # answer a status, do nothing
    ACCEPT_THEN_FAIL = "accept_then_fail"  # apply the import, then answer a 5xx
    RESET = "reset"  # apply the import, then drop the connection without an answer
    ZERO_FILES = "zero_files"  # answer 200 with the URI, but store no files


@dataclass(frozen=True)
class ImportFault:
    """The fault chosen for one import: its kind and, for STATUS/ACCEPT_THEN_FAIL, the status."""

    kind: ImportFaultKind
    status: int = 0


class DqrFaultKind(StrEnum):
    """What happens to one DQR request when it leaves the queue."""

    NONE = "none"
    STUCK_PROCESSING = "stuck_processing"  # stays PROCESSING for ever
    FAILED = "failed"  # PROCESSING -> FAILED, nothing moved
    STUCK_ISSUED = "stuck_issued"  # ISSUED without a C-MOVE, never RECEIVED
    PARTIAL = "partial"  # the receiver drops ``drop`` instances of the study
    ZERO_FILES = "zero_files"  # the session is archived with its scans but 0 files


@dataclass(frozen=True)
class DqrFault:
    """The fault chosen for one DQR request; ``drop`` counts instances dropped (PARTIAL)."""

    kind: DqrFaultKind
    drop: int = 0


def _check_count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise ValueError(f"fault {name!r}: {value!r} is not a count; use an int 0..{_MAX_COUNT}")


def _check_status(name: str, value: Any, *, optional: bool) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 400 <= value <= 599:
        raise ValueError(f"fault {name!r}: {value!r} is not an HTTP error status; use 400..599")


def _check_seconds(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"fault {name!r}: {value!r} is not a number of seconds")
    if not 0 <= value <= _MAX_SECONDS:
        raise ValueError(f"fault {name!r}: {value!r} is out of range; use 0..{_MAX_SECONDS:g}")


def _check_route_latency(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"fault {name!r}: {value!r} is not a mapping of path prefix to seconds")
    for prefix, seconds in value.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"fault {name!r}: key {prefix!r} is not a path prefix like '/data'")
        _check_seconds(f"{name}[{prefix}]", seconds)


def _check_route_status(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"fault {name!r}: {value!r} is not a mapping of path prefix to status")
    for prefix, status in value.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"fault {name!r}: key {prefix!r} is not a path prefix like '/data'")
        _check_status(f"{name}[{prefix}]", status, optional=False)


def _check_optional_status(name: str, value: Any) -> None:
    _check_status(name, value, optional=True)


def _check_required_status(name: str, value: Any) -> None:
    _check_status(name, value, optional=False)


def _check_budget(name: str, value: Any) -> None:
    if value is not None:
        _check_count(name, value)


def _check_projects(name: str, value: Any) -> None:
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"fault {name!r}: {value!r} is not a list of project IDs")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "status_on_import": _check_optional_status,
    "accept_then_fail_status": _check_required_status,
    "latency": _check_seconds,
    "prearchive_receiving_seconds": _check_seconds,
    "route_latency": _check_route_latency,
    "route_status": _check_route_status,
    "request_budget": _check_budget,
    "dqr_queue_stops_after": _check_budget,
    "dqr_import_status": _check_optional_status,
    "dqr_disabled_projects": _check_projects,
}


@dataclass
class Faults:
    """The emulator's fault switches (all off by default).

    * ``status_on_import`` / ``status_on_import_count``: answer the next N imports with this
      status (e.g. 413, 500, 503) without applying them; both reset once used up.
    * ``accept_then_fail`` (count) / ``accept_then_fail_status``: apply the next N imports,
      then answer 502/504 -- "the server finished but the client timed out".
    * ``reset_after_import`` (count): apply the next N imports, then drop the connection.
    * ``zero_file_success`` (count): answer 200 with the session URI but store 0 files.
    * ``latency`` seconds on every request; ``route_latency`` maps a path prefix to extra
      seconds for matching requests.
    * ``request_budget``: each client (user, else address) may make this many more requests;
      later ones get 503. Setting it again starts a new budget.
    * ``prearchive_receiving_polls`` / ``prearchive_receiving_seconds``: new prearchive
      entries stay RECEIVING until listed this many times and this many seconds have passed.
    * ``upload_conflict_409``: a file PUT onto an existing file without ``overwrite=true``
      answers 409 (older XNATs) instead of 200 + ``{"duplicates": [...]}``.
    * DQR (counted switches apply to the next N requests leaving the queue, one fault per
      request, in this order): ``dqr_stuck_processing`` and ``dqr_stuck_issued`` (the
      request never moves again), ``dqr_failed`` (FAILED, nothing moved), ``dqr_partial``
      with ``dqr_partial_drop`` (the receiver drops that many instances of the study),
      ``dqr_zero_files`` (the session is archived with its scans but 0 files).
      ``dqr_queue_stops_after``: N more requests leave the queue, then it stops (0 = stopped
      now; None = moving). ``dqr_import_status`` / ``dqr_import_status_count``: answer the
      next N imports with this status, queueing nothing. ``dqr_disabled_projects``: imports
      for these projects answer 403.
    * ``route_status`` maps a path prefix to an error status (400..599) answered, with
      XNAT's status page and nothing done, to every matching request (e.g.
      ``{"/data/auth": 403}`` for an account that may not use the REST API).
    """

    status_on_import: int | None = None
    status_on_import_count: int = 1
    accept_then_fail: int = 0
    accept_then_fail_status: int = 504
    reset_after_import: int = 0
    zero_file_success: int = 0
    latency: float = 0.0
    route_latency: dict[str, float] = field(default_factory=dict)
    route_status: dict[str, int] = field(default_factory=dict)
    request_budget: int | None = None
    prearchive_receiving_polls: int = 0
    prearchive_receiving_seconds: float = 0.0
    upload_conflict_409: bool = False
    dqr_stuck_processing: int = 0
    dqr_stuck_issued: int = 0
    dqr_failed: int = 0
    dqr_partial: int = 0
    dqr_partial_drop: int = 1
    dqr_zero_files: int = 0
    dqr_queue_stops_after: int | None = None
    dqr_import_status: int | None = None
    dqr_import_status_count: int = 1
    dqr_disabled_projects: tuple[str, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _spent: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            _validate(name, value)
        if name == "dqr_disabled_projects":
            value = tuple(value)
        super().__setattr__(name, value)
        if name == "request_budget" and "_spent" in self.__dict__:
            with self._lock:
                self._spent.clear()

    def update(self, changes: dict[str, Any]) -> None:
        """Set several switches at once, all validated first.

        Raises:
            ValueError: an unknown switch or a bad value, naming it.
        """
        for name, value in changes.items():
            _validate(name, value)
        for name, value in changes.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """The current switches, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def reset(self) -> None:
        """Switch every fault off."""
        self.update(Faults().as_dict())

    def take_import_fault(self) -> ImportFault:
        """Consume and return the fault for the next import (one at a time, in this order)."""
        with self._lock:
            if self.status_on_import is not None and self.status_on_import_count > 0:
                status = self.status_on_import
                self.status_on_import_count -= 1
                if self.status_on_import_count == 0:  # used up: back to the defaults
                    self.status_on_import, self.status_on_import_count = None, 1
                return ImportFault(ImportFaultKind.STATUS, status)
            for name, kind in _COUNTED:
                if getattr(self, name) > 0:
                    setattr(self, name, getattr(self, name) - 1)
                    return ImportFault(kind, self.accept_then_fail_status)
            return ImportFault(ImportFaultKind.NONE)

    def take_dqr_fault(self) -> DqrFault:
        """Consume and return the fault for the next DQR request leaving the queue."""
        with self._lock:
            for name, kind in _DQR_COUNTED:
                if getattr(self, name) > 0:
                    setattr(self, name, getattr(self, name) - 1)
                    drop = self.dqr_partial_drop if kind is DqrFaultKind.PARTIAL else 0
                    return DqrFault(kind, drop)
            return DqrFault(DqrFaultKind.NONE)

    def take_dqr_import_status(self) -> int | None:
        """Consume and return the status forced on the next DQR import, if any."""
        with self._lock:
            status = self.dqr_import_status
            if status is None or self.dqr_import_status_count <= 0:
                return None
            self.dqr_import_status_count -= 1
            if self.dqr_import_status_count == 0:  # used up: back to the defaults
                self.dqr_import_status, self.dqr_import_status_count = None, 1
            return status

    def take_dqr_queue_slot(self) -> bool:
        """Let one request leave the DQR queue; False while the queue is stopped."""
        with self._lock:
            left = self.dqr_queue_stops_after
            if left is None:
                return True
            if left == 0:
                return False
            self.dqr_queue_stops_after = left - 1
            return True

    def delay_for(self, path: str) -> float:
        """Seconds to wait before answering a request for ``path``."""
        extra = sum(s for prefix, s in self.route_latency.items() if path.startswith(prefix))
        return float(self.latency + extra)

    def status_for(self, path: str) -> int | None:
        """The error status forced on requests for ``path`` (the longest matching prefix)."""
        matching = [prefix for prefix in self.route_status if path.startswith(prefix)]
        return self.route_status[max(matching, key=len)] if matching else None

    def spend(self, client: str) -> bool:
        """Count one request for ``client``; False once its budget is exhausted."""
        with self._lock:
            if self.request_budget is None:
                return True
            used = self._spent.get(client, 0) + 1
            self._spent[client] = used
            return used <= self.request_budget

    @staticmethod
    def sleep(seconds: float) -> None:
        """Wait server-side (the latency fault); a no-op for zero."""
        if seconds > 0:
            time.sleep(seconds)


_COUNTED = (
    ("accept_then_fail", ImportFaultKind.ACCEPT_THEN_FAIL),
    ("reset_after_import", ImportFaultKind.RESET),
    ("zero_file_success", ImportFaultKind.ZERO_FILES),
)
_DQR_COUNTED = (
    ("dqr_stuck_processing", DqrFaultKind.STUCK_PROCESSING),
    ("dqr_failed", DqrFaultKind.FAILED),
    ("dqr_stuck_issued", DqrFaultKind.STUCK_ISSUED),
    ("dqr_partial", DqrFaultKind.PARTIAL),
    ("dqr_zero_files", DqrFaultKind.ZERO_FILES),
)
_COUNTS = {
    "dqr_stuck_processing",
    "dqr_stuck_issued",
    "dqr_failed",
    "dqr_partial",
    "dqr_partial_drop",
    "dqr_zero_files",
    "dqr_import_status_count",
    "status_on_import_count",
    "accept_then_fail",
    "reset_after_import",
    "zero_file_success",
    "prearchive_receiving_polls",
}


def _validate(name: str, value: Any) -> None:
    if name in _COUNTS:
        _check_count(name, value)
    elif name == "upload_conflict_409":
        if not isinstance(value, bool):
            raise ValueError(f"fault {name!r}: {value!r} is not a bool")
    elif name in _CHECKS:
        _CHECKS[name](name, value)
    else:
        known = sorted(_COUNTS | set(_CHECKS) | {"upload_conflict_409"})
        raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(known)}")
