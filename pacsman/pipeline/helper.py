"""The de-identify/push process: :func:`main`, in a fresh interpreter of its own.

Private to :mod:`pacsman.pipeline`, started by
:class:`~pacsman.pipeline.background.DeidentifyPushProcess` (which describes the protocol).
Each study announced on stdin (or several at once) triggers one pass of de-identification;
each study de-identified wakes a push thread, so an experiment travels while the next study
is de-identified.  When the run says ``done``: a last pass of both, the report line, and
exit; when stdin closes without it (the run was interrupted or killed): exit at once.

Its log events are JSON lines on its stdout and stderr (one pipe), which the run logs as
its own; so are its progress counts.  A series quarantined, or an experiment whose push
failed, is not tried again by this process (the next run tries again); "nothing to
de-identify", "nothing to push" and the studies held back are said once, at the end.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import replace
from types import TracebackType
from typing import Any

import structlog

from pacsman.config import Config
from pacsman.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    JobStoreConnectionLost,
    LeaseLost,
    PacsmanError,
)
from pacsman.jobstore import JobStore, Lease, Run
from pacsman.log import bind_process, configure_logging, demoted
from pacsman.pipeline.anonymize import anonymize_complete
from pacsman.pipeline.background import SUPERSEDED, Request, read_request
from pacsman.pipeline.nifti import ConversionWorker, convert_deidentified, push_converted
from pacsman.pipeline.progress import PipeCounts
from pacsman.pipeline.push import PushPass, log_push_passes, push_ready_sessions
from pacsman.push import Target, open_target
from pacsman.push.targets import TargetKind

__all__ = ["BackgroundPasses", "main", "xnat_project"]

_log = structlog.get_logger("pacsman.pipeline")


def xnat_project(config: Config) -> str:
    """The XNAT project the data is for: ``xnat.project``, else ``pacsman``."""
    return config.xnat.project or "pacsman"


class BackgroundPasses:
    """Runs ``work`` (one pass, returning how many items it did) in a thread, once per wake-up.

    A push mostly waits for the target to archive and answer, so the thread lets experiment
    k travel while study k+1 is de-identified.  Wake-ups during a pass coalesce into one more
    pass; leaving the ``with`` block makes a last pass and waits for it.  Leaving it with an
    exception (Ctrl-C, a failed de-identification) does not wait: the thread is a daemon and
    dies with the process, and the next run checks the target before it sends anything
    again.  An error in the thread ends it and is raised by the next :meth:`wake` or on
    leaving the block, so it ends the process like an error of its main thread.
    """

    def __init__(self, work: Callable[[], int], *, name: str = "pacsman-push") -> None:
        self._work = work
        self._wake = threading.Event()
        self._passes = threading.Condition()
        self._asked = self._ended = 0  # drains asked for, and the last one a pass ended
        self._closing = self._abandoned = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        #: Items the passes did so far.
        self.worked = 0

    def __enter__(self) -> BackgroundPasses:
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

    def drain(self) -> None:
        """Wait until a pass that started after this call has ended (a batch's barrier);
        raise the error that ended the thread."""
        with self._passes:
            self._asked += 1
            asked = self._asked
            self._wake.set()
            while self._ended < asked and self._error is None and self._thread.is_alive():
                self._passes.wait(1.0)
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                last = self._closing
                with self._passes:
                    asked = self._asked
                if self._abandoned:
                    return
                try:
                    self.worked += self._work()
                except BaseException as exc:  # raised again in the owner's thread
                    self._error = exc
                    return
                with self._passes:
                    self._ended = asked
                    self._passes.notify_all()
                if last:
                    return
        finally:
            with self._passes:
                self._passes.notify_all()


# -- the child process ------------------------------------------------------------------------


class _Announcements:
    """What the run says on stdin, read by a thread, a line each: ``study`` (a study is
    COMPLETE), ``lease G`` (work on the studies of lease generation G from now on: a service
    job's next batch), ``sync`` (answer ``{"synced": true}`` once everything announced is
    de-identified and pushed), and ``done``.  The end of stdin without ``done`` means the
    run is gone (Ctrl-C, killed): this process then ends at once, whatever it is doing, and
    leaves the rest to the next run (every step it took is recorded; files are renamed into
    place whole)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._news = threading.Event()
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self.done = False
        threading.Thread(target=self._read, name="pacsman-announcements", daemon=True).start()

    def _read(self) -> None:
        tail = b""
        while chunk := os.read(self._fd, 4096):
            *whole, tail = (tail + chunk).split(b"\n")
            with self._lock:
                self._lines += [line.decode("ascii", "replace").strip() for line in whole]
                self.done = self.done or "done" in self._lines
            self._news.set()
        if not self.done:
            os._exit(EXIT_INTERRUPTED)
        self._news.set()

    def wait(self) -> list[str]:
        """Block until something is announced; return what was (``done`` last, if said)."""
        self._news.wait()
        self._news.clear()
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


def _target(config: Config, kind: TargetKind | None) -> AbstractContextManager[Target | None]:
    """One target (one XNAT login) for every pass of this process."""
    return nullcontext() if kind is None else open_target(config, kind=kind)


_write_lock = threading.Lock()


def _message(message: dict[str, Any]) -> None:
    """One JSON line for the run, in one write (the pipe never splits it from a log line)."""
    _write_line(json.dumps(message) + "\n")


def _write_line(line: str) -> None:
    with _write_lock:
        os.write(1, line.encode("utf-8"))


def main() -> int:
    """De-identify on every announcement and push beside it; once more at the end.

    The process exits once this returns, and the run waits for that: its objects are frozen
    first (:func:`gc.freeze`, as :func:`pacsman.cli.main` does), so that the interpreter's
    last garbage collections skip them.
    """
    try:
        return _work()
    finally:
        gc.freeze()


def _work() -> int:
    stdin = sys.stdin.fileno()
    request = read_request(stdin)
    config = request.config
    # JSON on the pipe; the run logs each event as its own (console and log.file).
    configure_logging(level=request.log_level, console="json", stream=sys.stderr)
    bind_process(run_id=request.run_id)
    counts = PipeCounts(_write_line)
    try:
        with (
            demoted(*SUPERSEDED),
            JobStore(config.jobstore) as store,
            _target(config, request.push) as target,
        ):
            run = replace(store.run_by_id(request.run_id), lease=request.lease)
            worked = _passes(store, run, request, target, _Announcements(stdin), counts)
    except LeaseLost as exc:
        counts.flush()
        _message({"report": {"lease_lost": str(exc)}})  # the run stops this batch
        return EXIT_FATAL
    except JobStoreConnectionLost as exc:
        counts.flush()
        _message({"report": {"store_lost": str(exc)}})  # the run raises it as such
        return EXIT_FATAL
    except PacsmanError as exc:
        counts.flush()
        _message({"report": {"error": str(exc)}})  # the run raises it, with the reason
        return EXIT_FATAL
    counts.flush()
    _message({"report": {"worked": worked}})  # added to the summary
    return EXIT_OK


class _Pusher:
    """One push pass per call (for :class:`BackgroundPasses`); remembers the last one.
    ``then`` is called after a pass that pushed something (the NIfTI uploads wait for it)."""

    def __init__(
        self, store: JobStore, run: Run, request: Request, target: Target | None, counts: PipeCounts
    ) -> None:
        self._store, self.run, self._request = store, run, request
        self._target, self._counts = target, counts
        self._handled: set[tuple[str, str]] = set()
        self.last = PushPass()
        self.then: Callable[[], None] = lambda: None

    def __call__(self) -> int:
        kind = self._request.push
        if kind is None:
            return 0
        config = self._request.config
        self.last = push_ready_sessions(
            self._store,
            self.run,
            config,
            project=xnat_project(config),
            kind=kind,
            target=self._target,
            counts=self._counts,
            handled=self._handled,
        )
        if self.last.pushed:
            self.then()
        return self.last.pushed


class _Nifti:
    """``--nifti``: a conversion thread that hands each series to the conversion process
    (:class:`~pacsman.pipeline.nifti.ConversionWorker`: its Python never takes this
    process's GIL; dcm2niix is its subprocess) and records what came of it, and with
    ``--push xnat`` an upload thread, so that a session's NIFTI resources travel while the
    next session's DICOM is pushed.

    Each conversion pass wakes the upload thread; so does each DICOM push pass (a converted
    series is uploaded once its session's DICOM push is DONE).  :meth:`blocks` gives the
    order of the ``with`` blocks: the upload thread's last pass comes after the push
    thread's, which comes after the conversion thread's.
    """

    def __init__(
        self,
        store: JobStore,
        run: Run,
        request: Request,
        target: Target | None,
        counts: PipeCounts | None = None,
    ):
        self._store, self.run, self._request, self._target = store, run, request, target
        self._counts = counts
        self._converted: set[str] = set()
        self._uploaded: set[str] = set()
        #: The conversions' own process (entered before :attr:`converting`, left after it).
        self.worker = ConversionWorker(run_id=run.id)
        self.converting = BackgroundPasses(self._convert, name="pacsman-nifti")
        self.uploading = BackgroundPasses(self._upload, name="pacsman-nifti-upload")

    def _convert(self) -> int:
        request = self._request
        assert request.nifti is not None
        converted = convert_deidentified(
            self._store,
            self.run,
            request.config,
            request.out_directory,
            request.nifti,
            handled=self._converted,
            counts=self._counts,
            worker=self.worker,
        )
        if converted:
            self.uploading.wake()
        return converted

    def _upload(self) -> int:
        if self._target is None:
            return 0
        config = self._request.config
        return push_converted(
            self._store,
            self.run,
            config,
            self._target,
            project=xnat_project(config),
            handled=self._uploaded,
        )

    @property
    def worked(self) -> int:
        """Series converted and uploaded (known once the blocks are left)."""
        return self.converting.worked + self.uploading.worked


def _passes(
    store: JobStore,
    run: Run,
    request: Request,
    target: Target | None,
    announcements: _Announcements,
    counts: PipeCounts,
) -> int:
    """De-identify on every announcement; push in a thread beside it; return items worked on.

    Each study de-identified wakes the push thread, so pushing study k overlaps
    de-identifying study k+1 instead of waiting for it: a push mostly waits for the target,
    and a real XNAT takes seconds to archive a session.  With ``--nifti`` it wakes the
    conversion thread too (:class:`_Nifti`).
    """
    config, out = request.config, request.out_directory
    pusher = _Pusher(store, run, request, target, counts)
    nifti = None if request.nifti is None else _Nifti(store, run, request, target, counts)
    handled: set[str] = set()
    deidentified = 0
    with ExitStack() as blocks:
        # Left in reverse: the last conversion pass, then the last push, then the uploads.
        if nifti is not None and request.push == "xnat":
            pusher.then = blocks.enter_context(nifti.uploading).wake
        pushing = blocks.enter_context(BackgroundPasses(pusher))
        if nifti is not None:
            blocks.enter_context(nifti.worker)
        converting = None if nifti is None else blocks.enter_context(nifti.converting)

        def study_done() -> None:
            pushing.wake()
            if converting is not None:
                converting.wake()

        more = True
        while more:
            lines = announcements.wait()
            more = "done" not in lines
            for line in lines:
                if line.startswith("lease ") and run.lease is not None:
                    lease = Lease(run.lease.node, int(line.split()[1]))
                    run = pusher.run = replace(run, lease=lease)
                    if nifti is not None:
                        nifti.run = run
            deidentified += anonymize_complete(
                store,
                run,
                config,
                out,
                project=xnat_project(config),
                workers=request.workers,
                on_study_done=study_done,
                counts=counts,
                handled=handled,
            )
            counts.flush()
            study_done()  # a study de-identified by an earlier run
            if "sync" in lines:
                if nifti is not None:
                    nifti.converting.drain()
                pushing.drain()
                if nifti is not None and request.push == "xnat":
                    nifti.uploading.drain()
                counts.flush()
                _message({"synced": True})
    if not deidentified:
        _log.info("nothing_to_anonymize", series=store.count_series(run))
    if request.push is not None:
        log_push_passes(pushing.worked, pusher.last)
    # after the blocks: the last conversion, push and upload passes have ended
    return deidentified + pushing.worked + (0 if nifti is None else nifti.worked)


if __name__ == "__main__":
    sys.exit(main())
