"""What ``/readyz`` reports beyond the scheduler's own state (private to the service): each
PACS node's last C-ECHO, and the free space where jobs write.

Whether a PACS answers is reported, never a start-up condition: a PACS that is down at boot
must not fail the unit.  A node with an association of ours open is answering, and is not
sent a C-ECHO.
"""

from __future__ import annotations

import shutil

import structlog

from pacsman.config import Config
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.errors import PacsmanError
from pacsman.throttle import RetryPolicy, SharedCourtesy, Ticket, working_for

__all__ = ["Health"]

_log = structlog.get_logger("pacsman.service")


class Health:
    """The last C-ECHO of each PACS node and the disk check; read by any thread."""

    def __init__(self, shared: SharedCourtesy) -> None:
        self._shared = shared
        #: PACS node -> (answered, why not).
        self.echo: dict[str, tuple[bool, str]] = {}
        #: Why no retrieve may start (the disk is low), or None.
        self.disk_problem: str | None = None

    def checks(self) -> tuple[dict[str, bool], list[str]]:
        """``/readyz``'s checks of PACS nodes and disk, and a sentence for each failing one."""
        checks: dict[str, bool] = {}
        problems: list[str] = []
        for name, (answered, why) in sorted(self.echo.items()):
            checks[f"pacs.{name}"] = answered
            if not answered:
                problems.append(f"PACS {name!r} did not answer its last C-ECHO: {why}")
        checks["disk"] = self.disk_problem is None
        if self.disk_problem is not None:
            problems.append(self.disk_problem)
        return checks, problems

    def echo_all(self, config: Config) -> None:
        """One C-ECHO to each idle PACS node, through the service's shared courtesy (it counts
        against ``max_associations``, ahead of the jobs)."""
        ticket = Ticket(job="service", priority=100, shared=self._shared)
        local = config.local
        with working_for(ticket):
            for name, node in list(config.pacs.items()):
                self._echo_one(name, DicomPeer(node, local.ae_title, local.port))

    def _echo_one(self, name: str, peer: DicomPeer) -> None:
        if self._shared.in_use().get(name, 0) > 0:
            self.echo[name] = (True, "in use")  # answering our retrieves right now
            return
        try:
            once = RetryPolicy(max_attempts=1)
            once.call(lambda: client.echo(peer), operation="c_echo", pacs=name)
            self.echo[name] = (True, "")
        except PacsmanError as exc:
            self.echo[name] = (False, str(exc))
            _log.warning("pacs_not_answering", pacs=name, problem=str(exc))

    def check_disk(self, config: Config) -> None:
        """Whether ``store_root`` has ``serve.min_free_gb`` free; logs each change."""
        root, minimum = config.store_root, config.serve.min_free_gb
        try:
            free = shutil.disk_usage(root).free
        except OSError as exc:
            self.disk_problem = f"store_root {root}: {exc.strerror}"
            return
        was = self.disk_problem
        if free < minimum * 1e9:
            self.disk_problem = (
                f"store_root {root} has {free / 1e9:.1f} GB free, below serve.min_free_gb "
                f"{minimum:g}: no new retrieve starts until space is freed"
            )
            if was is None:
                _log.warning("disk_low", free_gb=round(free / 1e9, 1), min_free_gb=minimum)
        else:
            self.disk_problem = None
            if was is not None:
                _log.info("disk_ok", free_gb=round(free / 1e9, 1))
