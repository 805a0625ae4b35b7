"""The leak check catches planted PHI: private tags, file meta, deep sequences, raw bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pacsman.anonymize import Deidentifier, Originals, leak_check, load_profile

KEY = b"\x07" * 32
NAME, MRN, BIRTH = "Vandenberghe^Josephine", "MRN4711235", "19500317"
STUDY_UID = "1.2.826.0.1.3680043.8.498.2001"


def _source(**extra: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.8.498.1001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, "1.2.826.0.1.3680043.8.498.3001"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, MRN, BIRTH
    ds.AccessionNumber, ds.InstitutionName = "ACC99887766", "Sint-Elisabeth Ziekenhuis"
    ds.Modality, ds.Rows, ds.Columns, ds.BitsAllocated = "CT", 16, 16, 16
    ds.PixelData = bytes(512)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def clean(tmp_path: Path) -> tuple[Path, Originals]:
    """A de-identified file that passed the leak check, and the source's originals."""
    engine = Deidentifier(load_profile(None), key=KEY, project="LEAK")
    src = tmp_path / "src.dcm"
    _source().save_as(src, enforce_file_format=True)
    originals = engine.deidentify_dataset(dcmread(src), subject="S01", session="E01")
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert not result.quarantined
    assert leak_check(result.path, originals) == []
    return result.path, originals


def _rewrite(path: Path, change: object) -> Dataset:
    ds = dcmread(path)
    change(ds)  # type: ignore[operator]
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_originals_collected_with_sensible_minimums() -> None:
    """Name parts, IDs, birth date, institution; placeholders and short values are skipped."""
    originals = Originals.from_dataset(_source(OtherPatientIDs=["12345", "H-778899"]))
    assert originals.name_parts == {"Vandenberghe", "Josephine"}
    assert originals.ids == {MRN, "ACC99887766", "H-778899"}
    assert originals.dates == {BIRTH}
    placeholder = Originals.from_dataset(_source(PatientName="ANONYMIZED^Li"))
    assert placeholder.name_parts == frozenset()


def test_private_tag_added_after_is_caught(clean: tuple[Path, Originals]) -> None:
    """An identifier in a private element re-added after de-identification is a finding."""
    path, originals = clean

    def add_private(ds: Dataset) -> None:
        block = ds.private_block(0x0041, "SNEAKY", create=True)
        block.add_new(0x01, "LO", f"id {MRN}")

    _rewrite(path, add_private)
    findings = leak_check(path, originals)
    assert "patient ID or accession number found in element (0041,1001)" in findings


def test_file_meta_is_checked(clean: tuple[Path, Originals]) -> None:
    """A name part in the file meta (SourceApplicationEntityTitle) is a finding."""
    path, originals = clean
    _rewrite(path, lambda ds: setattr(ds.file_meta, "SourceApplicationEntityTitle", "JOSEPHINE"))
    findings = leak_check(path, originals)
    assert "patient name part found in file meta element (0002,0016)" in findings


def test_deep_sequence_and_original_uid_are_caught(clean: tuple[Path, Originals]) -> None:
    """An original UID three sequence levels down is found, with its path."""
    path, originals = clean

    def plant(ds: Dataset) -> None:
        leaf = Dataset()
        leaf.ReferencedSOPInstanceUID = STUDY_UID
        middle, top = Dataset(), Dataset()
        middle.ReferencedSOPSequence = [leaf]
        top.ReferencedSeriesSequence = [middle]
        ds.ReferencedStudySequence = [top]

    _rewrite(path, plant)
    where = "(0008,1110)[0].(0008,1115)[0].(0008,1199)[0].(0008,1155)"
    assert f"original UID found in element {where}" in leak_check(path, originals)


def test_raw_bytes_are_checked(clean: tuple[Path, Originals]) -> None:
    """Bytes no element shows (here the preamble) are scanned too."""
    path, originals = clean
    data = bytearray(path.read_bytes())
    data[0:8] = BIRTH.encode()
    path.write_bytes(bytes(data))
    assert leak_check(path, originals) == ["birth date found in the raw bytes at offset 0"]


def test_pixel_data_only_searched_for_long_terms(clean: tuple[Path, Originals]) -> None:
    """A short name part in pixel bytes is chance; a full patient ID there is a finding."""
    path, _ = clean
    originals = Originals(name_parts=frozenset({"Ann"}), ids=frozenset({MRN}))
    _rewrite(path, lambda ds: setattr(ds, "PixelData", b" Ann " + bytes(507)))
    assert leak_check(path, originals) == []
    _rewrite(path, lambda ds: setattr(ds, "PixelData", b" " + MRN.encode() + bytes(501)))
    offset = path.read_bytes().find(MRN.encode())
    expected = f"patient ID or accession number found in the raw bytes at offset {offset}"
    assert leak_check(path, originals) == [expected]


def test_text_in_the_files_character_set(tmp_path: Path) -> None:
    """A Japanese name is found in decoded text, whatever the encoding (ISO 2022 IR 87)."""
    originals = Originals.from_dataset(_source(PatientName="Yamada^Tarou=山田^太郎"))
    ds = _source(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="S01")
    ds.StudyDescription = "山田 CT"
    ds.PatientName = "S01"
    path = tmp_path / "jp.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "patient name part found in element (0008,1030)" in leak_check(path, originals)


def test_engine_quarantines_a_leak(tmp_path: Path) -> None:
    """A kept attribute that holds the patient ID fails the check and is quarantined."""
    profile_path = tmp_path / "keep.yaml"
    profile_path.write_text("overrides: {ImageComments: keep}\n", encoding="utf-8")
    engine = Deidentifier(load_profile(profile_path), key=KEY, project="LEAK")
    src = tmp_path / "src.dcm"
    _source(ImageComments=f"see {MRN}").save_as(src, enforce_file_format=True)
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert result.quarantined
    assert result.reason is not None
    assert result.reason.startswith("leak check: patient ID or accession number found in")
    assert MRN not in result.reason
