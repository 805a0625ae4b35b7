"""Standalone emulator for demos: ``python -m pacsman.testing.xnat_emulator --data DIR``.

Prints the URL on the first line of stdout (and, with ``--dqr-pacs``, the DQR receiver as
``dqr-receiver AE@127.0.0.1:PORT`` on the second), then serves until interrupted (Ctrl-C or
SIGTERM).  DQR: ``--dqr-pacs ORTHANC@127.0.0.1:4242`` (repeatable; ids 1, 2, ... in order), then
register the printed receiver at the PACS as a C-MOVE destination.
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

from pacsman.testing.xnat_emulator._dqr_model import DqrPacs
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
    parser.add_argument(
        "--dqr-pacs",
        action="append",
        default=[],
        type=_pacs,
        metavar="AE@HOST:PORT",
        help="a PACS the DQR plugin knows (repeatable; ids from 1 in this order)",
    )
    parser.add_argument(
        "--dqr-receiver-ae", default="XNAT", help="the DQR receiver's AE title (default XNAT)"
    )
    parser.add_argument(
        "--dqr-receiver-port",
        type=int,
        default=0,
        help="the DQR receiver's port on 127.0.0.1 (default 0: OS-chosen, printed)",
    )
    parser.add_argument(
        "--dqr-session-idle",
        type=float,
        default=0.5,
        help="seconds of receiver silence before a session is built (default 0.5)",
    )
    parser.add_argument(
        "--anonymization-script",
        action="append",
        default=[],
        type=_script,
        metavar="PROJECT=FILE",
        help="an enabled anonymization script for a project (repeatable)",
    )
    return parser


def _pacs(text: str) -> DqrPacs:
    ae_title, _, address = text.partition("@")
    host, _, port = address.rpartition(":")
    if not (ae_title and host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(
            f"--dqr-pacs {text!r} is not AE@HOST:PORT; e.g. ORTHANC@127.0.0.1:4242"
        )
    return DqrPacs(ae_title, host, int(port))


def _script(text: str) -> tuple[str, str]:
    project, _, file = text.partition("=")
    if not project or not file:
        raise argparse.ArgumentTypeError(
            f"--anonymization-script {text!r} is not PROJECT=FILE; e.g. P1=anon.das"
        )
    try:
        return project, Path(file).read_text(encoding="utf-8")
    except OSError as problem:
        raise argparse.ArgumentTypeError(
            f"--anonymization-script {text!r}: cannot read {file}: {problem.strerror}"
        ) from problem


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
            dqr_pacs=args.dqr_pacs,
            dqr_receiver_ae_title=args.dqr_receiver_ae,
            dqr_receiver_port=args.dqr_receiver_port,
            dqr_session_idle=args.dqr_session_idle,
            anonymization_scripts=dict(args.anonymization_script),
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
        if args.dqr_pacs:
            receiver = f"{args.dqr_receiver_ae}@127.0.0.1:{emulator.dqr_receiver_port}"
            print(f"dqr-receiver {receiver}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
