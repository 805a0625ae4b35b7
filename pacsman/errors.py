"""The error hierarchy: one subclass per decision the caller has to make.

* :class:`InputError` -- fix the input; raised before any network traffic (exit 2).
* :class:`TransientError` -- the peer pushed back or vanished; retry with back-off.
* :class:`ItemFailed` -- this row/series failed for good; record it and go on (exit 1).
* :class:`FatalError` -- nothing more can be done in this run (exit 3); its subclass
  :class:`JobStoreError` says what is wrong with the job store file and how to fix it.

Two exit codes have no exception: 4 (``pacsman status``: the run is still going) and
130 (interrupted by Ctrl-C; the same command resumes).

Messages name the thing, the value, the rule and the fix.  Only the CLI and the daemon
catch :class:`PacsmanError` broadly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNNING",
    "EXIT_SOME_FAILED",
    "AssociationRejected",
    "ConfigError",
    "FatalError",
    "Halted",
    "InputError",
    "ItemFailed",
    "JobStoreConnectionLost",
    "JobStoreError",
    "PacsmanError",
    "Problem",
    "QueryFileError",
    "Severity",
    "TransientError",
]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FATAL = 3
# `pacsman status`: the run is still going (its heartbeat is fresh); ask again later.
EXIT_RUNNING = 4
# Ctrl-C / SIGINT (128 + 2, the shell convention); running the same command resumes.
EXIT_INTERRUPTED = 130


class Severity(StrEnum):
    """How bad a :class:`Problem` is: errors stop the run, warnings are reported."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding in an input file, located as precisely as the file allows.

    ``line`` and ``column`` are 1-based; ``column`` is the field number in a CSV row
    (or ``None`` when the problem is about a whole line or a YAML key path).
    """

    source: str
    message: str
    line: int | None = None
    column: int | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {prefix}{self.message}"


class PacsmanError(Exception):
    """Base class. ``exit_code`` is what the CLI returns when this ends the run."""

    exit_code = EXIT_FATAL


class Halted(PacsmanError):
    """A service job was asked to stop (cancel, pause, or the service draining): work stops
    at the next unit, leaving every series in a state the next start resumes.  ``deadline``
    (a :func:`time.monotonic` time) is how long a drain lets work in flight go on."""

    def __init__(self, message: str, *, deadline: float | None = None) -> None:
        super().__init__(message)
        self.deadline = deadline


class LeaseLost(PacsmanError):
    """This head node no longer holds the lease on studies it was working on: another node
    took them over after the lease expired (this node was stopped, cut off or too slow to
    renew).  The work on them stops at once and nothing more is recorded or pushed for them;
    the node that holds them now finishes them."""


class InputError(PacsmanError):
    """The user's input (config, query file, arguments) must be fixed first."""

    exit_code = EXIT_BAD_INPUT


class _ProblemsError(InputError):
    """An :class:`InputError` carrying every :class:`Problem` found, all at once."""

    kind = "input"

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: Sequence[Problem] = tuple(problems)
        errors = [p for p in self.problems if p.severity is Severity.ERROR]
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{len(errors)} problem(s) in the {self.kind}:\n{lines}")


class ConfigError(_ProblemsError):
    """The YAML config is invalid; every problem names the key path and the fix."""

    kind = "config"


class QueryFileError(_ProblemsError):
    """The query CSV is invalid; every problem is located as ``file:line:column``."""

    kind = "query file"


class TransientError(PacsmanError):
    """The peer refused or failed in a way that may succeed later: retry with back-off."""


class AssociationRejected(TransientError):
    """The peer rejected or never answered our association request."""


class ItemFailed(PacsmanError):
    """One row, study or series failed for good; the run records it and goes on."""

    exit_code = EXIT_SOME_FAILED


class FatalError(PacsmanError):
    """The run cannot go on (e.g. the PACS rejects our AE title permanently)."""

    exit_code = EXIT_FATAL


class JobStoreError(FatalError):
    """The job store cannot be used (not a database, read-only, a folder, disk full...).

    The message names the file, what is wrong and the fix; the run stops with exit 3 and
    what was recorded before stays recorded.
    """


class JobStoreConnectionLost(JobStoreError):
    """The PostgreSQL job store's connection was lost in the middle of a transaction, or
    the server cannot be reached again yet (a restart, a fail-over, a network cut, a
    session the server ended).

    Nothing of the lost transaction was recorded.  The one-shot command stops with exit 3,
    like any job-store error; the service puts the job back in the queue instead, since
    the same command resumes it from what the job store holds.
    """
