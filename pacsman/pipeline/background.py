"""The de-identify/push process, seen from the run: the ONE way the pipeline de-identifies
and pushes.

Private to :mod:`pacsman.pipeline`.  Retrieval is CPU-bound Python (the Storage SCP), and so
is de-identification: in threads of one process they take turns on one core.  So both steps
always run in a process of their own (:mod:`pacsman.pipeline.helper`), started fresh (a new
interpreter, never a ``fork`` of a process full of network threads), with or without
retrieval, whether the config came from a file or was built in memory: tests run what
production runs.  The two processes share the job store through SQLite.

Protocol, on the child's stdin: first the :class:`Request` (8-byte big-endian length, then
the pickled request: the frozen config travels without a file on disk); then one line each
time a study becomes complete (``study``); for a service job shared between head nodes,
``lease G`` when the node moves on to its next batch of studies and ``sync`` at a batch's
end (the child answers ``{"synced": true}`` once the batch is de-identified and pushed);
then ``done``, on which the child makes a last pass and exits:
0 done, 3 failed.  Whatever stopped the child, the run then fails with a
:class:`~pacsman.errors.FatalError` that gives the reason.  Its stdin closing without
``done`` (the run was interrupted or killed) ends the child at once: it never works on
without the run.

The child's stdout and stderr are one pipe, read line by line while it works: its log
events (JSON) are logged here as ours (:func:`pacsman.log.forward`), so both processes log
in one format on one stream, and above the live progress display; its progress counts
(``{"progress": ...}``) go to the run's :class:`~pacsman.pipeline.progress.Tracker`; its
last line is its report (``{"report": {"worked": N}}`` or ``{"report": {"error": "..."}}``).

Ctrl-C: the child is started with SIGINT blocked, so the terminal's Ctrl-C (sent to the whole
process group) reaches only the run, which then stops the child (SIGTERM: no traceback).
Every step it took is one job-store transaction, and each file is written under a temporary
name and renamed, so the same command run again resumes where it stopped.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, TYPE_CHECKING, Any

import structlog

from pacsman.config import Config
from pacsman.errors import FatalError, Halted, JobStoreConnectionLost, LeaseLost
from pacsman.jobstore import Lease
from pacsman.log import forward
from pacsman.pipeline.nifti import NiftiOptions
from pacsman.pipeline.progress import Tracker, apply
from pacsman.throttle import check_halt

if TYPE_CHECKING:
    from pacsman.push.targets import TargetKind

__all__ = ["SUPERSEDED", "DeidentifyPushProcess", "Request", "read_request"]

#: Events of the stage libraries that the pipeline's own events say again, with the run's
#: counters: logged at debug level only while a run goes on (in both processes).
SUPERSEDED = (
    "scp_started",  # storage_scp_listening says it, with TLS
    "scp_stopped",  # the run's summary
    "anonymize_batch_done",  # series_anonymized says it, per series
    "push_started",  # xnat_import and push_done say it
)

_LENGTH_BYTES = 8
#: Seconds a stopped child (Ctrl-C) has to end before it is killed, and the pipe to drain.
_STOP_SECONDS = 10.0
_DRAIN_SECONDS = 5.0

_log = structlog.get_logger("pacsman.pipeline")
#: The child's program: :func:`pacsman.pipeline.helper.main` (not ``-m``: the package may
#: import the helper module, and runpy warns when it runs a module already imported).
_CHILD = "import sys; from pacsman.pipeline.helper import main; sys.exit(main())"


@dataclass(frozen=True)
class Request:
    """What the de-identify/push process works on: one run of the job store."""

    config: Config
    run_id: int
    out_directory: Path
    #: The head node's lease on the studies to work on (a service job's batch), if any.
    lease: Lease | None = None
    workers: int = 1
    push: TargetKind | None = None
    #: The run's log level (``--log-level`` or ``log.level``): the child logs as the run does.
    log_level: str = "info"
    #: ``--nifti`` (and ``--bids MAP``): convert each de-identified series; None without.
    nifti: NiftiOptions | None = None


def _mapping_proxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


def _pickled(request: Request) -> bytes:
    """``request`` pickled; the config's read-only mappings travel as plain dicts."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    table = copyreg.dispatch_table.copy()
    table[MappingProxyType] = lambda proxy: (_mapping_proxy, (dict(proxy),))
    pickler.dispatch_table = table
    pickler.dump(request)
    return buffer.getvalue()


class DeidentifyPushProcess:
    """The de-identify/push process, seen from the run: start it, announce studies, wait.

    Leaving the block closes the child's stdin (its cue for the last pass) and waits for it;
    leaving it on Ctrl-C stops the child instead.  When the child failed, and the block
    itself did not, :class:`FatalError` is raised with the child's reason; the job store
    keeps everything done so far.  ``tracker`` gets the child's progress counts.
    """

    def __init__(self, request: Request, *, tracker: Tracker | None = None) -> None:
        self._request = request
        self._tracker = tracker
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._report: dict[str, object] = {}
        #: Series de-identified plus experiments pushed by the child (known once it ended).
        self.worked = 0
        self._synced = threading.Event()

    def __enter__(self) -> DeidentifyPushProcess:
        command = [sys.executable, "-c", _CHILD]
        with _sigint_blocked():  # inherited: the terminal's Ctrl-C is the run's to handle
            child = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        self._child = child
        self._reader = threading.Thread(target=self._read, name="pacsman-child-output", daemon=True)
        self._reader.start()
        payload = _pickled(self._request)
        try:
            self._write(len(payload).to_bytes(_LENGTH_BYTES, "big") + payload)
        except BaseException:  # Ctrl-C already: the block's exit will not run
            _stop(child)
            raise
        return self

    def study_complete(self, study_instance_uid: str) -> None:
        """Tell the child that a study is COMPLETE (called from retrieval's worker threads)."""
        self._write(b"study\n")

    def set_lease(self, lease: Lease) -> None:
        """From now on the child works on the studies of ``lease`` (a service job's next
        batch, claimed by the same node)."""
        self._write(f"lease {lease.generation}\n".encode())

    def alive(self) -> bool:
        """Whether the child still works (it ends on ``done``, or on an error)."""
        return self._child is not None and self._child.poll() is None

    def sync(self) -> None:
        """Wait until the child has de-identified and pushed everything announced so far (a
        batch's end); return early when the child ended (leaving the block says why).

        Raises:
            Halted: the job was asked to stop meanwhile.
        """
        self._synced.clear()
        self._write(b"sync\n")
        while not self._synced.wait(0.5):
            check_halt()
            if not self.alive():
                return

    def _write(self, data: bytes) -> None:
        assert self._child is not None
        assert self._child.stdin is not None
        with self._lock, suppress(BrokenPipeError, ValueError):  # ended: __exit__ says why
            self._child.stdin.write(data)
            self._child.stdin.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        child = self._child
        assert child is not None
        assert child.stdin is not None
        draining = isinstance(exc, Halted) and exc.deadline is not None
        if not isinstance(exc, KeyboardInterrupt | Halted) or draining:
            self._write(b"done\n")  # the cue for its last pass
        with self._lock, suppress(BrokenPipeError):
            child.stdin.close()  # without "done": the child ends at once
        if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, Halted) and not draining):
            status = _stop(child)
        elif isinstance(exc, Halted) and exc.deadline is not None:
            status = _wait_until(child, exc.deadline)  # a drain: pushes in flight may finish
        else:
            try:
                status = child.wait()  # its last pass
            except BaseException:  # Ctrl-C meanwhile: no orphan may go on working
                _stop(child)
                raise
        if self._reader is not None:
            # A grandchild left over from a killed child could hold the pipe open for ever.
            self._reader.join(_DRAIN_SECONDS)
        worked = self._report.get("worked", 0)
        self.worked = worked if isinstance(worked, int) else 0
        if status != 0 and exc is None:
            if "lease_lost" in self._report:
                raise LeaseLost(str(self._report["lease_lost"]))
            if "store_lost" in self._report:  # the service waits it out: not a failure
                raise JobStoreConnectionLost(str(self._report["store_lost"]))
            reason = str(self._report.get("error", "")) or "its reason is logged above"
            raise FatalError(
                f"the de-identify/push process stopped (exit {status}): {reason}; "
                "the job store keeps everything done so far"
            )

    def _read(self) -> None:
        """Take the child's output line by line until it closes the pipe."""
        assert self._child is not None
        stdout: IO[bytes] | None = self._child.stdout
        assert stdout is not None
        with stdout:
            for raw in iter(stdout.readline, b""):
                self._take(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def _take(self, line: str) -> None:
        """One line of the child: a log event, progress counts, its report, or other text."""
        record = _json_object(line)
        if record is None:
            if line.strip():  # a library's print, or an unexpected traceback
                _log.warning("deidentify_push_output", line=line)
        elif "event" in record:
            forward(record)
        elif "progress" in record:
            message = record["progress"]
            if self._tracker is not None and isinstance(message, dict):
                apply(self._tracker, message)
        elif isinstance(record.get("report"), dict):
            self._report = record["report"]
        elif record.get("synced"):
            self._synced.set()


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def _wait_until(child: subprocess.Popen[bytes], deadline: float) -> int:
    """Let the child finish its last pass until ``deadline`` (monotonic), then stop it."""
    try:
        return child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return _stop(child)


def _stop(child: subprocess.Popen[bytes]) -> int:
    """Stop the child (SIGTERM ends it without a traceback; SIGKILL if it lingers)."""
    with suppress(ProcessLookupError):
        child.terminate()
    try:
        return child.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block: a process started in it keeps SIGINT
    blocked for good (a Ctrl-C meanwhile still interrupts this process)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the pipeline closed the pipe before the request was complete")
        data += chunk
    return data


def read_request(fd: int) -> Request:
    """The :class:`Request` the pipeline wrote first on the child's stdin (``fd``).

    Raises:
        EOFError: the pipeline ended before it wrote the whole request.
    """
    size = int.from_bytes(_read_exactly(fd, _LENGTH_BYTES), "big")
    request = pickle.loads(_read_exactly(fd, size))  # from our own parent, over a pipe
    if not isinstance(request, Request):
        raise TypeError(f"expected a Request on stdin, got {type(request).__name__}")
    return request
