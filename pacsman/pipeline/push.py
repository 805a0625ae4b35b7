"""The push step: each fully de-identified experiment to the target, once.

Private to :mod:`pacsman.pipeline`.  An experiment (one study under its XNAT subject and
session labels) is pushed only when every selected series of it is COMPLETE and ANONYMIZED:
one with anything quarantined or missing is held back, never pushed in part.  Its files are
in the de-identified directories the job store records.  The target is verified after each
push (:mod:`pacsman.push`), and experiments already DONE are not pushed again.  Each pass
returns what it found (:class:`PushPass`); the caller says once, at the end, what was held
back or that there was nothing to push.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from pacsman.config import Config
from pacsman.errors import LeaseLost
from pacsman.jobstore import JobStore, PushRecord, PushSeries, Run, recorded_directory
from pacsman.models import ItemState
from pacsman.pipeline.progress import Counts, Stage
from pacsman.push import (
    PushOutcome,
    SessionUpload,
    Target,
    open_target,
    push_all,
    retry_policy,
)
from pacsman.push.targets import TargetKind

__all__ = ["PushPass", "log_push_passes", "push_ready_sessions"]

_log = structlog.get_logger("pacsman.pipeline")


@dataclass(frozen=True)
class PushPass:
    """What one pass found: experiments pushed now, ready ones, and studies held back
    (``quarantined``: of those, held by a quarantined series)."""

    pushed: int = 0
    ready: int = 0
    held: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class _Ready:
    """An experiment ready to push: its directory and its de-identified files."""

    directory: Path
    files: int


def _ready(series: list[PushSeries]) -> bool:
    return all(
        s.state is ItemState.COMPLETE and s.anonymization is ItemState.ANONYMIZED for s in series
    )


def _sessions(series: list[PushSeries]) -> tuple[dict[tuple[str, str], _Ready], int]:
    """Ready experiments ((subject, session label) -> directory and files) and how many
    studies are held back.

    An experiment is one study: EVERY selected series of it must be COMPLETE and ANONYMIZED.
    Series get their labels only when de-identified, so a study is grouped by its
    StudyInstanceUID, never by labels (which would make a half-done study look whole).

    Raises:
        FatalError: a ready series' de-identified directory is not in the job store.
    """
    studies: dict[tuple[str, int], list[PushSeries]] = defaultdict(list)
    for one in series:
        studies[(one.study_instance_uid, one.line)].append(one)
    ready: dict[tuple[str, str], _Ready] = {}
    held = 0
    for members in studies.values():
        if not _ready(members):
            held += any(s.state is ItemState.COMPLETE for s in members)
            continue
        first = members[0]
        experiment = (first.xnat_subject, first.xnat_session)
        files = sum(s.anonymized_instances or 0 for s in members)
        before = ready.get(experiment)
        if before is not None:
            ready[experiment] = _Ready(before.directory, before.files + files)
        else:
            directory = recorded_directory(first.anonymized_directory, first.series_instance_uid)
            ready[experiment] = _Ready(directory.parent, files)
    return ready, held


def _quarantined(series: list[PushSeries]) -> int:
    """Studies with a quarantined series (someone must look at them)."""
    held = {
        (s.study_instance_uid, s.line) for s in series if s.anonymization is ItemState.QUARANTINED
    }
    return len(held)


def log_push_passes(pushed: int, last: PushPass) -> None:
    """Once, after the last pass: studies held back (a warning when a quarantined series
    holds them), and ``nothing_to_push`` when no pass pushed anything."""
    if last.quarantined:
        _log.warning("sessions_held_back", sessions=last.held, quarantined=last.quarantined)
    elif last.held:
        _log.info(
            "sessions_held_back", sessions=last.held, reason="not complete or not de-identified"
        )
    if not pushed:
        _log.info("nothing_to_push", sessions=last.ready)


def _needs_push(pushed: PushRecord | None, files: int) -> bool:
    """Not DONE yet, or DONE with fewer files than are de-identified now (XNAT merges)."""
    return pushed is None or pushed.state is not ItemState.DONE or pushed.files_on_target < files


def push_ready_sessions(
    store: JobStore,
    run: Run,
    config: Config,
    *,
    project: str,
    kind: TargetKind,
    target: Target | None = None,
    counts: Counts | None = None,
    handled: set[tuple[str, str]] | None = None,
) -> PushPass:
    """Push every ready experiment not yet DONE (with all its files) on ``kind``.

    Returns what the pass found and pushed.  ``target`` reuses an open target (one XNAT
    login for many passes); without it, one is opened and closed here.  ``counts`` gets each
    experiment's outcome, with the files verified on the target and their bytes.
    ``handled`` holds the (subject, session) this process pushed already: one that failed is
    not tried again before the next run; the experiments pushed now are added.

    Raises:
        FatalError: the target refuses pacsman for good (credentials, TLS); state is kept.
    """
    series = store.series_for_push(run)
    ready, held = _sessions(series)
    found = PushPass(ready=len(ready), held=held, quarantined=_quarantined(series) if held else 0)
    pushed = store.push_states(run, kind)
    todo = {k: r for k, r in ready.items() if _needs_push(pushed.get(k), r.files)}
    if handled is not None:
        todo = {k: r for k, r in todo.items() if k not in handled}
        handled.update(todo)
    if not todo:
        return found
    if run.lease is not None and not store.holds(run.lease):
        raise LeaseLost(
            f"head node {run.lease.node}: lease {run.lease.generation} expired before its "
            "sessions were pushed; the node that takes its studies over pushes them"
        )
    if counts is not None:
        counts.start(Stage.PUSH)
    uploads = [
        SessionUpload.from_directory(
            r.directory, project=project, subject=subject, session=session_label
        )
        for (subject, session_label), r in todo.items()
    ]

    def record(outcome: PushOutcome) -> None:
        upload = outcome.upload
        store.record_push(
            run,
            kind,
            (upload.subject, upload.session),
            ItemState(outcome.state),
            uri=outcome.uri or "",
            files_on_target=outcome.files_on_target,
            detail=outcome.detail,
        )
        if counts is not None:
            _count(counts, outcome)

    with nullcontext(target) if target is not None else open_target(config, kind=kind) as opened:
        push_all(
            uploads,
            opened,
            max_concurrent=config.push.max_concurrent,
            interval=config.push.interval,
            retry=retry_policy(config.push),
            on_done=record,
        )
    return PushPass(len(uploads), found.ready, found.held, found.quarantined)


def _count(counts: Counts, outcome: PushOutcome) -> None:
    """One experiment pushed (its files on the target, and the bytes sent) or failed."""
    if outcome.state != "DONE":
        counts.add(Stage.PUSH, failed=1)
        return
    size = 0
    for path in outcome.upload.directory.rglob("*.dcm"):
        with suppress(OSError):
            size += path.stat().st_size
    counts.add(Stage.PUSH, units=1, instances=outcome.files_on_target, size=size)
