"""The NIfTI step's worker process (private to :mod:`pacsman.pipeline`): each series'
conversion runs here, started once per de-identify/push process, so its header reads,
nibabel and leak checks never take the de-identification's GIL (dcm2niix is a subprocess of
it, on the second core).  :mod:`pacsman.pipeline.nifti` hands it a :class:`Job` per series.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pacsman.log import LogSettings, bind_process, configure_logging, current_settings, demoted

if TYPE_CHECKING:
    from pacsman.anonymize import Originals
    from pacsman.nifti import NiftiResult

__all__ = ["ConversionWorker", "Job", "convert_job"]

#: What the leak check compares a sidecar with: the originals of the raw series' first file.
_ORIGINAL_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Job:
    """One series to convert, as the worker process gets it (plain, picklable values)."""

    source: Path
    out_directory: Path
    subject: str
    session: str
    series_number: str
    raw_directory: Path | None
    keep_institution: bool

    def failed(self, reason: str) -> NiftiResult:
        """A FAILED result for this series (its NIfTI folder as the place)."""
        from pacsman.nifti import NiftiOutcome, NiftiResult, nifti_directory

        target = nifti_directory(self.out_directory, self.subject, self.session, self.series_number)
        return NiftiResult(NiftiOutcome.FAILED, f"series {self.series_number}: {reason}", target)


def convert_job(job: Job) -> NiftiResult:
    """Convert one series (the worker process runs this; so does the caller without one)."""
    from pacsman.nifti import convert_series

    try:
        # the pipeline's own series_converted says it, with the row: one line per fact
        with demoted("nifti_series_done"):
            return convert_series(
                job.source,
                job.out_directory,
                subject=job.subject,
                session=job.session,
                series_number=job.series_number,
                originals=_originals(job.raw_directory, job.keep_institution),
            )
    except OSError as exc:  # e.g. the disk is full: this series fails, the run goes on
        return job.failed(
            f"{exc.strerror or exc} writing its NIfTI under {job.out_directory} "
            f"({type(exc).__name__}); free space or fix the folder, then run the same "
            "command again"
        )


class ConversionWorker:
    """The process that converts, started once per de-identify/push process (a ``with``
    block): a fresh interpreter (spawn: a threaded process is never forked) that logs as
    this one does.  One series at a time.

    A worker that dies (killed, out of memory) fails the series it had, with the reason,
    and is started again for the next one.
    """

    def __init__(self, *, run_id: int | None = None) -> None:
        self._run_id = run_id
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ConversionWorker:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc is None, cancel_futures=True)
            self._pool = None

    def _start(self) -> None:
        settings = current_settings()
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_started,
            initargs=(settings, self._run_id),
        )
        self._pool.submit(_warm)  # imports and dcm2niix's version while the run retrieves

    def convert(self, job: Job) -> NiftiResult:
        """Convert ``job`` in the worker process; wait for it.

        Raises:
            FatalError: the dcm2niix wheel or its binary is missing.
        """
        if self._pool is None:
            self._start()
        assert self._pool is not None
        try:
            return self._pool.submit(convert_job, job).result()
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._start()
            return job.failed(
                "the conversion process ended while it converted the series (killed, or out "
                "of memory); run the same command again"
            )


def _worker_started(settings: LogSettings, run_id: int | None) -> None:
    """The worker process's start: log as the parent does."""
    configure_logging(
        level=settings.level,
        file=settings.file,
        console=settings.console,
        stream=sys.stderr,
    )
    if run_id is not None:
        bind_process(run_id=run_id)


def _warm() -> str:
    from pacsman.nifti import dcm2niix_version  # and nibabel's import, once

    return dcm2niix_version()


def _originals(raw_directory: Path | None, keep_institution: bool) -> Originals | None:
    """The leak check's originals from the raw series' first file; None when it is gone."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from pacsman.anonymize import Originals

    if raw_directory is None:
        return None
    try:
        first = min(raw_directory.glob("*.dcm"), default=None)
        if first is None:
            return None
        ds = dcmread(first, stop_before_pixels=True)
    except (OSError, ValueError, EOFError, InvalidDicomError):  # gone: the PHI-key check only
        return None
    uids = [str(ds.get(keyword, "")) for keyword in _ORIGINAL_UIDS]
    return Originals.from_dataset(ds, uids=uids, keep_institution=keep_institution)
