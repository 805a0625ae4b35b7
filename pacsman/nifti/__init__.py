"""NIfTI conversion of de-identified DICOM series with dcm2niix (from its PyPI wheel), and an
optional BIDS folder driven by a small mapping file.

Typical use, once per de-identified series::

    result = convert_series(series_dir, out_root, subject="P_0001", session="P_0001_MR1",
                            series_number="2", originals=originals)
    if result.outcome is NiftiOutcome.CONVERTED: ...push result.files...

The command line (``pacsman nifti IN_DIR OUT_DIR [--bids MAP] [--originals RAW_DIR]``) is
:mod:`.cli`; the example mapping file is ``config/bids-mapping.example.yaml``.
"""

from pacsman.nifti._bids import (
    BidsMapping,
    BidsPlacement,
    BidsRule,
    BidsSeries,
    bids_mapping,
    bids_path,
    write_bids,
)
from pacsman.nifti._convert import convert_series
from pacsman.nifti._dcm2niix import version as dcm2niix_version
from pacsman.nifti._place import PROVENANCE_FILE, nifti_directory
from pacsman.nifti._result import NiftiOutcome, NiftiResult
from pacsman.nifti._sop import convertible
from pacsman.nifti._walk import raw_originals

__all__ = [
    "PROVENANCE_FILE",
    "BidsMapping",
    "BidsPlacement",
    "BidsRule",
    "BidsSeries",
    "NiftiOutcome",
    "NiftiResult",
    "bids_mapping",
    "bids_path",
    "convert_series",
    "convertible",
    "dcm2niix_version",
    "nifti_directory",
    "raw_originals",
    "write_bids",
]
