"""Queueing a job: the one rule every way of submitting follows (CLI, inbox, HTTP API).

The query file is validated completely, with the config's PACS nodes and character sets,
before anything is queued: a bad file queues nothing and raises every located problem.  A
valid one is stored in the job store (its bytes too), where ``pacsman serve`` claims it.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import structlog

from pacsman.config import Config
from pacsman.errors import InputError, QueryFileError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import Job, JobOptions
from pacsman.layout import private_directory
from pacsman.queryfile import load_queryfile

__all__ = ["JOB_NAME_MAX", "check_options", "queue_job", "validate_content"]

_log = structlog.get_logger("pacsman.service")

JOB_NAME_MAX = 120
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIXES = (".csv", ".xlsx", ".txt", ".tsv")


def check_options(config: Config, options: JobOptions) -> None:
    """The options must fit the config: a known PACS node and push target.

    Raises:
        ConfigError: ``options.pacs`` names no PACS node.
        InputError: the push target is unknown, de-identification is switched off, or
            --nifti/--bids do not fit (no de-identification, a missing mapping file).
        PacsmanError: --nifti, and dcm2niix cannot be run.
    """
    if options.pacs is not None:
        config.node(options.pacs)
    if options.push not in (None, "xnat", "dicom", "folder"):
        raise InputError(
            f"push target {options.push!r} is not one of xnat, dicom, folder; pick one"
        )
    if (options.anonymize or options.push) and not config.anonymization.enabled:
        raise InputError(
            "the job asks for de-identification (--anonymize or --push), but "
            "anonymization.enabled is false in the config; set it to true or drop the option"
        )
    if options.nifti or options.bids:
        # the command's checks and messages: de-identified input, the mapping file there
        from pacsman.pipeline.nifti import check_nifti_options

        bids = Path(options.bids) if options.bids else None
        deidentify = options.anonymize or bool(options.push)
        check_nifti_options(nifti=options.nifti, bids=bids, deidentify=deidentify)


def validate_content(
    config: Config, filename: str, content: bytes, options: JobOptions, *, scratch: Path
) -> None:
    """Validate a query file given as bytes (an upload, an inbox file) as the command would.

    Raises:
        QueryFileError: every located problem, named after ``filename``.
        InputError: the file name has no query-file suffix.
    """
    name = Path(filename).name or "query.csv"
    if Path(name).suffix.lower() not in _SUFFIXES:
        raise InputError(
            f"{name}: a query file is .csv (or .tsv, .txt) or .xlsx; rename it or export it so"
        )
    private_directory(scratch)  # 0700: the file holds patient identifiers
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        path = Path(folder) / name
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        try:
            load_queryfile(
                path,
                character_sets=config.character_sets,
                default_pacs=config.node(options.pacs).name,
                sheet=options.sheet,
                encoding=options.encoding,
            )
        except QueryFileError as exc:  # located in the name the user knows, not the copy
            raise QueryFileError(replace(p, source=filename) for p in exc.problems) from None


def queue_job(
    store: JobStore,
    config: Config,
    *,
    filename: str,
    content: bytes,
    options: JobOptions,
    name: str | None = None,
    priority: int = 0,
    source: str = "cli",
    scratch: Path | None = None,
) -> Job:
    """Validate the query file and the options; queue the job; return it.

    ``scratch`` is a private folder for the file while it is validated (default: next to
    the job store).

    Raises:
        QueryFileError, InputError, ConfigError: nothing was queued; every problem is named.
    """
    check_options(config, options)
    beside = config.jobstore.parent if isinstance(config.jobstore, Path) else config.store_root
    where = scratch or beside / ".pacsman-submit"
    validate_content(config, filename, content, options, scratch=where)
    label = _job_name(name or Path(filename).stem)
    job = store.add_job(
        name=label,
        queryfile_name=Path(filename).name,
        content=content,
        options=options,
        priority=priority,
        source=source,
    )
    _log.info("job_queued", job_id=job.id, job=label, source=source, priority=priority)
    return job


def _job_name(text: str) -> str:
    """A job's name as shown and logged: printable, trimmed, at most JOB_NAME_MAX characters."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return (cleaned or "job")[:JOB_NAME_MAX]


def safe_folder_name(job: Job) -> str:
    """``00012-ct-cohort``: the job's output folder name (id first, so it sorts)."""
    slug = _SAFE_NAME.sub("-", job.name).strip("-.")[:40] or "job"
    return f"{job.id:05d}-{slug}"
