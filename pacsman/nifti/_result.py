"""What converting one series gives: an outcome (an enum) and a frozen result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = ["NiftiOutcome", "NiftiResult"]


class NiftiOutcome(StrEnum):
    """How the conversion of one series ended."""

    CONVERTED = "converted"  # NIfTI + sidecars written, slice count and PHI checks passed
    SKIPPED = "skipped"  # no image SOP class (SR, PR, SC, documents...): nothing to convert
    FAILED = "failed"  # dcm2niix failed, or the slice count is wrong: nothing kept
    QUARANTINED = "quarantined"  # a PHI check hit: the outputs are in the quarantine folder


@dataclass(frozen=True)
class NiftiResult:
    """The conversion of one series.

    ``directory`` is ``<out>/nifti/<subject>/<session>/<SeriesNumber>/``, where the outputs
    are when CONVERTED (nothing is left there otherwise); when QUARANTINED it is the
    quarantine folder that holds them, with ``reason.txt``.  ``files`` lists the
    ``.nii.gz``, ``.json`` (and ``.bval``/``.bvec``) files written, sorted; their
    ``provenance.json`` is beside them but not in ``files``.
    """

    outcome: NiftiOutcome
    reason: str  # "" when CONVERTED; otherwise names the series, the value, the rule
    directory: Path
    files: tuple[Path, ...] = ()
    slices: int | None = None  # slices (x volumes) found in the NIfTI(s)
    instances: int = 0  # DICOM instances in the series
