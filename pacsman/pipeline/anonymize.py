"""The de-identify step: every COMPLETE series, once, from its recorded raw directory.

Private to :mod:`pacsman.pipeline`.  Output: ``<out>/anonymized/<subject>/<session>/<n>/``
where ``n`` is the SeriesNumber (never the SeriesDescription, which may hold PHI), and
quarantined files in ``<that folder>.quarantine/`` with their reasons.  The directory is
recorded in the job store with the outcome, for the push step to read.

Labels: the query row's ``Subject``/``Session`` when it has them; otherwise stable
pseudonyms from the project's mapping table, made from ``anonymization.subject_template`` and
``session_template`` (default ``<project>_S0001``, ``<project>_E00001``).
The key and the mapping table are the ones ``pacsman anonymize`` and
``pacsman mapping export`` use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import structlog

from pacsman.anonymize import (
    Encapsulated,
    MappingTable,
    default_key_path,
    default_mapping_path,
    load_or_create_key,
    load_profile,
)
from pacsman.anonymize.batch import BatchSummary, EngineSpec, Outcome, Task, deidentify_files
from pacsman.config import Config
from pacsman.jobstore import AnonymizeSeries, JobStore, Run, recorded_directory
from pacsman.layout import anonymized_series_directory
from pacsman.models import ItemState

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
) -> int:
    """De-identify every COMPLETE series not yet ANONYMIZED; return how many were worked on.

    ``project`` is the XNAT project the data is for (its key and mapping table).
    ``on_study_done`` is called each time the last series of a study (of those worked on
    now) is recorded, so that a push can start while the next study is de-identified.

    Raises:
        InputError: the de-identification profile is invalid.
        FatalError: a series' raw directory is not in the job store.
    """
    todo = store.series_for_anonymize(run)
    if not todo:
        _log.info("nothing_to_anonymize", series=store.count_series(run))
        return 0
    spec = _engine_spec(config.anonymization.profile, project, config.anonymization.encapsulated)
    mapping = MappingTable(default_mapping_path(project))
    try:
        for series, following in zip(todo, [*todo[1:], None], strict=True):
            experiment = _experiment(mapping, series, project, config)
            _anonymize_series(store, run, series, experiment, mapping, spec, out_directory, workers)
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


def _anonymize_series(
    store: JobStore,
    run: Run,
    series: AnonymizeSeries,
    experiment: tuple[str, str],
    mapping: MappingTable,
    spec: EngineSpec,
    out_directory: Path,
    workers: int,
) -> None:
    subject, session_label = experiment
    destination = anonymized_series_directory(
        out_directory, subject=subject, session=session_label, series_number=series.series_number
    )
    source = recorded_directory(series.raw_directory, series.series_instance_uid)
    files = sorted(source.glob("*.dcm"))
    summary = deidentify_files(
        [Task(src=f, subject=subject, session=session_label) for f in files],
        destination,
        spec=spec,
        mapping=mapping,
        workers=workers,
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
