"""``pacsman nifti``: convert a folder of de-identified DICOM to NIfTI, thin wiring over
:func:`~pacsman.nifti.convert_series`.

    pacsman nifti IN_DIR OUT_DIR [--bids MAP] [--originals RAW_DIR] [--timeout SECONDS]

IN_DIR is walked for DICOM files; every one must be de-identified (PatientIdentityRemoved
YES), else nothing is converted.  Series are grouped by SeriesInstanceUID and written to
``OUT_DIR/nifti/<subject>/<session>/<SeriesNumber>/``; ``--bids`` also fills
``OUT_DIR/bids/``.  Exit codes: 0 every series converted or skipped; 1 some failed or were
quarantined; 2 bad arguments or input; 3 the dcm2niix wheel is missing.  Nothing printed
names a patient: labels, series numbers, de-identified descriptions, outcomes, reasons.
"""

from __future__ import annotations

import argparse
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pacsman.anonymize import Originals
from pacsman.config.options import add_common_options
from pacsman.errors import EXIT_OK, InputError, ItemFailed
from pacsman.nifti._bids import BidsPlacement, BidsSeries, write_bids
from pacsman.nifti._bids_rules import BidsMapping, bids_mapping
from pacsman.nifti._convert import convert_series
from pacsman.nifti._place import NIFTI_DIRECTORY, QUARANTINE_DIRECTORY, scratch_parent
from pacsman.nifti._result import NiftiOutcome, NiftiResult
from pacsman.nifti._walk import Series, find_series, raw_originals, stage

__all__ = ["nifti_main"]

BIDS_DIRECTORY = "bids"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman nifti",
        description="Convert every de-identified DICOM series under IN_DIR to NIfTI + BIDS "
        "sidecar with dcm2niix (-z y -b y -ba y), check the slice count and the sidecars "
        "for PHI, into OUT_DIR/nifti/<subject>/<session>/<SeriesNumber>/.",
        epilog="Exit codes: 0 all converted or skipped, 1 some failed or quarantined "
        "(OUT_DIR/nifti-quarantine), 2 bad input, 3 dcm2niix missing.",
    )
    parser.add_argument("in_dir", type=Path, metavar="IN_DIR", help="de-identified DICOM")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder")
    parser.add_argument(
        "--bids",
        type=Path,
        metavar="MAP",
        help="BIDS mapping YAML (see config/bids-mapping.example.yaml): also write OUT_DIR/bids",
    )
    parser.add_argument(
        "--originals",
        type=Path,
        metavar="RAW_DIR",
        help="the identified DICOM the input came from: the sidecars are leak-checked "
        "against its names, IDs and dates too",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="stop dcm2niix on a series after this long (default 600)",
    )
    add_common_options(parser)
    return parser


def _checked(args: argparse.Namespace) -> tuple[Path, Path]:
    """IN_DIR and OUT_DIR, expanded and checked (nothing is created here).

    Raises:
        InputError: IN_DIR is no folder, OUT_DIR is a file or IN_DIR itself, or the timeout
            is not positive.
    """
    in_dir, out_dir = args.in_dir.expanduser(), args.out_dir.expanduser()
    if not in_dir.is_dir():
        raise InputError(f"IN_DIR {in_dir}: not a folder; give the folder of de-identified DICOM")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"OUT_DIR {out_dir}: exists and is not a folder; give a folder")
    if out_dir.resolve() == in_dir.resolve():
        raise InputError(f"OUT_DIR {out_dir} is IN_DIR; give a separate output folder")
    if not args.timeout > 0:
        raise InputError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    return in_dir, out_dir


def nifti_main(argv: list[str]) -> int:
    """``pacsman nifti``; returns the exit code.

    Raises:
        InputError: bad arguments, an invalid mapping file, no DICOM or identified DICOM.
        ItemFailed: some series failed or were quarantined (the table says which and why).
        FatalError: the dcm2niix wheel is missing.
    """
    args = _parser().parse_args(argv)
    in_dir, out_dir = _checked(args)
    mapping = bids_mapping(args.bids.expanduser()) if args.bids else None
    outputs = [out_dir / NIFTI_DIRECTORY, out_dir / QUARANTINE_DIRECTORY, out_dir / BIDS_DIRECTORY]
    series = find_series(in_dir, excluded=[p.resolve() for p in outputs])
    originals = raw_originals(args.originals.expanduser()) if args.originals else None
    results = [_convert(one, out_dir, originals, args.timeout) for one in series]
    _print_table(series, results)
    if mapping is not None:
        _print_bids(_bids(mapping, out_dir / BIDS_DIRECTORY, series, results))
    return _exit_code(results)


def _convert(
    series: Series, out_dir: Path, originals: Originals | None, timeout: float
) -> NiftiResult:
    folder = stage(series, scratch_parent(out_dir))
    try:
        return convert_series(
            folder,
            out_dir,
            subject=series.subject,
            session=series.session,
            series_number=series.series_number,
            originals=originals,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(folder)


def _print_table(series: Sequence[Series], results: Sequence[NiftiResult]) -> None:
    rows = [
        (f"{s.subject}/{s.session}/{s.series_number}", r.outcome.value, str(len(r.files)), r.reason)
        for s, r in zip(series, results, strict=True)
    ]
    header = ("series", "outcome", "files", "reason")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]).rstrip())


def _bids(
    mapping: BidsMapping, root: Path, series: Sequence[Series], results: Sequence[NiftiResult]
) -> BidsPlacement:
    sessions: dict[tuple[str, str], list[BidsSeries]] = defaultdict(list)
    for one, result in zip(series, results, strict=True):
        entry = BidsSeries(one.series_number, one.series_description, result)
        sessions[(one.subject, one.session)].append(entry)
    placed, unmatched, not_placed = [], [], []
    for (subject, session), entries in sessions.items():
        done = write_bids(mapping, root, subject=subject, session=session, series=entries)
        placed += [(f"{subject}/{session}/{n}", p) for n, p in done.placed]
        unmatched += [(f"{subject}/{session}/{n}", d) for n, d in done.unmatched]
        not_placed += [(f"{subject}/{session}/{n}", w) for n, w in done.not_placed]
    return BidsPlacement(tuple(placed), tuple(unmatched), tuple(not_placed))


def _print_bids(placement: BidsPlacement) -> None:
    print(f"BIDS: {len(placement.placed)} series placed")
    for name, path in placement.placed:
        print(f"  {name} -> {path}")
    if placement.unmatched:
        print(f"BIDS: {len(placement.unmatched)} series matched no rule (not placed):")
        for name, description in placement.unmatched:
            print(f"  {name} SeriesDescription {description!r}")
    for name, why in placement.not_placed:
        print(f"BIDS: {name} not placed: {why}")


def _exit_code(results: Sequence[NiftiResult]) -> int:
    failed = sum(r.outcome is NiftiOutcome.FAILED for r in results)
    held = sum(r.outcome is NiftiOutcome.QUARANTINED for r in results)
    if failed or held:
        converted = sum(r.outcome is NiftiOutcome.CONVERTED for r in results)
        raise ItemFailed(
            f"{failed} series failed, {held} quarantined, {converted} converted: quarantined "
            "outputs must not be used or pushed; see the reasons above"
        )
    return EXIT_OK
