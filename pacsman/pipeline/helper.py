"""The later stages (de-identify, push) in a process of their own, beside retrieval.

Private to :mod:`pacsman.pipeline`.  Retrieval is CPU-bound Python (the Storage SCP), and so
is de-identification: in threads of one process they take turns on one core.  This process,
started fresh (``spawn``, never ``fork`` of a process full of network threads), runs on the
other core and shares the job store through SQLite.

Protocol: the parent writes one line to our stdin each time a study becomes complete; each
line (or several at once) triggers one pass of de-identification.  Each study de-identified
wakes a push thread here, so a session travels while the next study is de-identified.  When
stdin closes, we make a last pass of both, print how many items the passes worked on (one
line on stdout), and exit: 0 done, 3 failed (the reason is on stderr).

    python -m pacsman.pipeline.helper CONFIG RUN_ID OUT_DIRECTORY [--push KIND] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TextIO

from pacsman.config import Config, load_config
from pacsman.errors import EXIT_FATAL, EXIT_OK, PacsmanError
from pacsman.jobstore import JobStore, Run
from pacsman.log import configure_logging
from pacsman.pipeline.anonymize import anonymize_complete
from pacsman.pipeline.push import PushInBackground, push_ready_sessions
from pacsman.push import Target, open_target
from pacsman.push.targets import TargetKind

__all__ = ["main"]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pacsman-later-stages")
    parser.add_argument("config", type=Path)
    parser.add_argument("run_id", type=int)
    parser.add_argument("out_directory", type=Path)
    parser.add_argument("--push", choices=("xnat", "dicom", "folder"))
    parser.add_argument("--workers", type=int, default=1)
    return parser.parse_args(argv)


def _wait_for_work() -> bool:
    """Block until a study is announced (True) or the parent is done (False)."""
    line = sys.stdin.readline()
    if not line:
        return False
    while select.select([sys.stdin], [], [], 0)[0]:  # several studies: one pass for all
        if not sys.stdin.readline():
            return False
    return True


def _target(config: Config, kind: TargetKind | None) -> AbstractContextManager[Target | None]:
    """One target (one XNAT login) for every pass of this process."""
    return nullcontext() if kind is None else open_target(config, kind=kind)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the later stages on every announcement, then once more at the end."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    report = _private_stdout()
    config = load_config(args.config)
    configure_logging(level=config.log.level, file=config.log.file, console="json")
    try:
        with JobStore(config.jobstore) as store, _target(config, args.push) as target:
            worked = _passes(store, store.run_by_id(args.run_id), config, args, target)
    except PacsmanError as exc:
        print(f"pacsman (later stages): {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(worked, file=report, flush=True)  # the parent adds it to the run's summary
    return EXIT_OK


def _private_stdout() -> TextIO:
    """Keep stdout (a pipe the parent reads only at the end) for the final count alone.

    Anything else written to file descriptor 1, by this process, a library or a worker
    process, goes to stderr: a chatty library could otherwise fill the pipe and block us.
    """
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return report


def _passes(
    store: JobStore, run: Run, config: Config, args: argparse.Namespace, target: Target | None
) -> int:
    """De-identify on every announcement; push in a thread beside it; return items worked on.

    Each study de-identified wakes the push thread, so pushing study k overlaps
    de-identifying study k+1 instead of waiting for it: a push mostly waits for the target,
    and a real XNAT takes seconds to archive a session.
    """
    out, kind = args.out_directory, args.push

    def push() -> int:
        if kind is None:
            return 0
        return push_ready_sessions(store, run, config, out, kind=kind, target=target)

    worked = 0
    with PushInBackground(push) as pushing:
        more = True
        while more:
            more = _wait_for_work()
            worked += anonymize_complete(
                store, run, config, out, workers=args.workers, on_study_done=pushing.wake
            )
            pushing.wake()  # a study de-identified by an earlier run, or by the parent
    return worked + pushing.worked  # after the block: the last push pass has ended


if __name__ == "__main__":
    sys.exit(main())
