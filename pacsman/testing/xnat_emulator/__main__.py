"""Standalone emulator for demos: ``python -m pacsman.testing.xnat_emulator --data DIR``.

Prints the URL on the first line of stdout, then serves until interrupted (Ctrl-C or SIGTERM).
Faults can be set at start with flags, or later with
``curl -u admin:secret -X PUT -d '{"latency": 0.5}' <url>/data/_emulator/faults``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pacsman.testing.xnat_emulator._emulator import XnatEmulator

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xnat-emulator", description="Serve an XNAT 1.8.9.1 emulator on 127.0.0.1."
    )
    parser.add_argument("--data", type=Path, required=True, help="directory for state and files")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: OS-chosen)")
    parser.add_argument("--user", default="admin", help="login user (default admin)")
    parser.add_argument("--password", default="secret", help="login password (default secret)")
    parser.add_argument(
        "--project", action="append", default=[], help="create this project (repeatable)"
    )
    parser.add_argument(
        "--lenient-labels",
        action="store_true",
        help="rewrite odd labels like XNAT's importer instead of answering 417",
    )
    parser.add_argument(
        "--faults",
        default="{}",
        help='initial fault switches as JSON, e.g. \'{"latency": 0.2, "accept_then_fail": 1}\'',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        faults = json.loads(args.faults)
        if not isinstance(faults, dict):
            raise ValueError("--faults must be a JSON object")
        emulator = XnatEmulator(
            args.data,
            users={args.user: args.password},
            projects=args.project,
            strict_labels=not args.lenient_labels,
            port=args.port,
        )
        emulator.faults.update(faults)
    except ValueError as problem:
        print(f"xnat-emulator: {problem}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with emulator:
        print(emulator.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
