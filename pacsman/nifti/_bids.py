"""The BIDS folder: converted series placed by the mapping's rules, never guessed.

``<bids>/sub-<subject>/ses-<session>/<datatype>/sub-<subject>_ses-<session>[_task-t][_acq-a]
[_dir-d][_run-N]_<suffix>.nii.gz`` (+ ``.json``, and ``.bval``/``.bvec`` for dwi), hard-linked
to the series' outputs (copied across file systems); labels keep only BIDS alphanumerics
(``P_0001`` -> ``P0001``).  When two series of a session map to the same name, each gets
``run-<N>`` in SeriesNumber order.  A series no rule matches is listed, not placed.
``dataset_description.json`` is written once at the root.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pacsman import __version__
from pacsman.layout import private_directory
from pacsman.nifti import _dcm2niix
from pacsman.nifti._bids_rules import BidsMapping, BidsRule, bids_mapping
from pacsman.nifti._place import write_json
from pacsman.nifti._result import NiftiOutcome, NiftiResult

__all__ = [
    "BidsMapping",
    "BidsPlacement",
    "BidsRule",
    "BidsSeries",
    "bids_label",
    "bids_mapping",
    "bids_path",
    "write_bids",
]

BIDS_VERSION = "1.10.0"
_NOT_LABEL = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True)
class BidsSeries:
    """A converted series to place: its number, de-identified description and result."""

    series_number: str
    series_description: str
    result: NiftiResult


@dataclass(frozen=True)
class BidsPlacement:
    """What :func:`write_bids` did with a session's series."""

    placed: tuple[tuple[str, Path], ...] = ()  # (SeriesNumber, the .nii.gz in the BIDS tree)
    unmatched: tuple[tuple[str, str], ...] = ()  # (SeriesNumber, SeriesDescription)
    not_placed: tuple[tuple[str, str], ...] = ()  # (SeriesNumber, why)


def bids_label(text: str) -> str:
    """``text`` with only BIDS label characters (letters, digits); ``"x"`` if none is left."""
    return _NOT_LABEL.sub("", text) or "x"


def bids_path(
    mapping: BidsMapping,
    bids_root: Path,
    *,
    subject: str,
    session: str,
    series_description: str,
    run: int | None = None,
) -> Path | None:
    """The ``.nii.gz`` path the mapping gives a series; ``None`` when no rule matches."""
    rule = mapping.match(series_description)
    return None if rule is None else _path(rule, bids_root, subject, session, run)


def _path(rule: BidsRule, root: Path, subject: str, session: str, run: int | None) -> Path:
    sub, ses = f"sub-{bids_label(subject)}", f"ses-{bids_label(session)}"
    parts = [sub, ses]
    for key in ("task", "acq", "dir"):
        value = getattr(rule, key)
        if value is not None:
            parts.append(f"{key}-{value}")
    if run is not None:
        parts.append(f"run-{run}")
    name = "_".join([*parts, rule.suffix]) + ".nii.gz"
    return root / sub / ses / rule.datatype / name


def _number_key(number: str) -> tuple[int, str]:
    return (int(number), number) if number.isdigit() else (1 << 30, number)


def write_bids(
    mapping: BidsMapping,
    bids_root: Path,
    *,
    subject: str,
    session: str,
    series: Sequence[BidsSeries],
) -> BidsPlacement:
    """Place every CONVERTED series of one session (call it once per session, with all
    of its series, so that ``run-<N>`` numbering sees them all).

    Raises:
        OSError: a file cannot be linked or copied.
    """
    groups: dict[Path, list[tuple[BidsSeries, BidsRule]]] = defaultdict(list)
    unmatched, not_placed = [], []
    for one in sorted(series, key=lambda s: _number_key(s.series_number)):
        if one.result.outcome is not NiftiOutcome.CONVERTED:
            continue
        rule = mapping.match(one.series_description)
        images = [f for f in one.result.files if f.name.endswith(".nii.gz")]
        if rule is None:
            unmatched.append((one.series_number, one.series_description))
        elif len(images) != 1:
            why = f"rule {rule.number} matched, but dcm2niix wrote {len(images)} NIfTI files"
            not_placed.append((one.series_number, why + " (echoes, parts); place them by hand"))
        else:
            groups[_path(rule, bids_root, subject, session, None)].append((one, rule))
    placed = []
    for group in groups.values():
        for index, (one, rule) in enumerate(group, start=1):
            run = index if len(group) > 1 else None
            target = _path(rule, bids_root, subject, session, run)
            _place(one.result.files, target)
            placed.append((one.series_number, target))
    if placed:
        _describe(bids_root)
    return BidsPlacement(tuple(placed), tuple(unmatched), tuple(not_placed))


def _place(files: tuple[Path, ...], target: Path) -> None:
    """Link (else copy) the NIfTI and its companions to ``target`` and its siblings."""
    private_directory(target.parent)
    stem = target.name.removesuffix(".nii.gz")
    for source in files:
        suffix = ".nii.gz" if source.name.endswith(".nii.gz") else source.suffix
        _link(source, target.with_name(stem + suffix))


def _link(source: Path, destination: Path) -> None:
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
        os.chmod(destination, 0o600)


def _describe(root: Path) -> None:
    path = root / "dataset_description.json"
    if path.exists():
        return
    write_json(
        path,
        {
            "Name": "pacsman NIfTI export",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": [
                {"Name": "pacsman", "Version": __version__},
                {"Name": "dcm2niix", "Version": _dcm2niix.version()},
            ],
        },
    )
