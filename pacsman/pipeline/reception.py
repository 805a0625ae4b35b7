"""The receiving side of retrieval: one Storage SCP's writer, shared by every job.

The one-shot command has one run, so one job; ``pacsman serve`` has one Storage SCP on
``local.port`` for every job.  The writer routes each instance by its SeriesInstanceUID to
the folder the job store records for it, and :class:`Reception` tells the job that asked
for the series (its counts, the metrics) as each instance is stored.

Two jobs that select the same series stay separate: each has its own folders, verification,
de-identification and push, and cancelling one must not touch the other.  Their retrievals
of that series take turns (:meth:`Reception.holding`): while one job's C-MOVE of the series
runs, the other's waits, so no instance is routed to the wrong job.  Sharing one retrieval
would couple the jobs' lifecycles for a case that is rare (the same series in two cohorts
at once) and cheap to pay for (one more C-MOVE of that series).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from pacsman.config import Config
from pacsman.dicom.scp import InstanceWriter, StoredInstance
from pacsman.throttle import check_halt, current_ticket

__all__ = ["Reception"]

_log = structlog.get_logger("pacsman.pipeline")
#: Seconds between two looks while retrieves are blocked (the disk is low).
_BLOCKED_POLL = 5.0

#: Called for every instance stored: the PACS node it came for, and the instance.
Observer = Callable[[str, StoredInstance], None]


class Reception:
    """The writer behind the Storage SCP (or the C-GET requestor), shared by every job."""

    def __init__(
        self, config: Config, unrouted_directory: Path, *, observer: Observer | None = None
    ) -> None:
        local = config.local
        self.writer = InstanceWriter(
            unrouted_directory=unrouted_directory,
            unsolicited=local.unsolicited,
            unsolicited_quota=local.unsolicited_quota_mb << 20,
            on_stored=self._stored,
        )
        self._observer = observer
        #: Says why no retrieve may start now (e.g. the disk is low), or None; the service's.
        self.blocked: Callable[[], str | None] = lambda: None
        self._cond = threading.Condition()
        self._listeners: dict[str, tuple[str, Callable[[StoredInstance], None]]] = {}

    @contextmanager
    def holding(
        self,
        series_instance_uids: Collection[str],
        pacs: str,
        on_stored: Callable[[StoredInstance], None],
    ) -> Iterator[None]:
        """Within the block, instances of these series are the calling job's.

        Waits while another job retrieves one of them.

        Raises:
            Halted: the calling job was asked to stop while it waited.
        """
        wanted = set(series_instance_uids)
        self._wait_unblocked()
        with self._cond:
            while wanted & self._listeners.keys():
                check_halt()
                self._cond.wait(0.5 if current_ticket().halt is not None else None)
            for uid in wanted:
                self._listeners[uid] = (pacs, on_stored)
        try:
            yield
        finally:
            with self._cond:
                for uid in wanted:
                    self._listeners.pop(uid, None)
                self._cond.notify_all()

    def _wait_unblocked(self) -> None:
        """Wait while retrieves may not start (:attr:`blocked`); halt-aware."""
        reason = self.blocked()
        if reason is None:
            return
        _log.warning("retrieve_waiting", reason=reason)
        while reason is not None:
            check_halt()
            with self._cond:
                self._cond.wait(_BLOCKED_POLL)
            reason = self.blocked()
        _log.info("retrieve_resumed")

    def _stored(self, instance: StoredInstance) -> None:
        found = self._listeners.get(instance.series_instance_uid)
        if found is None:
            return
        pacs, on_stored = found
        on_stored(instance)
        if self._observer is not None:
            self._observer(pacs, instance)
