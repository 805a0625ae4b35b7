"""The push half of the pipeline: each fully de-identified session to the target, once.

Private to :mod:`pacsman.pipeline`.  A session (one study under its XNAT labels) is pushed only
when every selected series of it is COMPLETE and ANONYMIZED: a session with anything
quarantined or missing is held back, never pushed in part.  The target is verified after each
push (:mod:`pacsman.push`), and sessions already DONE are not pushed again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import structlog

from pacsman._pipeline_anonymize import project_name, session_directory
from pacsman._pipeline_retrieve import ALL_SERIES
from pacsman.config import Config
from pacsman.jobstore import JobStore, Run, SeriesTask
from pacsman.models import ItemState
from pacsman.push import PushOutcome, SessionUpload, open_target, push_all, retry_policy
from pacsman.push.targets import TargetKind

__all__ = ["push_ready_sessions"]

_log = structlog.get_logger("pacsman.pipeline")


def _ready(tasks: list[SeriesTask]) -> bool:
    return all(
        t.state is ItemState.COMPLETE and t.anonymization == ItemState.ANONYMIZED.value
        for t in tasks
    )


def push_ready_sessions(
    store: JobStore, run: Run, config: Config, out_directory: Path, *, kind: TargetKind
) -> int:
    """Push every ready session not yet DONE on ``kind``; return how many were pushed.

    Raises:
        FatalError: the target refuses pacsman for good (credentials, TLS); state is kept.
    """
    sessions: dict[tuple[str, str], list[SeriesTask]] = defaultdict(list)
    for task in store.series_tasks(run, ALL_SERIES):
        if task.xnat_session:
            sessions[(task.xnat_subject, task.xnat_session)].append(task)
    done = store.push_states(run, kind)
    labels = [k for k, tasks in sessions.items() if _ready(tasks) and done.get(k) != "DONE"]
    held = [k for k, tasks in sessions.items() if not _ready(tasks)]
    if held:
        _log.warning("sessions_held_back", sessions=len(held), reason="not complete or quarantined")
    if not labels:
        _log.info("nothing_to_push", sessions=len(sessions))
        return 0
    project = project_name(config)
    uploads = [
        SessionUpload.from_directory(
            session_directory(out_directory, subject, session),
            project=project,
            subject=subject,
            session=session,
        )
        for subject, session in labels
    ]

    def record(outcome: PushOutcome) -> None:
        upload = outcome.upload
        store.record_push(
            run,
            kind,
            (upload.subject, upload.session),
            outcome.state,
            uri=outcome.uri or "",
            files_on_target=outcome.files_on_target,
            detail=outcome.detail,
        )

    with open_target(config, kind=kind) as target:
        push_all(
            uploads,
            target,
            max_concurrent=config.push.max_concurrent,
            interval=config.push.interval,
            retry=retry_policy(config.push),
            on_done=record,
        )
    return len(uploads)
