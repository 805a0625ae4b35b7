"""The fast path agrees with pydicom: reading, encoding, and the leak check without a re-parse.

The engine reads the data set with pydicom's ``read_dataset`` after splitting the file meta
itself, encodes once with its own writer (raw elements copied through), and leak-checks
the data set it holds plus the exact bytes.  Each is compared here with the slow path it
replaces, on pydicom's own test files and on planted leaks.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsman.anonymize import Deidentifier, Originals, leak_check_bytes, leak_check_dataset
from pacsman.anonymize._encode import MismatchedEncoding, encode_fast, encode_pydicom
from pacsman.anonymize._read import read_instance
from pacsman.anonymize._stamp import transfer_syntax
from pacsman.anonymize.profile import load_profile

ROOT = Path(DATA_ROOT)
FILES = sorted(ROOT.glob("test_files/*.dcm")) + sorted(ROOT.glob("charset_files/*.dcm"))
NAME, MRN = "Vandenberghe^Josephine", "MRN4711235"


def _instance(syntax: str = ExplicitVRLittleEndian, **extra: object) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.8.498.1001"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2001"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, MRN, "19500317"
    ds.Modality, ds.BurnedInAnnotation = "CT", "NO"
    ds.Rows, ds.Columns, ds.BitsAllocated = 16, 16, 16
    ds.add_new(0x7FE00010, "OW", bytes(range(256)) * 2)  # PixelData
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def _deidentified(data: bytes, profile: str | None = None) -> tuple[Dataset, Originals]:
    engine = Deidentifier(load_profile(None), key=b"q" * 32, project="FAST")
    ds = read_instance(data)
    return ds, engine.deidentify_dataset(ds, subject="S01", session="E01")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("src", FILES, ids=[f.name for f in FILES])
def test_reader_matches_dcmread(src: Path) -> None:
    """read_instance gives the elements and values dcmread(force=True) gives."""
    data = src.read_bytes()
    fast, slow = read_instance(data), dcmread(io.BytesIO(data), force=True)
    assert sorted(fast.keys()) == sorted(slow.keys())
    for tag in fast.keys():  # noqa: SIM118 (tags)
        assert fast[tag].value == slow[tag].value


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("src", FILES, ids=[f.name for f in FILES])
def test_writer_matches_pydicom(src: Path) -> None:
    """encode_fast writes what pydicom's save_as writes, element for element."""
    source = read_instance(src.read_bytes())
    if "SOPInstanceUID" not in source or "SOPClassUID" not in source:
        pytest.skip("not a composite instance: the engine does not de-identify it")
    ds, _ = _deidentified(src.read_bytes())
    try:
        fast = encode_fast(copy.deepcopy(ds), transfer_syntax(ds))
    except MismatchedEncoding:
        pytest.skip("big endian, deflate or mixed encoding: pydicom writes it")
    slow = encode_pydicom(copy.deepcopy(ds))
    ours, theirs = dcmread(io.BytesIO(fast.data)), dcmread(io.BytesIO(slow.data))
    assert ours.file_meta == theirs.file_meta
    assert ours == theirs
    for start, end in fast.binary or ():
        assert fast.data[start:end]  # every binary range is real bytes of the file


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_binary_ranges_locate_the_pixel_data(syntax: str) -> None:
    """The recorded range of Pixel Data is exactly where its bytes are."""
    ds, _ = _deidentified(_instance(syntax))
    encoded = encode_fast(ds, syntax)
    pixels = bytes(range(256)) * 2
    start = encoded.data.find(pixels)
    assert encoded.binary is not None
    assert (start, start + len(pixels)) in encoded.binary


def _planted_item() -> Sequence:
    item = Dataset()
    item.add_new(0x00291010, "LO", f"see {MRN}")
    item.add_new(0x00290010, "LO", "ACME 1.0")
    return Sequence([item])


PLANTS = {
    "clean": lambda ds: None,
    "kept private element": lambda ds: ds.add_new(0x00091010, "LO", f"id {MRN}"),
    "nested private": lambda ds: ds.add_new(0x00082218, "SQ", _planted_item()),
    "file meta": lambda ds: setattr(ds.file_meta, "ImplementationVersionName", "Josephine"),
    "description": lambda ds: setattr(ds, "SeriesDescription", "Vandenberghe knee"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_dataset_check_agrees_with_the_reparse(plant: str) -> None:
    """Findings on the held data set + bytes equal the findings after parsing the bytes."""
    ds, originals = _deidentified(_instance())
    PLANTS[plant](ds)
    encoded = encode_fast(ds, ExplicitVRLittleEndian)
    assert encoded.binary is not None
    fast = leak_check_dataset(ds, encoded.data, encoded.binary, originals)
    assert fast == leak_check_bytes(encoded.data, originals)
    assert bool(fast) is (plant != "clean")
