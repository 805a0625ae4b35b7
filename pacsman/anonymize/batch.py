"""De-identifying many files: in this process, or in ``workers`` worker processes.

Each worker builds its own :class:`~pacsman.anonymize.Deidentifier` (without a mapping
table) from an :class:`EngineSpec`; only this process records subjects and sessions in the
mapping table, once per original study, so the table stays consistent.  A file whose labels
clash with the table is moved to the quarantine folder.  One bad file never stops a batch:
it is counted, with a reason that names no patient data and no source path.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path

import structlog

from pacsman.anonymize.engine import (
    AnonymizeResult,
    Deidentifier,
    Encapsulated,
    InstanceFailed,
    NotAnInstance,
    hold,
)
from pacsman.anonymize.mapping import MappingTable
from pacsman.anonymize.profile import Profile

__all__ = ["BatchSummary", "EngineSpec", "FileOutcome", "Outcome", "Task", "deidentify_files"]

_log = structlog.get_logger(__name__)
_ENGINE: Deidentifier | None = None  # one per worker process, built by _start_worker


@dataclass(frozen=True)
class Task:
    """One source file and the XNAT labels its instance gets."""

    src: Path
    subject: str
    session: str


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build its own engine (picklable)."""

    profile: Profile
    key: bytes = field(repr=False)
    project: str
    encapsulated: Encapsulated = Encapsulated.OMIT


class Outcome(StrEnum):
    """What happened to one file."""

    WRITTEN = "written"
    LEFT_OUT = "left out"  # by policy (an encapsulated document): not written, not an error
    QUARANTINED = "quarantined"
    FAILED = "failed"  # a DICOM instance that could not be de-identified
    SKIPPED = "skipped"  # not DICOM, or not a composite instance


@dataclass(frozen=True)
class FileOutcome:
    """One file's outcome; ``reason`` names no patient data and no source path."""

    outcome: Outcome
    reason: str | None = None
    result: AnonymizeResult | None = None


@dataclass(frozen=True)
class BatchSummary:
    """Counts by outcome, and by reason for every outcome but WRITTEN."""

    written: int = 0
    reasons: Mapping[Outcome, Mapping[str, int]] = field(default_factory=dict)
    results: tuple[AnonymizeResult, ...] = ()

    def count(self, outcome: Outcome) -> int:
        """How many files had ``outcome``."""
        if outcome is Outcome.WRITTEN:
            return self.written
        return sum(self.reasons.get(outcome, {}).values())


def _start_worker(spec: EngineSpec, *, quiet: bool = True) -> None:
    global _ENGINE
    _ENGINE = Deidentifier(
        spec.profile, key=spec.key, project=spec.project, encapsulated=spec.encapsulated
    )
    if quiet:  # a worker process of its own: pydicom's warnings may quote values (PHI)
        warnings.filterwarnings("ignore", module=r"pydicom\.")


def _one(task: Task, dst_dir: Path) -> FileOutcome:
    """De-identify one file in this process's engine; never raises for a bad file."""
    assert _ENGINE is not None, "_start_worker() first"
    try:
        result = _ENGINE.deidentify_file(
            task.src, dst_dir, subject=task.subject, session=task.session
        )
    except NotAnInstance as exc:
        return FileOutcome(Outcome.SKIPPED, exc.reason)
    except InstanceFailed as exc:
        return FileOutcome(Outcome.FAILED, exc.reason)
    # One malformed file must not end a batch of thousands: keep only the exception type,
    # as its message may quote a value.  (The batch is the CLI's and the pipeline's loop.)
    except Exception as exc:
        _log.error("anonymize_file_failed", error=type(exc).__name__)
        return FileOutcome(Outcome.FAILED, f"unexpected error ({type(exc).__name__})")
    if result.left_out:
        return FileOutcome(Outcome.LEFT_OUT, result.reason, result)
    if result.quarantined:
        return FileOutcome(Outcome.QUARANTINED, result.reason, result)
    return FileOutcome(Outcome.WRITTEN, None, result)


def _outcomes(
    tasks: Sequence[Task], dst_dir: Path, spec: EngineSpec, workers: int
) -> Iterator[FileOutcome]:
    work = partial(_one, dst_dir=dst_dir)
    if workers == 1:
        _start_worker(spec, quiet=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pydicom\.")  # they may quote PHI
            yield from map(work, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))  # small: no idle tail
    with context.Pool(workers, initializer=_start_worker, initargs=(spec,)) as pool:
        yield from pool.imap(work, tasks, chunksize=chunk)


def _recorded(outcome: FileOutcome, task: Task, recorder: Deidentifier) -> FileOutcome:
    """Record the labels in the mapping table; a clash quarantines the file."""
    result = outcome.result
    if result is None or result.source is None or result.left_out:
        return outcome  # a left-out file was not written: nothing to hold
    clash = recorder.record(task.subject, task.session, result.source)
    if clash is None:
        return outcome
    held = hold(result, clash)
    return FileOutcome(Outcome.QUARANTINED, held.reason, held)


def deidentify_files(
    tasks: Sequence[Task],
    dst_dir: Path,
    *,
    spec: EngineSpec,
    mapping: MappingTable | None = None,
    workers: int = 1,
    on_outcome: Callable[[FileOutcome], None] | None = None,
) -> BatchSummary:
    """De-identify ``tasks`` into ``dst_dir`` (quarantine: ``<dst_dir>.quarantine``).

    Raises:
        InputError: a task's subject or session is not a valid XNAT label.
    """
    recorder = Deidentifier(
        spec.profile,
        key=spec.key,
        project=spec.project,
        mapping=mapping,
        encapsulated=spec.encapsulated,
    )
    reasons: dict[Outcome, Counter[str]] = {}
    results: list[AnonymizeResult] = []
    written = 0
    for task, outcome in zip(tasks, _outcomes(tasks, dst_dir, spec, workers), strict=True):
        outcome = _recorded(outcome, task, recorder)
        if outcome.result is not None:
            results.append(outcome.result)
        if outcome.outcome is Outcome.WRITTEN:
            written += 1
        else:
            reasons.setdefault(outcome.outcome, Counter())[outcome.reason or "?"] += 1
        if on_outcome is not None:
            on_outcome(outcome)
    summary = BatchSummary(written, {k: dict(v) for k, v in reasons.items()}, tuple(results))
    counts = {outcome.name.lower(): summary.count(outcome) for outcome in Outcome}
    _log.info("anonymize_batch_done", project=spec.project, workers=workers, **counts)
    return summary
