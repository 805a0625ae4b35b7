"""The de-identify/push process: ``python -m pacsman.pipeline.helper``.

Private to :mod:`pacsman.pipeline`, started by
:class:`~pacsman.pipeline.background.DeidentifyPushProcess` (which describes the protocol).
Each study announced on stdin (or several at once) triggers one pass of de-identification;
each study de-identified wakes a push thread, so an experiment travels while the next study
is de-identified.  When stdin closes: a last pass of both, the report line, and exit.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TextIO

import structlog

from pacsman.config import Config
from pacsman.errors import EXIT_FATAL, EXIT_OK, PacsmanError
from pacsman.jobstore import JobStore, Run
from pacsman.log import configure_logging
from pacsman.pipeline.anonymize import anonymize_complete
from pacsman.pipeline.background import Request, read_request
from pacsman.pipeline.push import push_ready_sessions
from pacsman.push import Target, open_target
from pacsman.push.targets import TargetKind

__all__ = ["BackgroundPasses", "main", "xnat_project"]


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

    def __init__(self, work: Callable[[], int]) -> None:
        self._work = work
        self._wake = threading.Event()
        self._closing = self._abandoned = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="pacsman-push", daemon=True)
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

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            last = self._closing
            if self._abandoned:
                return
            try:
                self.worked += self._work()
            except BaseException as exc:  # raised again in the owner's thread
                self._error = exc
                return
            if last:
                return


# -- the child process ------------------------------------------------------------------------


def _wait_for_work(fd: int) -> bool:
    """Block until a study is announced (True) or the pipeline is done (False)."""
    if not os.read(fd, 4096):
        return False
    while select.select([fd], [], [], 0)[0]:  # several studies: one pass for all
        if not os.read(fd, 4096):
            return False
    return True


def _target(config: Config, kind: TargetKind | None) -> AbstractContextManager[Target | None]:
    """One target (one XNAT login) for every pass of this process."""
    return nullcontext() if kind is None else open_target(config, kind=kind)


def main() -> int:
    """De-identify on every announcement and push beside it; once more at the end."""
    report = _private_stdout()
    stdin = sys.stdin.fileno()
    request = read_request(stdin)
    config = request.config
    configure_logging(level=config.log.level, file=config.log.file, console="json")
    structlog.contextvars.bind_contextvars(run_id=request.run_id)
    try:
        with JobStore(config.jobstore) as store, _target(config, request.push) as target:
            worked = _passes(store, store.run_by_id(request.run_id), request, target, stdin)
    except PacsmanError as exc:
        print(f"pacsman (de-identify/push): {exc}", file=sys.stderr)
        print(json.dumps({"error": str(exc)}), file=report, flush=True)
        return EXIT_FATAL
    print(json.dumps({"worked": worked}), file=report, flush=True)  # added to the summary
    return EXIT_OK


def _private_stdout() -> TextIO:
    """Keep stdout (a pipe the pipeline reads only at the end) for the final report alone.

    Anything else written to file descriptor 1, by this process, a library or a worker
    process, goes to stderr: a chatty library could otherwise fill the pipe and block us.
    """
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return report


def _passes(store: JobStore, run: Run, request: Request, target: Target | None, stdin: int) -> int:
    """De-identify on every announcement; push in a thread beside it; return items worked on.

    Each study de-identified wakes the push thread, so pushing study k overlaps
    de-identifying study k+1 instead of waiting for it: a push mostly waits for the target,
    and a real XNAT takes seconds to archive a session.
    """
    config, out, kind = request.config, request.out_directory, request.push
    project = xnat_project(config)

    def push() -> int:
        if kind is None:
            return 0
        return push_ready_sessions(store, run, config, project=project, kind=kind, target=target)

    worked = 0
    with BackgroundPasses(push) as pushing:
        more = True
        while more:
            more = _wait_for_work(stdin)
            worked += anonymize_complete(
                store,
                run,
                config,
                out,
                project=project,
                workers=request.workers,
                on_study_done=pushing.wake,
            )
            pushing.wake()  # a study de-identified by an earlier run
    return worked + pushing.worked  # after the block: the last push pass has ended


if __name__ == "__main__":
    sys.exit(main())
