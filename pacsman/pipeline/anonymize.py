"""The anonymize half of the pipeline: de-identify every COMPLETE series, once.

Private to :mod:`pacsman.pipeline`.  Output: ``<out>/anonymized/<subject>/<session>/<n>/``
where ``n`` is the SeriesNumber (never the SeriesDescription, which may hold PHI), and
quarantined files in ``<that folder>.quarantine/`` with their reasons.

Labels: the query row's ``Subject``/``Session`` when it has them; otherwise stable
pseudonyms from the project's mapping table, made from ``anonymization.subject_template`` and
``session_template`` (default ``<project>_S0001``, ``<project>_E00001``).
The key and the mapping table are the ones ``pacsman anonymize`` and
``pacsman mapping export`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import structlog

from pacsman.anonymize import (
    MappingTable,
    default_key_path,
    default_mapping_path,
    load_or_create_key,
    load_profile,
)
from pacsman.anonymize.batch import BatchSummary, EngineSpec, Outcome, Task, deidentify_files
from pacsman.config import Config
from pacsman.dicom.scp import safe_component
from pacsman.errors import InputError
from pacsman.jobstore import JobStore, Run, SeriesTask
from pacsman.models import ItemState
from pacsman.pipeline.retrieve import ALL_SERIES, series_directories

__all__ = ["ANONYMIZED_DIRECTORY", "anonymize_complete", "project_name", "session_directory"]

_log = structlog.get_logger("pacsman.pipeline")

ANONYMIZED_DIRECTORY = "anonymized"


def project_name(config: Config) -> str:
    """The XNAT project the data is for: ``xnat.project``, else ``pacsman``."""
    return config.xnat.project or "pacsman"


def anonymize_complete(
    store: JobStore,
    run: Run,
    config: Config,
    out_directory: Path,
    *,
    workers: int = 1,
    on_study_done: Callable[[], None] | None = None,
) -> int:
    """De-identify every COMPLETE series not yet ANONYMIZED; return how many were worked on.

    ``on_study_done`` is called each time the last series of a study (of those worked on
    now) is recorded, so that a push can start while the next study is de-identified.

    Raises:
        InputError: anonymization is switched off in the config, or the profile is invalid.
    """
    if not config.anonymization.enabled:
        raise InputError(
            "--anonymize was asked for but anonymization.enabled is false in the config; "
            "set it to true (the default) or drop --anonymize"
        )
    every = store.series_tasks(run, ALL_SERIES)
    todo = [
        t
        for t in every
        if t.state is ItemState.COMPLETE and t.anonymization != ItemState.ANONYMIZED.value
    ]
    if not todo:
        _log.info("nothing_to_anonymize", series=len(every))
        return 0
    project = project_name(config)
    spec = _engine_spec(config.anonymization.profile, project)
    sources = series_directories(every, out_directory)
    mapping = MappingTable(default_mapping_path(project))
    try:
        for task, following in zip(todo, [*todo[1:], None], strict=True):
            labels = _labels(mapping, task, project, config)
            _anonymize_series(
                store, run, task, labels, sources, mapping, spec, out_directory, workers
            )
            if on_study_done is not None and _study(task) != _study(following):
                on_study_done()
    finally:
        mapping.close()
    return len(todo)


def _study(task: SeriesTask | None) -> tuple[str, int] | None:
    """What makes a study one session to push: its UID and its query row."""
    return None if task is None else (task.study_instance_uid, task.line)


def session_directory(out_directory: Path, subject: str, session: str) -> Path:
    """Where one session's de-identified series are: ``<out>/anonymized/<subject>/<session>``."""
    return out_directory / ANONYMIZED_DIRECTORY / subject / session


@lru_cache(maxsize=4)
def _engine_spec(profile: Path | None, project: str) -> EngineSpec:
    """Profile and key, read once per process (the later-stages process runs many passes)."""
    return EngineSpec(
        profile=load_profile(profile),
        key=load_or_create_key(default_key_path(project)),
        project=project,
    )


def _labels(
    mapping: MappingTable, task: SeriesTask, project: str, config: Config
) -> tuple[str, str]:
    templates = config.anonymization
    subject = task.subject or mapping.label_for(
        "subject", task.patient_id, project=project, template=templates.subject_template
    )
    session = task.session or mapping.label_for(
        "session", task.study_instance_uid, project=project, template=templates.session_template
    )
    return subject, session


def _anonymize_series(
    store: JobStore,
    run: Run,
    task: SeriesTask,
    labels: tuple[str, str],
    sources: Mapping[str, Path],
    mapping: MappingTable,
    spec: EngineSpec,
    out_directory: Path,
    workers: int,
) -> None:
    subject, session = labels
    destination = session_directory(out_directory, subject, session) / safe_component(
        task.series_number, fallback="series"
    )
    files = sorted(sources[task.series_instance_uid].glob("*.dcm"))
    summary = deidentify_files(
        [Task(src=f, subject=subject, session=session) for f in files],
        destination,
        spec=spec,
        mapping=mapping,
        workers=workers,
    )
    state, detail = _verdict(summary, len(files))
    store.record_anonymization(
        run, task, state, written=summary.written, detail=detail, labels=(subject, session)
    )
    _log.info(
        "series_anonymized",
        row=task.line,
        series_number=task.series_number,
        state=state.value,
        written=summary.written,
        files=len(files),
    )


def _verdict(summary: BatchSummary, files: int) -> tuple[ItemState, str]:
    if summary.written == files:
        return ItemState.ANONYMIZED, ""
    parts = []
    for outcome in (Outcome.QUARANTINED, Outcome.FAILED, Outcome.SKIPPED):
        for reason, count in sorted(summary.reasons.get(outcome, {}).items()):
            parts.append(f"{count} {outcome.value}: {reason}")
    return ItemState.QUARANTINED, f"{summary.written} of {files} written; " + "; ".join(parts)
