"""``pacsman dqr``: the command line of :func:`pacsman.dqr.run_dqr`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pacsman.config import load_config
from pacsman.config.options import add_common_options, add_queryfile_options
from pacsman.dqr import DqrOptions, run_dqr
from pacsman.errors import EXIT_OK, EXIT_SOME_FAILED, InputError

__all__ = ["dqr_main"]

_DESCRIPTION = """\
XNAT itself pulls the studies of a query file from a PACS, through its DICOM Query-Retrieve
plugin (DQR), into the project xnat.project: one study per import call, dqr.interval apart, at
most dqr.max_in_flight at XNAT, each followed through XNAT's queue and history (a staleness
timer per status, dqr.stale_after) and verified in the archive on arrival. The same
validation as the main command: Subject/Session become DQR's relabelMap (the mapping table's
labels for rows without). Every step is in the job store: the same command run again resumes.
"""

_EPILOG = """\
states: done (verified), unverified (the session is there; counts unverified: dqr.query xnat),
  partial (fewer files than expected; dqr.replace_partial: true deletes it and asks again),
  failed (with the reason); pending, queued, processing, issued, received while in flight.
exit codes: 0 every row done (counts unverified listed); 1 some rows need attention;
  2 bad input or config, nothing sent; 3 fatal (e.g. XNAT refused DQR for the project: 403);
  130 interrupted: run the same command again to resume."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman dqr",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--queryfile", "-q", type=Path, required=True, help="query file (queryfiles/README.md)"
    )
    add_queryfile_options(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--pacs-id",
        type=int,
        metavar="N",
        help="the PACS by XNAT's id (GET /xapi/pacs; default: dqr.pacs_id, else XNAT's only "
        "PACS or its default query-retrieve PACS)",
    )
    which.add_argument(
        "--pacs-ae",
        metavar="AE",
        help="the PACS by its AE title in XNAT (default: dqr.pacs_ae_title)",
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="also write the info CSV: one line per study with its state and reason "
        "(<store_root>/<query file name>_dqr_info.csv)",
    )
    parser.add_argument(
        "--new-run",
        action="store_true",
        help="start a new run on purpose (the job store's dqr run of this query file is "
        "retired; sessions already complete in XNAT are still skipped)",
    )
    add_common_options(parser)
    return parser


def dqr_main(argv: Sequence[str]) -> int:
    """``pacsman dqr``; returns 0 when every row is done, 1 when some need attention.

    Raises:
        InputError: bad arguments, config or query file (nothing sent).
        FatalError: as :func:`pacsman.dqr.run_dqr`.
    """
    args = _parser().parse_args(list(argv))
    if args.pacs_id is not None and args.pacs_id < 1:
        raise InputError(f"--pacs-id {args.pacs_id}: XNAT's PACS ids start at 1 (GET /xapi/pacs)")
    config = load_config(args.config)
    options = DqrOptions(
        queryfile=args.queryfile,
        pacs_id=args.pacs_id,
        pacs_ae=args.pacs_ae,
        info=args.info,
        new_run=args.new_run,
        sheet=args.sheet,
        encoding=args.encoding,
    )
    summary = run_dqr(options, config)
    print("\n".join(summary.lines()), flush=True)
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED
