"""The NIfTI step (``--nifti``): each de-identified series through dcm2niix, then (with
``--push xnat``) into its scan's NIFTI resource.

Private to :mod:`pacsman.pipeline`; it is driven from the de-identify/push process
(:mod:`pacsman.pipeline.helper`), by a thread of its own beside de-identification and the
push.  Each conversion runs in a process of its own (:class:`ConversionWorker`, started
once): its header reads, nibabel and leak checks never take the de-identification's GIL
(dcm2niix is a subprocess of it, on the second core).  The thread only hands over the
series and records what came of it.  Output:
``<out>/nifti/<subject>/<session>/<SeriesNumber>/`` (:func:`pacsman.nifti.nifti_directory`),
and with ``--bids MAP`` a BIDS copy under ``<out>/bids/`` for the series the mapping file
matches (the others are listed in the log, never guessed).

Each series' sidecars are leak-checked against the originals of its raw series (read from
its first raw file, when the run still has it).  The outcome, reason, folder, dcm2niix version
and files are recorded per series (:mod:`pacsman.jobstore.nifti`); converted and skipped
series are never converted again, so a run killed and started again goes on where it was.
A failed or skipped conversion never holds anything back: the DICOM push does not look at it.

The upload (:func:`push_converted`, :mod:`pacsman.push.nifti`) runs in a thread of its own,
woken by each conversion pass and each DICOM push pass: a converted series goes to XNAT only
once its session's DICOM push is DONE (verified), and its outcome is recorded
(``nifti_push``); a session's NIFTI resources travel while the next session's DICOM is pushed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from pacsman.config import Config
from pacsman.errors import InputError
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.nifti import (
    NiftiSeries,
    converted_series,
    nifti_to_push,
    record_nifti,
    record_nifti_push,
    series_for_nifti,
)
from pacsman.log import demoted
from pacsman.models import ItemState
from pacsman.pipeline._nifti_worker import ConversionWorker, Job, convert_job
from pacsman.pipeline.progress import Counts, Stage

if TYPE_CHECKING:
    from pacsman.nifti import BidsMapping
    from pacsman.push import Target

__all__ = [
    "ConversionWorker",
    "NiftiOptions",
    "check_nifti",
    "check_nifti_options",
    "convert_deidentified",
    "push_converted",
]

_log = structlog.get_logger("pacsman.pipeline")


@dataclass(frozen=True)
class NiftiOptions:
    """``--nifti`` and ``--bids MAP`` as the de-identify/push process gets them."""

    bids: Path | None = None


def check_nifti_options(*, nifti: bool, bids: Path | None, deidentify: bool) -> None:
    """``--nifti``/``--bids`` as the command, ``pacsman submit``, the inbox and the HTTP API
    take them: de-identified input, dcm2niix runnable, the BIDS mapping file valid.

    Raises:
        InputError: --nifti without de-identification, --bids without --nifti, or a missing
            or invalid mapping file.
        PacsmanError: dcm2niix cannot be run (pacsman.nifti says why).
    """
    if bids is not None and not nifti:
        raise InputError(f"--bids {bids} names the BIDS layout of --nifti: add --nifti")
    if not nifti:
        return
    if not deidentify:
        raise InputError(
            "--nifti converts de-identified series only (sidecars must not carry identity): "
            "add --anonymize (or --push, which implies it)"
        )
    check_nifti(bids)


def check_nifti(bids: Path | None) -> str:
    """Before anything is sent: dcm2niix is there and the BIDS mapping file reads; return
    dcm2niix's version.

    Raises:
        InputError: the mapping file is invalid (it says where and how to fix it).
        PacsmanError: dcm2niix cannot be run (pacsman.nifti says why).
    """
    from pacsman.nifti import bids_mapping, dcm2niix_version

    version = dcm2niix_version()
    if bids is not None:
        if not bids.is_file():
            raise InputError(f"--bids {bids}: no such file; give the BIDS mapping file")
        bids_mapping(bids)
    return version


@dataclass
class _Converter:
    """What every conversion pass of one process shares."""

    out_directory: Path
    keep_institution: bool
    bids: BidsMapping | None
    counts: Counts | None = None
    worker: ConversionWorker | None = None


def convert_deidentified(
    store: JobStore,
    run: Run,
    config: Config,
    out_directory: Path,
    options: NiftiOptions,
    *,
    handled: set[str],
    counts: Counts | None = None,
    worker: ConversionWorker | None = None,
) -> int:
    """Convert every de-identified series not converted (nor skipped) yet; return how many
    were worked on.  ``handled`` holds the SeriesInstanceUIDs this process tried already: a
    failed one is tried again by the next run, not by this one.  ``counts``: the run's
    progress (:attr:`Stage.NIFTI`).  ``worker``: the process that converts (None: this one).

    Raises:
        LeaseLost: the run's lease no longer holds a series' study.
        JobStoreError: the job store cannot be written.
    """
    todo = [s for s in series_for_nifti(store, run) if s.series_instance_uid not in handled]
    if not todo:
        return 0
    handled.update(s.series_instance_uid for s in todo)
    converter = _Converter(
        out_directory,
        _keep_institution(config.anonymization.profile),
        _mapping(options.bids) if options.bids is not None else None,
        counts,
        worker,
    )
    if counts is not None:
        counts.start(Stage.NIFTI)
    for series in todo:
        _convert(store, run, series, converter)
    if converter.bids is not None:
        _write_bids(store, run, converter, {(s.xnat_subject, s.xnat_session) for s in todo})
    return len(todo)


def _convert(store: JobStore, run: Run, series: NiftiSeries, converter: _Converter) -> None:
    """Convert one series (in the worker process, when there is one) and record what came
    of it (a file system error too: it fails the series, never the run)."""
    from pacsman.nifti import NiftiOutcome, NiftiResult, dcm2niix_version, nifti_directory

    started = time.monotonic()
    target = nifti_directory(
        converter.out_directory, series.xnat_subject, series.xnat_session, series.series_number
    )
    source = series.anonymized_directory
    if source is None:
        reason = (
            f"series {series.series_number}: its de-identified folder is not in the job "
            "store; run the same command again, which records it"
        )
        result = NiftiResult(NiftiOutcome.FAILED, reason, target)
    else:
        job = Job(
            source,
            converter.out_directory,
            series.xnat_subject,
            series.xnat_session,
            series.series_number,
            series.raw_directory,
            converter.keep_institution,
        )
        worker = converter.worker
        result = convert_job(job) if worker is None else worker.convert(job)
    seconds = time.monotonic() - started
    settled = result.outcome in (NiftiOutcome.CONVERTED, NiftiOutcome.SKIPPED)
    if converter.counts is not None:
        converter.counts.add(
            Stage.NIFTI,
            units=int(settled),
            failed=int(not settled),
            instances=series.anonymized_instances or result.instances,
            size=sum(_size(path) for path in result.files),
        )
    record_nifti(
        store,
        run,
        series,
        result.outcome.value,
        detail=result.reason,
        directory=result.directory,
        tool=dcm2niix_version(),
        files=len(result.files),
    )
    log = _log.info if settled else _log.warning  # a failed series needs a look
    log(
        "series_converted",
        row=series.line,
        series_number=series.series_number,
        outcome=result.outcome.value,
        files=len(result.files),
        instances=result.instances,
        seconds=round(seconds, 3),
        **({"reason": result.reason} if result.reason else {}),
    )


def _size(path: Path) -> int:
    """Bytes of ``path`` (0 when it is gone)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


@lru_cache(maxsize=4)
def _keep_institution(profile: Path | None) -> bool:
    from pacsman.anonymize import Option, load_profile

    return Option.RETAIN_INSTITUTION_IDENTITY in load_profile(profile).options


@lru_cache(maxsize=4)
def _mapping(path: Path) -> BidsMapping:
    from pacsman.nifti import bids_mapping

    return bids_mapping(path)


def _write_bids(
    store: JobStore, run: Run, converter: _Converter, sessions: set[tuple[str, str]]
) -> None:
    """Place every converted series of the ``sessions`` converted now in the BIDS folder
    (each session whole, so that ``run-<N>`` numbering sees all of its series).

    Matched on the SeriesDescription C-FIND gave (the de-identified copy may have lost it);
    it names no file, and the log names series by number only.
    """
    from pacsman.nifti import PROVENANCE_FILE, BidsSeries, NiftiOutcome, NiftiResult, write_bids

    assert converter.bids is not None
    by_session: dict[tuple[str, str], list[BidsSeries]] = {}
    for series in converted_series(store, run):
        key = (series.xnat_subject, series.xnat_session)
        if key not in sessions or series.nifti_directory is None:
            continue
        files = tuple(p for p in nifti_files(series.nifti_directory) if p.name != PROVENANCE_FILE)
        result = NiftiResult(NiftiOutcome.CONVERTED, "", series.nifti_directory, files)
        by_session.setdefault(key, []).append(
            BidsSeries(series.series_number, series.series_description, result)
        )
    for (subject, session), members in by_session.items():
        placement = write_bids(
            converter.bids,
            converter.out_directory / "bids",
            subject=subject,
            session=session,
            series=members,
        )
        _log.info(
            "bids_written",
            session=f"{subject}/{session}",
            placed=[number for number, _ in placement.placed],
            unmatched=[number for number, _ in placement.unmatched],
            not_placed=[f"{number}: {why}" for number, why in placement.not_placed],
        )


def nifti_files(directory: Path) -> tuple[Path, ...]:
    """The files of a series' NIfTI folder, sorted ((), when it is gone)."""
    if not directory.is_dir():
        return ()
    return tuple(sorted(p for p in directory.iterdir() if p.is_file()))


# -- the upload to XNAT ----------------------------------------------------------------------


def push_converted(
    store: JobStore,
    run: Run,
    config: Config,
    target: Target,
    *,
    project: str,
    handled: set[str],
) -> int:
    """Upload each converted series of a session pushed (DONE) to XNAT into its scan's NIFTI
    resource; return how many were worked on.  ``handled``: as :func:`convert_deidentified`.

    Raises:
        FatalError: XNAT refuses pacsman for good.
        LeaseLost: the run's lease no longer holds a series' study.
    """
    from pacsman.push import retry_policy
    from pacsman.push.nifti import NiftiUpload, ScanIds, push_nifti
    from pacsman.push.xnat import XnatTarget

    if not isinstance(target, XnatTarget):
        return 0
    todo = [s for s in nifti_to_push(store, run, "xnat") if s.series_instance_uid not in handled]
    handled.update(s.series_instance_uid for s in todo)
    retry = retry_policy(config.push)
    scans = ScanIds()  # a session's series share one read of its scans
    for series in todo:
        directory = series.nifti_directory
        if directory is None or not directory.is_dir():
            record_nifti(
                store,
                run,
                series,
                "failed",
                detail=f"{directory}: the NIfTI folder is gone before its upload; "
                "the next run converts the series again",
                directory=directory or Path(),
                tool="",
                files=0,
            )
            continue
        upload = NiftiUpload(
            project=project,
            subject=series.xnat_subject,
            session=series.xnat_session,
            series_number=series.series_number,
            series_instance_uid=_deidentified_uid(series.anonymized_directory),
            directory=directory,
        )
        # nifti_pushed says it, with the count: one line per fact, not one per file
        with demoted("xnat_resource_created", "xnat_file_uploaded"):
            outcome = push_nifti(
                target, upload, overwrite=config.push.nifti_overwrite, retry=retry, scans=scans
            )
        detail = outcome.detail
        if outcome.state != "DONE" and config.xnat.destination == "/prearchive":
            detail += (
                "; xnat.destination is /prearchive, and NIfTI files go to archived sessions "
                "only: archive the session in XNAT, then run the same command again"
            )
        record_nifti_push(store, run, series, ItemState(outcome.state), detail=detail)
        if outcome.state != "DONE":
            _log.warning(
                "nifti_push_failed",
                row=series.line,
                series_number=series.series_number,
                reason=detail,
            )
    return len(todo)


def _deidentified_uid(directory: Path | None) -> str:
    """The de-identified SeriesInstanceUID (the scan's UID on XNAT), from the first file."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if directory is None:
        return ""
    try:
        first = min(directory.glob("*.dcm"), default=None)
        if first is None:
            return ""
        ds = dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (OSError, ValueError, EOFError, InvalidDicomError):
        return ""
    return str(ds.get("SeriesInstanceUID", ""))
