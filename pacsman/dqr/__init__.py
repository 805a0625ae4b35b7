"""``pacsman dqr``: XNAT itself pulls the studies of a query file from a PACS, through its
DICOM Query-Retrieve plugin (DQR), one study per import call.

validate the query file -> job store (the run of these rows and this config, found again)
-> pre-flight (the PACS XNAT knows, its C-ECHO, the project, its anonymization script) ->
resolve each row to one study (DQR's query, or pacsman's C-FIND for counts) -> skip what
XNAT already holds, fail labels held by another study -> import one study per call (at most
``dqr.max_in_flight`` at XNAT, ``dqr.interval`` apart, up to ``dqr.max_attempts`` each with
back-off) -> follow each request through XNAT's queue and history, with a staleness timer per
status -> verify each session on arrival (scans and file counts) -> summary.

Every step is recorded in the job store (:mod:`pacsman.jobstore.dqr`): the same command run
again, after Ctrl-C or ``kill -9``, follows the requests XNAT holds and never imports a
settled study again.  The run is wired in :mod:`._run`; the loop and its import step are
:mod:`._loop`, the follow step :mod:`._poll`, each change of a study :mod:`._studies`; what
one poll means for a study is :mod:`._follow`; XNAT's side is :mod:`._xapi` (answers read by
:mod:`._answers`, their shapes checked by :mod:`._shapes`); the summary and the info CSV are
:mod:`._summary`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsman.dqr._model import (
    ArrivalVerdict,
    DqrState,
    DqrStudy,
    ExpectedSeries,
    PacsEntry,
    QueuedRequest,
    RequestStatus,
    SessionArrival,
)
from pacsman.dqr._summary import DqrOptions, DqrSummary, resume_command

if TYPE_CHECKING:
    from pacsman.config import Config

__all__ = [
    "ArrivalVerdict",
    "DqrOptions",
    "DqrState",
    "DqrStudy",
    "DqrSummary",
    "ExpectedSeries",
    "PacsEntry",
    "QueuedRequest",
    "RequestStatus",
    "SessionArrival",
    "resume_command",
    "run_dqr",
]


def run_dqr(options: DqrOptions, config: Config) -> DqrSummary:
    """Run ``pacsman dqr``: every study of the query file into ``xnat.project``, verified.

    Raises:
        QueryFileError: the query file is invalid (nothing was sent).
        InputError: the config lacks what dqr needs (e.g. ``xnat.project``).
        FatalError: pre-flight failed (PACS unknown or unreachable, project missing, no
            enabled anonymization script), or XNAT refused an import (403: DQR is not enabled
            for the project); studies stay resumable.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the same command resumes.
    """
    # Imported here: the XNAT client and the job store, which the model's users (the job
    # store itself, ``pacsman status``) do not need.
    from pacsman.dqr._run import run

    return run(options, config)
