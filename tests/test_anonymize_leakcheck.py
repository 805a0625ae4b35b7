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
    assert placeholder.name_parts == {"Li"}  # two letters count; placeholders do not


def test_private_tag_added_after_is_caught(clean: tuple[Path, Originals]) -> None:
    """An identifier in a private element re-added after de-identification is a finding."""
    path, originals = clean

    def add_private(ds: Dataset) -> None:
        block = ds.private_block(0x0041, "SNEAKY", create=True)
        block.add_new(0x01, "LO", f"id {MRN}")

    _rewrite(path, add_private)
    findings = leak_check(path, originals)
    assert findings[0].startswith(
        "patient ID or accession number found in element (0041,1001) private "
    )


def test_file_meta_is_checked(clean: tuple[Path, Originals]) -> None:
    """A name part in the file meta (SourceApplicationEntityTitle) is a finding."""
    path, originals = clean
    _rewrite(path, lambda ds: setattr(ds.file_meta, "SourceApplicationEntityTitle", "JOSEPHINE"))
    findings = leak_check(path, originals)
    assert findings[0].startswith(
        "patient name part found in file meta element (0002,0016) SourceApplicationEntityTitle"
    )


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
    where = "(0008,1110)[0].(0008,1115)[0].(0008,1199)[0].(0008,1155) ReferencedSOPInstanceUID"
    assert f"original UID found in element {where} (as a whole UID)" in leak_check(path, originals)


def test_raw_bytes_are_checked(clean: tuple[Path, Originals]) -> None:
    """Bytes no element shows (here the preamble) are scanned too."""
    path, originals = clean
    data = bytearray(path.read_bytes())
    data[0:8] = BIRTH.encode()
    path.write_bytes(bytes(data))
    assert leak_check(path, originals) == [
        "birth date found in the raw bytes near offset 0 (as a date in a written form; "
        "read as ASCII)"
    ]


def test_bulk_data_is_not_searched(clean: tuple[Path, Originals]) -> None:
    """Pixel data (OB/OW) is the engine's to clear (overlay bits, JPEG segments): the
    leak check reads text, not bulk bytes, where short names occur by chance."""
    path, _ = clean
    originals = Originals(name_parts=frozenset({"Ann"}), ids=frozenset({MRN}))
    _rewrite(path, lambda ds: setattr(ds, "PixelData", b" Ann " + MRN.encode() + bytes(497)))
    assert leak_check(path, originals) == []


def test_text_in_the_files_character_set(tmp_path: Path) -> None:
    """A Japanese name is found in decoded text, whatever the encoding (ISO 2022 IR 87)."""
    originals = Originals.from_dataset(_source(PatientName="Yamada^Tarou=山田^太郎"))
    ds = _source(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="S01")
    ds.StudyDescription = "山田 CT"
    ds.PatientName = "S01"
    path = tmp_path / "jp.dcm"
    ds.save_as(path, enforce_file_format=True)
    findings = leak_check(path, originals)
    assert any(f.startswith("patient name part found in element (0008,1030)") for f in findings)


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


# -- its own matcher: spellings, encodings, written dates, IDs, defined terms -------------


def _findings_for(tmp_path: Path, originals: Originals, **values: object) -> list[str]:
    values = {"SpecificCharacterSet": "ISO_IR 192"} | values  # UTF-8 unless said otherwise
    ds = _source(PatientName="S01", PatientID="S01", **values)
    for keyword in ("PatientBirthDate", "AccessionNumber", "InstitutionName"):
        delattr(ds, keyword)
    path = tmp_path / "planted.dcm"
    ds.save_as(path, enforce_file_format=True)
    return leak_check(path, originals)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Dvořák^Zoë", "follow-up Dvorak2"),  # glued to a digit, accents off
        ("Dvořák^Zoë", "ZoeDvorak protocol"),  # camel case
        ("García-López^María", "LOPEZ head"),  # one part of a compound surname
        ("Müller^Hans", "Mueller knee"),  # German transliteration
        ("Mueller^Hans", "Müller knee"),  # ... the other way round
        ("Müller^Hans", "Mu\u0308ller knee"),  # NFD-decomposed
        ("Li^Wei", "Li2 series"),  # a two-letter surname, glued to a digit
        ("Li^Wei", "scan LI"),
        ("Øvergård^Søren", "SOEREN"),  # Scandinavian spelling
        ("Иванов^Пётр", "Ivanov"),  # Cyrillic in Latin letters
    ],
)
def test_name_spellings_are_found(tmp_path: Path, name: str, text: str) -> None:
    """A name part is found as a whole token in every usual spelling."""
    originals = Originals.from_dataset(_source(PatientName=name))
    findings = _findings_for(tmp_path, originals, SeriesDescription=text)
    assert findings[0].startswith("patient name part found in element (0008,103E)"), findings
    assert "whole word" in findings[0]
    assert text.split()[0] not in findings[0]  # the reason never quotes the value


@pytest.mark.parametrize("text", ["SLICE thickness", "Lithium", "oblique"])
def test_short_name_parts_need_a_whole_token(tmp_path: Path, text: str) -> None:
    """``LI`` is not found inside ``SLICE``: tokens split at non-letters, digits and case."""
    originals = Originals.from_dataset(_source(PatientName="Li^Wei"))
    assert _findings_for(tmp_path, originals, SeriesDescription=text) == []


def test_utf8_inside_a_latin1_file(tmp_path: Path) -> None:
    """UTF-8 bytes in a Latin-1 file (read as ``MÃ¼ller``) are found parsed and raw."""
    originals = Originals.from_dataset(_source(PatientName="Müller^Hans"))
    mojibake = "Müller".encode().decode("latin-1")
    findings = _findings_for(
        tmp_path, originals, SpecificCharacterSet="ISO_IR 100", SeriesDescription=f"knee {mojibake}"
    )
    assert findings[0].startswith("patient name part found in element (0008,103E)")
    assert any("read as non-ASCII text" in finding for finding in findings[1:])


@pytest.mark.parametrize(
    "text",
    ["born 17-Mar-1950", "dob 17.03.1950", "March 17, 1950", "1950/03/17", "17MAR50", "3/17/1950"],
)
def test_birth_date_in_written_forms(tmp_path: Path, text: str) -> None:
    """The birth date is found in the usual written forms, not only as YYYYMMDD."""
    originals = Originals.from_dataset(_source())
    findings = _findings_for(tmp_path, originals, ImageComments=text)
    assert findings[0].startswith("birth date found in element (0020,4000) ImageComments")


def test_alternative_calendar_birth_date(tmp_path: Path) -> None:
    """A birth date in an alternative calendar is looked for as it was written."""
    originals = Originals.from_dataset(_source(PatientBirthDateInAlternativeCalendar="1369-06-26"))
    findings = _findings_for(tmp_path, originals, ImageComments="born 13690626 (hijri)")
    assert findings[0].startswith("birth date found in element (0020,4000)")


@pytest.mark.parametrize(
    "text", ["MRN 4711235", "id MRN-4711-235", "mrn4711235", "pat 000 4711 235", "#0004711235"]
)
def test_ids_with_and_without_separators(tmp_path: Path, text: str) -> None:
    """IDs are found without their separators, prefix or leading zeros."""
    originals = Originals.from_dataset(_source(PatientID="MRN-0004711235"))
    findings = _findings_for(tmp_path, originals, ImageComments=text)
    assert findings[0].startswith("patient ID or accession number found in element (0020,4000)")


def test_defined_terms_are_not_leaks(tmp_path: Path) -> None:
    """A patient named HEAD: BodyPartExamined HEAD and (69536005, SCT, Head) are words of
    the standard, parsed and raw; the same word in a description is a finding."""
    originals = Originals.from_dataset(_source(PatientName="HEAD^Thomas"))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "69536005", "SCT", "Head"
    clean = {"BodyPartExamined": "HEAD", "AnatomicRegionSequence": [code]}
    assert _findings_for(tmp_path, originals, **clean) == []
    findings = _findings_for(tmp_path, originals, SeriesDescription="HEAD routine", **clean)
    assert len(findings) == 1
    assert findings[0].startswith("patient name part found in element (0008,103E) Series")


def test_a_local_code_meaning_is_not_exempt(tmp_path: Path) -> None:
    """Only a standard code with its standard meaning is exempt."""
    originals = Originals.from_dataset(_source(PatientName="HEAD^Thomas"))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "H1", "99LOCAL", "Head"
    findings = _findings_for(tmp_path, originals, AnatomicRegionSequence=[code])
    assert findings[0].startswith(
        "patient name part found in element (0008,2218)[0].(0008,0104) CodeMeaning"
    )


def test_raw_check_lowercases_any_script(tmp_path: Path) -> None:
    """Bytes no element shows are read in every encoding and lower-cased, ASCII or not."""
    originals = Originals.from_dataset(_source(PatientName="Øvergård^Søren"))
    path = tmp_path / "raw.dcm"
    ds = _source(PatientName="S01", PatientID="S01")
    for keyword in ("PatientBirthDate", "AccessionNumber", "InstitutionName"):
        delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)
    data = bytearray(path.read_bytes())
    data[0:10] = "ØVERGÅRD".encode()
    path.write_bytes(bytes(data))
    findings = leak_check(path, originals)
    assert findings == [
        "patient name part found in the raw bytes near offset 0 (as a whole word after "
        "folding case, accents and spelling; read as non-ASCII text in iso8859-1, utf-8)"
    ]


def test_id_written_with_the_zeros_the_original_lacks(tmp_path: Path) -> None:
    """An SR that stores 959763 for 00-095-9763: the description's ``00 095 9763`` is it."""
    originals = Originals.from_dataset(_source(PatientID="959763"))
    findings = _findings_for(tmp_path, originals, ImageComments="MRN 00 095 9763")
    assert findings[0].startswith("patient ID or accession number found in element (0020,4000)")
