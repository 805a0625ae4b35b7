"""The de-identify step: every COMPLETE series, once, from its recorded raw directory.

Private to :mod:`pacsman.pipeline`.  Output: ``<out>/anonymized/<subject>/<session>/<n>/``
where ``n`` is the SeriesNumber (never the SeriesDescription, which may hold PHI), and
quarantined files in ``<that folder>.quarantine/`` with their reasons.  The directory is
recorded in the job store with the outcome, for the push step to read.

Labels: the query row's ``Subject``/``Session`` when it has them; otherwise stable
pseudonyms from the project's mapping table, made from ``anonymization.subject_template`` and
``session_template`` (default ``<project>_S0001``, ``<project>_E00001``).
The key and the mapping table are the ones ``pacsman anonymize`` and
``pacsman mapping export`` use (:func:`~pacsman.anonymize.locations.mapping_location`): with a
PostgreSQL job store, the mapping table is in its database, shared by every head node, so a
patient gets one subject label and one date shift whichever node retrieved the study.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import structlog

from pacsman.anonymize import (
    Encapsulated,
    MappingTable,
    default_key_path,
    load_or_create_key,
    load_profile,
)
from pacsman.anonymize.batch import (
    BatchSummary,
    EngineSpec,
    FileOutcome,
    Outcome,
    Task,
    deidentify_files,
)
from pacsman.anonymize.locations import default_mapping_path, mapping_location
from pacsman.config import Config
from pacsman.jobstore import AnonymizeSeries, JobStore, Run, recorded_directory
from pacsman.layout import anonymized_series_directory
from pacsman.models import ItemState
from pacsman.pipeline.progress import Counts, Stage

__all__ = ["anonymize_complete"]

_log = structlog.get_logger("pacsman.pipeline")


def anonymize_complete(
    store: JobStore,
    run: Run,
    config: Config,
    out_directory: Path,
    *,
    project: str,
    workers: int = 1,
    on_study_done: Callable[[], None] | None = None,
    counts: Counts | None = None,
    handled: set[str] | None = None,
) -> int:
    """De-identify every COMPLETE series not yet ANONYMIZED; return how many were worked on
    (0, silently, when there is none: the caller says so once).

    ``project`` is the XNAT project the data is for (its key and mapping table).
    ``on_study_done`` is called each time the last series of a study (of those worked on
    now) is recorded, so that a push can start while the next study is de-identified.
    ``counts`` gets each instance written (and its bytes) and each series' outcome.
    ``handled`` holds the SeriesInstanceUIDs this process de-identified already: they are
    not done again (a quarantined series stays so until the next run), and the series done
    now are added.

    Raises:
        InputError: the de-identification profile is invalid, or this node's project key
            is not the one the shared mapping table was written with.
        FatalError: a series' raw directory is not in the job store.
        JobStoreError: the PostgreSQL job store holding the mapping table cannot be reached.
    """
    todo = store.series_for_anonymize(run)
    if handled is not None:
        todo = [s for s in todo if s.series_instance_uid not in handled]
        handled.update(s.series_instance_uid for s in todo)
    if not todo:
        return 0
    spec = _engine_spec(config.anonymization.profile, project, config.anonymization.encapsulated)
    mapping = MappingTable(mapping_location(project, jobstore=config.jobstore))
    if counts is not None:
        counts.start(Stage.DEIDENTIFY)
    work = _Work(mapping, spec, out_directory, workers, counts)
    try:
        mapping.check_key(project, spec.key)
        mapping.check_not_left_behind(project, default_mapping_path(project))
        for series, following in zip(todo, [*todo[1:], None], strict=True):
            experiment = _experiment(mapping, series, project, config)
            _anonymize_series(store, run, series, experiment, work)
            if on_study_done is not None and _study(series) != _study(following):
                on_study_done()
    finally:
        mapping.close()
    return len(todo)


def _study(series: AnonymizeSeries | None) -> tuple[str, int] | None:
    """What makes a study one session to push: its UID and its query row."""
    return None if series is None else (series.study_instance_uid, series.line)


@lru_cache(maxsize=4)
def _engine_spec(profile: Path | None, project: str, encapsulated: str) -> EngineSpec:
    """Profile and key, read once per process (the de-identify/push process runs many passes)."""
    return EngineSpec(
        profile=load_profile(profile),
        key=load_or_create_key(default_key_path(project)),
        project=project,
        encapsulated=Encapsulated(encapsulated),
    )


def _experiment(
    mapping: MappingTable, series: AnonymizeSeries, project: str, config: Config
) -> tuple[str, str]:
    """XNAT (subject, session label): the row's own labels, else the mapping table's."""
    templates = config.anonymization
    subject = series.subject or mapping.label_for(
        "subject", series.patient_id, project=project, template=templates.subject_template
    )
    session_label = series.session or mapping.label_for(
        "session", series.study_instance_uid, project=project, template=templates.session_template
    )
    return subject, session_label


@dataclass(frozen=True)
class _Work:
    """What every series of a pass shares: mapping table, engine, output, counters."""

    mapping: MappingTable
    spec: EngineSpec
    out_directory: Path
    workers: int
    counts: Counts | None

    def count_file(self, outcome: FileOutcome) -> None:
        """Count one instance written, with its bytes."""
        if self.counts is None or outcome.outcome is not Outcome.WRITTEN or outcome.result is None:
            return
        try:
            size = outcome.result.path.stat().st_size
        except OSError:
            size = 0
        self.counts.add(Stage.DEIDENTIFY, instances=1, size=size)


def _anonymize_series(
    store: JobStore,
    run: Run,
    series: AnonymizeSeries,
    experiment: tuple[str, str],
    work: _Work,
) -> None:
    subject, session_label = experiment
    destination = anonymized_series_directory(
        work.out_directory,
        subject=subject,
        session=session_label,
        series_number=series.series_number,
    )
    source = recorded_directory(series.raw_directory, series.series_instance_uid)
    files = sorted(source.glob("*.dcm"))
    summary = deidentify_files(
        [Task(src=f, subject=subject, session=session_label) for f in files],
        destination,
        spec=work.spec,
        mapping=work.mapping,
        workers=work.workers,
        on_outcome=work.count_file,
    )
    state, detail = _verdict(summary, len(files))
    store.record_anonymization(
        run,
        series,
        state,
        written=summary.written,
        detail=detail,
        experiment=experiment,
        directory=destination,
    )
    if work.counts is not None:
        quarantined = state is ItemState.QUARANTINED
        work.counts.add(Stage.DEIDENTIFY, units=int(not quarantined), failed=int(quarantined))
    _log.info(
        "series_anonymized",
        row=series.line,
        series_number=series.series_number,
        state=state.value,
        written=summary.written,
        files=len(files),
    )


def _verdict(summary: BatchSummary, files: int) -> tuple[ItemState, str]:
    left_out = summary.count(Outcome.LEFT_OUT)  # encapsulated documents, by policy
    if summary.written + left_out == files:
        detail = "; ".join(
            f"{n} left out: {r}"
            for r, n in sorted(summary.reasons.get(Outcome.LEFT_OUT, {}).items())
        )
        return ItemState.ANONYMIZED, detail
    parts = []
    for outcome in (Outcome.LEFT_OUT, Outcome.QUARANTINED, Outcome.FAILED, Outcome.SKIPPED):
        for reason, count in sorted(summary.reasons.get(outcome, {}).items()):
            parts.append(f"{count} {outcome.value}: {reason}")
    return ItemState.QUARANTINED, f"{summary.written} of {files} written; " + "; ".join(parts)
