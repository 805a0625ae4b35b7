"""What the service's parts (HTTP, metrics, notifications) see of the running service.

The job store is the ledger: jobs, runs, rows and series are read from it.  What only the
running process knows, readiness (SCP bound, the PACS nodes' last C-ECHO, disk) and
associations in use, comes through :class:`ServiceView`, which the scheduler implements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pacsman.config import Config
from pacsman.jobstore import JobStore

__all__ = ["Readiness", "ServiceView"]


@dataclass(frozen=True)
class Readiness:
    """``/readyz``: each check by name (True = fine), and a sentence for each that is not."""

    checks: Mapping[str, bool]
    problems: tuple[str, ...] = ()
    #: Whether the service claims new retrieves now (False while draining or low on disk).
    claiming: bool = True
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(self.checks.values())


class ServiceView(Protocol):
    """The running service, as its HTTP server and metrics read it (thread-safe)."""

    @property
    def store(self) -> JobStore: ...

    @property
    def config(self) -> Config: ...

    @property
    def node_name(self) -> str: ...

    def readiness(self) -> Readiness:
        """The checks behind ``/readyz`` (cheap: from the last C-ECHO and disk look)."""
        ...

    def associations_in_use(self) -> Mapping[str, int]:
        """Associations open now, per PACS node name."""
        ...

    def wake(self) -> None:
        """A job was queued or a request made: look at the queue now, not at the next tick."""
        ...

    def status_line(self) -> str:
        """The one line systemd's STATUS= shows, e.g. ``412/1000 series, PACS main 2/2``."""
        ...
