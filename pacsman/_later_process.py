"""The later stages (de-identify, push) in a process of their own, beside retrieval.

Private to :mod:`pacsman.pipeline`.  Retrieval is CPU-bound Python (the Storage SCP), and so
is de-identification: in threads of one process they take turns on one core.  This process,
started fresh (``spawn``, never ``fork`` of a process full of network threads), runs on the
other core and shares the job store through SQLite.

Protocol: the parent writes one line to our stdin each time a study becomes complete; each
line (or several at once) triggers one pass of the stages.  When stdin closes, we make a last
pass and exit: 0 done, 3 failed (the reason is on stderr).

    python -m pacsman._later_process CONFIG RUN_ID OUT_DIRECTORY [--push KIND] [--workers N]
"""

from __future__ import annotations

import argparse
import select
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pacsman._pipeline_anonymize import anonymize_complete
from pacsman._pipeline_push import push_ready_sessions
from pacsman.config import Config, load_config
from pacsman.errors import EXIT_FATAL, EXIT_OK, PacsmanError
from pacsman.jobstore import JobStore
from pacsman.log import configure_logging
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
    config = load_config(args.config)
    configure_logging(level=config.log.level, file=config.log.file, console="json")
    try:
        with JobStore(config.jobstore) as store, _target(config, args.push) as target:
            run = store.run_by_id(args.run_id)
            more = True
            while more:
                more = _wait_for_work()
                anonymize_complete(store, run, config, args.out_directory, workers=args.workers)
                if args.push is not None:
                    push_ready_sessions(
                        store, run, config, args.out_directory, kind=args.push, target=target
                    )
    except PacsmanError as exc:
        print(f"pacsman (later stages): {exc}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
