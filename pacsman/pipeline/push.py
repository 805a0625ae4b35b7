"""The push half of the pipeline: each fully de-identified session to the target, once.

Private to :mod:`pacsman.pipeline`.  A session (one study under its XNAT labels) is pushed only
when every selected series of it is COMPLETE and ANONYMIZED: a session with anything
quarantined or missing is held back, never pushed in part.  The target is verified after each
push (:mod:`pacsman.push`), and sessions already DONE are not pushed again.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType

import structlog

from pacsman.config import Config
from pacsman.jobstore import JobStore, Run, SeriesTask
from pacsman.models import ItemState
from pacsman.pipeline.anonymize import project_name, session_directory
from pacsman.pipeline.retrieve import ALL_SERIES
from pacsman.push import (
    PushOutcome,
    SessionUpload,
    Target,
    open_target,
    push_all,
    retry_policy,
)
from pacsman.push.targets import TargetKind

__all__ = ["PushInBackground", "push_ready_sessions"]

_log = structlog.get_logger("pacsman.pipeline")


def _ready(tasks: list[SeriesTask]) -> bool:
    return all(
        t.state is ItemState.COMPLETE and t.anonymization == ItemState.ANONYMIZED.value
        for t in tasks
    )


def _sessions(tasks: list[SeriesTask]) -> tuple[dict[tuple[str, str], int], int]:
    """Ready sessions (labels -> de-identified files) and how many studies are held back.

    A session is one study: EVERY selected series of it must be COMPLETE and ANONYMIZED.
    Series get their labels only when de-identified, so a study is grouped by its
    StudyInstanceUID, never by labels (which would make a half-done study look whole).
    """
    studies: dict[tuple[str, int], list[SeriesTask]] = defaultdict(list)
    for task in tasks:
        studies[(task.study_instance_uid, task.line)].append(task)
    ready: dict[tuple[str, str], int] = {}
    held = 0
    for members in studies.values():
        if not _ready(members):
            held += any(t.state is ItemState.COMPLETE for t in members)
            continue
        labels = (members[0].xnat_subject, members[0].xnat_session)
        ready[labels] = ready.get(labels, 0) + sum(t.anonymized_instances or 0 for t in members)
    return ready, held


def _log_held(held: int, tasks: list[SeriesTask]) -> None:
    """A warning when a quarantined series holds a study back (someone must look at it);
    otherwise the studies are only waiting for retrieval or de-identification."""
    quarantined = {
        (t.study_instance_uid, t.line)
        for t in tasks
        if t.anonymization == ItemState.QUARANTINED.value
    }
    if quarantined:
        _log.warning("sessions_held_back", sessions=held, quarantined=len(quarantined))
    else:
        _log.info("sessions_held_back", sessions=held, reason="not complete or not de-identified")


def _needs_push(pushed: tuple[str, int] | None, files: int) -> bool:
    """Not DONE yet, or DONE with fewer files than are de-identified now (XNAT merges)."""
    return pushed is None or pushed[0] != "DONE" or pushed[1] < files


def push_ready_sessions(
    store: JobStore,
    run: Run,
    config: Config,
    out_directory: Path,
    *,
    kind: TargetKind,
    target: Target | None = None,
) -> int:
    """Push every ready session not yet DONE (with all its files) on ``kind``.

    Returns how many sessions were pushed.  ``target`` reuses an open target (one XNAT login
    for many passes); without it, one is opened and closed here.

    Raises:
        FatalError: the target refuses pacsman for good (credentials, TLS); state is kept.
    """
    tasks = store.series_tasks(run, ALL_SERIES)
    ready, held = _sessions(tasks)
    if held:
        _log_held(held, tasks)
    pushed = store.push_states(run, kind)
    labels = [k for k, files in ready.items() if _needs_push(pushed.get(k), files)]
    if not labels:
        _log.info("nothing_to_push", sessions=len(ready))
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

    with nullcontext(target) if target is not None else open_target(config, kind=kind) as opened:
        push_all(
            uploads,
            opened,
            max_concurrent=config.push.max_concurrent,
            interval=config.push.interval,
            retry=retry_policy(config.push),
            on_done=record,
        )
    return len(uploads)


class PushInBackground:
    """Runs ``push`` (one pass of :func:`push_ready_sessions`) in a thread, once per wake-up.

    A push mostly waits for the target to archive and answer, so the thread lets session k
    travel while study k+1 is de-identified.  Wake-ups during a pass coalesce into one more
    pass; leaving the ``with`` block makes a last pass and waits for it.  Leaving it with an
    exception (Ctrl-C, a failed de-identification) does not wait: the thread is a daemon and
    dies with the process, as a push would in the owner's thread, and the next run checks
    the target before it sends anything again.  An error in the thread ends it and is raised
    by the next :meth:`wake` or on leaving the block.
    """

    def __init__(self, push: Callable[[], int]) -> None:
        self._push = push
        self._wake = threading.Event()
        self._closing = self._abandoned = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="pacsman-push", daemon=True)
        #: Sessions pushed by the passes so far.
        self.worked = 0

    def __enter__(self) -> PushInBackground:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing, self._abandoned = True, exc is not None
        self._wake.set()
        if exc is not None:
            return
        self._thread.join()
        if self._error is not None:
            raise self._error

    def wake(self) -> None:
        """Ask for one more pass (soon, not now); raise the error that ended the thread."""
        if self._error is not None:
            raise self._error
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            last = self._closing
            if self._abandoned:
                return
            try:
                self.worked += self._push()
            except BaseException as exc:  # raised again in the owner's thread
                self._error = exc
                return
            if last:
                return
