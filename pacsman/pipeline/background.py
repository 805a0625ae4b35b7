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
time a study becomes complete.  When stdin closes, the child makes a last pass, writes one
JSON line on its stdout (``{"worked": N}`` or ``{"error": "..."}``) and exits: 0 done, 3
failed.  Whatever stopped the child, the run then fails with a
:class:`~pacsman.errors.FatalError` that gives the reason.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import select
import subprocess
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any

from pacsman.config import Config
from pacsman.errors import FatalError
from pacsman.push.targets import TargetKind

__all__ = ["DeidentifyPushProcess", "Request", "read_request"]

_LENGTH_BYTES = 8


@dataclass(frozen=True)
class Request:
    """What the de-identify/push process works on: one run of the job store."""

    config: Config
    run_id: int
    out_directory: Path
    workers: int = 1
    push: TargetKind | None = None


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

    Leaving the block closes the child's stdin (its cue for the last pass) and waits for it.
    When the child failed, and the block itself did not, :class:`FatalError` is raised with
    the child's reason; the job store keeps everything done so far.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        #: Series de-identified plus experiments pushed by the child (known once it ended).
        self.worked = 0

    def __enter__(self) -> DeidentifyPushProcess:
        command = [sys.executable, "-m", "pacsman.pipeline.helper"]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._child = child
        payload = _pickled(self._request)
        self._write(len(payload).to_bytes(_LENGTH_BYTES, "big") + payload)
        return self

    def study_complete(self, study_instance_uid: str) -> None:
        """Tell the child that a study is COMPLETE (called from retrieval's worker threads)."""
        self._write(b"study\n")

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
        assert child.stdout is not None
        with self._lock, suppress(BrokenPipeError):
            child.stdin.close()
        status = child.wait()
        report = _last_report(child.stdout)
        worked = report.get("worked", 0)
        self.worked = worked if isinstance(worked, int) else 0
        if status != 0 and exc is None:
            reason = str(report.get("error", "")) or "its reason is logged above"
            raise FatalError(
                f"the de-identify/push process stopped (exit {status}): {reason}; "
                "the job store keeps everything done so far"
            )


def _last_report(stdout: IO[bytes]) -> dict[str, object]:
    """The JSON line an exited child wrote last on its stdout (``{}`` if none).

    Only what is already in the pipe is read, never up to end-of-file: a grandchild left over
    from a child that was killed could hold the pipe open for ever.
    """
    fd, data = stdout.fileno(), b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    stdout.close()
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


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
