"""Payloads in PixelData and encapsulated documents (issue 11, items 5 and 6)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from pacsman.anonymize import Deidentifier, Encapsulated, load_profile, quarantine_dir
from pacsman.anonymize.batch import EngineSpec, Outcome, Task, deidentify_files
from pacsman.config import load_config
from pacsman.errors import ConfigError
from tests.helpers import write_config
from tests.test_anonymize_engine import KEY, NAME, make_instance, run, write

#: A real 8x8 baseline JPEG (DCMTK dcmcjpeg), with its JFIF APP0.
JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805"
    "050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f17181614"
    "1812141514ffc0000b080008000801011100ffc40014000100000000000000000000000000000007ffc4"
    "001910000105000000000000000000000000000005082432a2ffda0008010100003f00264464958183ff"
    "ffd9"
)


@pytest.fixture
def engine() -> Deidentifier:
    """The built-in default profile, project TEST."""
    return Deidentifier(load_profile(None), key=KEY, project="TEST")


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _pixels(values: list[int], *, signed: bool = False) -> dict[str, object]:
    data = np.array([v & 0xFFFF for v in values], dtype=np.uint16).tobytes()
    return {"PixelData": data, "PixelRepresentation": int(signed), "Rows": 2, "Columns": 2}


def test_embedded_overlay_bits_are_cleared(engine: Deidentifier, tmp_path: Path) -> None:
    """Bits above HighBit (a retired embedded overlay) are cleared; pixel values stay."""
    ds = make_instance(**_pixels([0x1001, 0x0FFF, 0xF000, 0x0000]))
    ds.add_new(0x60000102, "US", 12)  # OverlayBitPosition: the plane lives in PixelData
    out = run(engine, ds, tmp_path)
    assert np.frombuffer(out.PixelData, "<u2").tolist() == [0x0001, 0x0FFF, 0x0000, 0x0000]


def test_signed_pixels_keep_their_sign_extension(engine: Deidentifier, tmp_path: Path) -> None:
    """Signed 12-bit pixels stored sign-extended are already clean and stay byte for byte;
    an overlay bit in a sign-extended value is replaced by the sign."""
    clean = make_instance(**_pixels([-1, -2048, 2047, 0], signed=True))
    assert run(engine, clean, tmp_path / "a").PixelData == clean.PixelData
    dirty = make_instance(**_pixels([0x1005, 0xEFFE, 7, 0], signed=True))
    values = np.frombuffer(run(engine, dirty, tmp_path / "b").PixelData, "<i2").tolist()
    assert values == [5, -2, 7, 0]


def _jpeg_instance(frame: bytes, **extra: object) -> Dataset:
    ds = make_instance(**extra)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.Rows, ds.Columns = 8, 8, 7, 8, 8
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BurnedInAnnotation = "NO"
    return ds


def test_jpeg_app_and_com_segments_are_stripped(engine: Deidentifier, tmp_path: Path) -> None:
    """Exif (APP1), APP7 and COM go; JFIF and the entropy-coded data stay byte for byte."""
    planted = _segment(0xE1, b"Exif\0\0" + NAME.encode()) + _segment(0xFE, b"Josephine")
    planted += _segment(0xE7, b"operator")
    frame = JPEG[:20] + planted + JPEG[20:]
    out = run(engine, _jpeg_instance(frame), tmp_path)
    (stripped,) = generate_frames(out.PixelData, number_of_frames=1)
    assert stripped.rstrip(b"\0") == JPEG


def test_jpeg_2000_comments_are_stripped(engine: Deidentifier, tmp_path: Path) -> None:
    """COM markers go from the main header and from tile-part headers (Psot adjusted)."""
    siz = _segment(0x51, bytes(36))
    comment = _segment(0x64, b"\0\1" + NAME.encode())
    body = b"\xff\x93" + b"\x12\x34\x56\x78"
    header = siz + comment
    tile = _segment(0x90, b"\0\0" + struct.pack(">I", 12 + len(comment) + len(body)) + b"\0\1")
    frame = b"\xff\x4f" + header + tile + comment + body + b"\xff\xd9"
    ds = _jpeg_instance(frame)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    out = run(engine, ds, tmp_path)
    (stripped,) = generate_frames(out.PixelData, number_of_frames=1)
    expected_tile = _segment(0x90, b"\0\0" + struct.pack(">I", 12 + len(body)) + b"\0\1")
    assert stripped.rstrip(b"\0") == b"\xff\x4f" + siz + expected_tile + body + b"\xff\xd9"


def test_unparsable_frame_is_quarantined(engine: Deidentifier, tmp_path: Path) -> None:
    """A frame whose markers cannot be followed cannot be shown clean: quarantined."""
    src = write(_jpeg_instance(b"\x00\x01not a jpeg\xff\xd9"), tmp_path / "in" / "a.dcm")
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert result.quarantined
    assert (result.reason or "").startswith("pixel data: JPEG metadata cannot be stripped")


def _pdf(sop: str = "1.2.826.0.1.3680043.8.498.1099") -> Dataset:
    ds = make_instance(sop, SOPClassUID="1.2.840.10008.5.1.4.1.1.104.1", Modality="DOC")
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    document = b"%PDF-1.4 /Author (" + NAME.encode() + b") %%EOF\n"
    ds.EncapsulatedDocument = document
    ds.EncapsulatedDocumentLength = len(document)
    ds.MIMETypeOfEncapsulatedDocument, ds.DocumentTitle = "application/pdf", NAME
    ds.BurnedInAnnotation = "YES"
    return ds


def test_encapsulated_document_left_out_by_default(engine: Deidentifier, tmp_path: Path) -> None:
    """Nothing is written (an earlier copy is removed); the reason names the kind only."""
    src = write(_pdf(), tmp_path / "in" / "doc.dcm")
    out = tmp_path / "out"
    stale = out / f"{engine.remap_uid('1.2.826.0.1.3680043.8.498.1099')}.dcm"
    out.mkdir()
    stale.write_bytes(b"stale")
    result = engine.deidentify_file(src, out, subject="S01", session="E01")
    assert (result.left_out, result.quarantined, result.path) == (True, False, stale)
    assert result.reason == (
        "encapsulated document (Encapsulated PDF Storage) left out: its content cannot be "
        "checked for PHI; set anonymization.encapsulated: quarantine to hold the session "
        "for review instead"
    )
    assert list(out.iterdir()) == []


def test_encapsulated_document_quarantined_on_request(tmp_path: Path) -> None:
    """With ``quarantine``, the document is held whole, its lengths agree with it, and the
    Type 2 DocumentTitle is emptied, not dropped."""
    engine = Deidentifier(
        load_profile(None), key=KEY, project="TEST", encapsulated=Encapsulated.QUARANTINE
    )
    source = _pdf()
    src = write(source, tmp_path / "in" / "doc.dcm")
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert result.quarantined
    assert result.path.parent == quarantine_dir(tmp_path / "out")
    assert "encapsulated document (Encapsulated PDF Storage) held for review" in (
        result.reason or ""
    )
    held = dcmread(result.path)
    assert held.EncapsulatedDocumentLength == len(source.EncapsulatedDocument)
    assert held.EncapsulatedDocument.startswith(b"%PDF")
    assert held.DocumentTitle == ""


def test_a_left_out_document_does_not_hold_the_batch(tmp_path: Path) -> None:
    """In a batch, the document is LEFT_OUT (with its reason) and the images are written."""
    image = write(make_instance(), tmp_path / "in" / "image.dcm")
    document = write(_pdf(), tmp_path / "in" / "doc.dcm")
    spec = EngineSpec(load_profile(None), KEY, "TEST")
    tasks = [Task(path, "S01", "E01") for path in (image, document)]
    summary = deidentify_files(tasks, tmp_path / "out", spec=spec)
    assert (summary.written, summary.count(Outcome.LEFT_OUT)) == (1, 1)
    assert summary.count(Outcome.QUARANTINED) == 0


def test_config_key_encapsulated(tmp_path: Path) -> None:
    """``anonymization.encapsulated`` is omit (default) or quarantine; anything else is
    refused with the key and the choices."""
    default = load_config(write_config(tmp_path, port=104, called_ae_title="PACS"))
    assert default.anonymization.encapsulated == "omit"
    chosen = write_config(
        tmp_path,
        port=104,
        called_ae_title="PACS",
        extra="anonymization:\n  encapsulated: quarantine\n",
    )
    assert load_config(chosen).anonymization.encapsulated == "quarantine"
    assert Encapsulated(load_config(chosen).anonymization.encapsulated) is Encapsulated.QUARANTINE
    wrong = write_config(
        tmp_path, port=104, called_ae_title="PACS", extra="anonymization:\n  encapsulated: keep\n"
    )
    with pytest.raises(ConfigError, match=r"anonymization.encapsulated"):
        load_config(wrong)
