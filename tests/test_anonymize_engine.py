"""The de-identification engine on synthetic instances: walk, relabel, UIDs, dates, flags."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import structlog
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundImageStorage

from pacsman.anonymize import (
    AnonymizeResult,
    Deidentifier,
    InstanceFailed,
    Profile,
    load_profile,
    quarantine_dir,
)
from pacsman.anonymize.engine import IMPLEMENTATION_CLASS_UID
from pacsman.errors import InputError, ItemFailed

KEY = bytes(range(32))
NAME, MRN, BIRTH, ACCESSION = "Vandenberghe^Josephine", "MRN4711235", "19500317", "ACC99887766"
STUDY_UID = "1.2.826.0.1.3680043.8.498.2001"


def make_instance(sop_uid: str = "1.2.826.0.1.3680043.8.498.1001", **extra: object) -> Dataset:
    """A small CT instance full of identifying values."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3001"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.4001"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, MRN, BIRTH
    ds.PatientSex, ds.PatientAge = "F", "095Y"
    ds.AccessionNumber, ds.StudyID = ACCESSION, "4711"
    ds.InstitutionName = "Sint-Elisabeth Ziekenhuis"
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20230105", "20230105", "20230107"
    ds.StudyTime, ds.AcquisitionDateTime = "101500", "20230105102000.5+0100"
    ds.Modality, ds.Manufacturer = "CT", "ACME"
    ds.SeriesDescription = "Thorax Vandenberghe 20230105 run 12345678"
    ds.StudyDescription = "CT thorax for Josephine"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "JOSEPHINE_PC"
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a DICOM file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def profile_from(tmp_path: Path, text: str) -> Profile:
    """Load a profile from YAML ``text``."""
    path = tmp_path / "profile.yaml"
    path.write_text(text, encoding="utf-8")
    return load_profile(path)


@pytest.fixture
def engine() -> Deidentifier:
    """The built-in default profile, project TEST."""
    return Deidentifier(load_profile(None), key=KEY, project="TEST")


def run(engine: Deidentifier, ds: Dataset, tmp_path: Path, subject: str = "S01") -> Dataset:
    """De-identify ``ds`` through a file and read the result back."""
    src = write(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm")
    result = engine.deidentify_file(src, tmp_path / "out", subject=subject, session="E01")
    assert result.quarantined is False, result.reason
    return dcmread(result.path)


def test_relabel_flags_and_file_meta(engine: Deidentifier, tmp_path: Path) -> None:
    """Patient is the subject, StudyID the session; flags, codes and file meta are set."""
    out = run(engine, make_instance(), tmp_path)
    assert (out.PatientName, out.PatientID, out.StudyID, out.AccessionNumber) == (
        "S01",
        "S01",
        "E01",
        "",
    )
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "2024b+2026c" in out.DeidentificationMethod[0]
    meta = out.file_meta
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert "SourceApplicationEntityTitle" not in meta
    assert out.preamble == b"\0" * 128
    assert out.PixelData == make_instance().PixelData


def test_uids_are_keyed_consistent_and_stable_across_runs(tmp_path: Path) -> None:
    """Same key -> same UIDs across files and new engines; another key -> other UIDs."""
    profile = load_profile(None)
    first = Deidentifier(profile, key=KEY, project="TEST")
    a = run(first, make_instance("1.2.826.0.1.3680043.8.498.1001"), tmp_path / "a")
    a_src_uid = "1.2.826.0.1.3680043.8.498.1001"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, a_src_uid
    b_src = make_instance("1.2.826.0.1.3680043.8.498.1002", ReferencedImageSequence=[ref])
    b = run(first, b_src, tmp_path / "b")
    again = run(Deidentifier(profile, key=KEY, project="TEST"), make_instance(), tmp_path / "c")
    other = run(Deidentifier(profile, key=b"x" * 32, project="TEST"), make_instance(), tmp_path)
    assert a.StudyInstanceUID == b.StudyInstanceUID == again.StudyInstanceUID
    assert a.SOPInstanceUID == again.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert other.StudyInstanceUID != a.StudyInstanceUID
    assert a.StudyInstanceUID.startswith("2.25.")
    assert len(a.StudyInstanceUID) <= 64
    assert a_src_uid not in {a.SOPInstanceUID, b.SOPInstanceUID}
    assert a.SOPClassUID == CTImageStorage


def test_dates_shift_per_subject_and_keep_intervals(engine: Deidentifier, tmp_path: Path) -> None:
    """Dates move by the subject's keyed shift; intervals and times are preserved."""
    later = make_instance("1.2.826.0.1.3680043.8.498.1009", StudyDate="20230204")
    first, second = run(engine, make_instance(), tmp_path), run(engine, later, tmp_path)
    shift = engine.date_shift("S01")
    assert shift != 0
    assert abs(shift) <= 365
    as_date = date.fromisoformat
    moved = as_date(_iso(first.StudyDate)) - as_date("2023-01-05")
    assert moved.days == shift
    assert (as_date(_iso(second.StudyDate)) - as_date(_iso(first.StudyDate))).days == 30
    assert (as_date(_iso(first.ContentDate)) - as_date(_iso(first.StudyDate))).days == 2
    assert first.AcquisitionDateTime[8:] == "102000.5+0100"
    assert first.StudyTime == "101500"
    assert first.PatientBirthDate == ""
    assert engine.date_shift("S01") == Deidentifier(
        load_profile(None), key=KEY, project="TEST"
    ).date_shift("S01")


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


@pytest.mark.parametrize(
    ("options", "study_date", "flag"),
    [
        ("[retain_longitudinal_full_dates]", "20230105", "UNMODIFIED"),
        ("[]", "", "REMOVED"),
    ],
)
def test_date_options_keep_or_remove(
    tmp_path: Path, options: str, study_date: str, flag: str
) -> None:
    """Full dates keep them; neither option empties StudyDate (basic profile Z)."""
    engine = Deidentifier(profile_from(tmp_path, f"options: {options}\n"), key=KEY, project="T")
    out = run(engine, make_instance(), tmp_path)
    assert out.StudyDate == study_date
    assert out.LongitudinalTemporalInformationModified == flag


def _nested(depth: int, leaf: Dataset) -> Dataset:
    item = leaf
    for _ in range(depth):
        outer = Dataset()
        outer.ValueType = "CONTAINER"
        outer.ContentSequence = [item]
        item = outer
    return item


def test_nested_sequences_at_every_depth(engine: Deidentifier, tmp_path: Path) -> None:
    """Names, UIDs and dates four levels down are handled like top-level ones."""
    leaf = Dataset()
    leaf.PersonName = NAME
    leaf.UID = "1.2.826.0.1.3680043.8.498.5001"
    leaf.Date = "20230105"
    leaf.ExtendedCodeMeaning = f"free text about {MRN}"
    root = _nested(4, leaf)
    out = run(engine, make_instance(ContentSequence=root.ContentSequence), tmp_path)
    deep = out.ContentSequence[0].ContentSequence[0].ContentSequence[0].ContentSequence[0]
    assert deep.PersonName == "ANONYMIZED"
    assert engine.remap_uid("1.2.826.0.1.3680043.8.498.5001") == deep.UID
    assert deep.Date == out.StudyDate  # shifted like StudyDate
    assert "ExtendedCodeMeaning" not in deep  # unlisted free text (LT) is removed


def _private_block(ds: Dataset, group: int, creator: str) -> None:
    ds.add_new((group << 16) | 0x0010, "LO", creator)
    ds.add_new((group << 16) | 0x1010, "LO", MRN)
    ds.add_new((group << 16) | 0x1011, "DS", "2.5")
    inner = Dataset()
    inner.PatientName = NAME
    inner.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.6001"
    ds.add_new((group << 16) | 0x1012, "SQ", Sequence([inner]))


def test_private_tags_removed_by_default(engine: Deidentifier, tmp_path: Path) -> None:
    """Private elements, private sequences and orphans are all removed."""
    ds = make_instance()
    _private_block(ds, 0x0029, "ACME 1.0")
    ds.add_new(0x00331005, "LO", MRN)  # orphan: no private creator
    out = run(engine, ds, tmp_path)
    assert not [element.tag for element in out if element.tag.is_private]


def test_private_allow_list_keeps_listed_elements_only(tmp_path: Path) -> None:
    """Retain Safe Private keeps listed (group, creator, offset) and walks kept sequences."""
    profile = profile_from(
        tmp_path,
        "options: [retain_safe_private, retain_longitudinal_modified_dates]\n"
        "private_tags:\n"
        "  - {group: '0029', creator: 'ACME 1.0', element: '11'}\n"
        "  - {group: '0029', creator: 'ACME 1.0', element: '12'}\n"
        "  - {group: '0033', creator: 'ACME 1.0', element: '05'}\n",
    )
    ds = make_instance()
    _private_block(ds, 0x0029, "ACME 1.0")
    ds.add_new(0x00331005, "LO", "orphan value")
    out = run(Deidentifier(profile, key=KEY, project="T"), ds, tmp_path)
    kept = sorted(element.tag for element in out if element.tag.is_private)
    assert kept == [0x00290010, 0x00291011, 0x00291012]
    inner = out[0x00291012].value[0]
    assert "PatientName" not in inner or inner.PatientName != NAME
    assert inner.ReferencedSOPInstanceUID.startswith("2.25.")
    assert "Option.RETAIN_SAFE_PRIVATE" not in str(out.DeidentificationMethodCodeSequence)
    assert "113111" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_un_elements_parsed_with_the_dictionary_or_removed(
    engine: Deidentifier, tmp_path: Path
) -> None:
    """A known attribute stored as UN is handled by its real VR; an unknown one is removed."""
    ds = make_instance()
    ds.add_new(0x00081070, "UN", b"Operator^Name ")  # OperatorsName, X/Z/D -> dummy
    ds.add_new(0x00181030, "UN", b"protocol " + MRN.encode() + b" ")  # ProtocolName, X/D
    ds.add_new(0x00660FFE, "UN", MRN.encode())  # unknown public tag
    out = run(engine, ds, tmp_path)
    assert out.OperatorsName == "ANONYMIZED"
    assert out.ProtocolName == "ANONYMIZED"
    assert 0x00660FFE not in out


def test_unlisted_free_text_removed_and_codes_kept(engine: Deidentifier, tmp_path: Path) -> None:
    """LT/ST/UT/UC/PN not in the table are removed; coded and numeric values stay."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    ds = make_instance(AnatomicRegionSequence=[code], SecondaryReviewerName="Dr^Who")
    ds.CodingSchemeName = "some text"
    out = run(engine, ds, tmp_path)
    assert "SecondaryReviewerName" not in out
    assert "CodingSchemeName" not in out
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert out.Manufacturer == "ACME"


def test_descriptors_cleaned_or_removed(engine: Deidentifier, tmp_path: Path) -> None:
    """Default: SeriesDescription is scrubbed of identifiers; StudyDescription removed."""
    out = run(engine, make_instance(), tmp_path)
    assert out.SeriesDescription == "Thorax run"
    assert "StudyDescription" not in out


def test_overlays_and_curves_removed_whole(engine: Deidentifier, tmp_path: Path) -> None:
    """Overlay groups go entirely with their data; curve groups go too."""
    ds = make_instance()
    ds.add_new(0x60000010, "US", 2)
    ds.add_new(0x60000011, "US", 2)
    ds.add_new(0x60000022, "LO", "overlay label")
    ds.add_new(0x60003000, "OW", b"\xff\x00")
    ds.add_new(0x50000005, "US", 1)
    out = run(engine, ds, tmp_path)
    assert not [e.tag for e in out if e.tag.group in (0x5000, 0x6000)]


def test_patient_characteristics_cap_age(tmp_path: Path) -> None:
    """Retain Patient Characteristics keeps sex and age, with ages over 89 capped at 090Y."""
    profile = profile_from(tmp_path, "options: [retain_patient_characteristics]\n")
    out = run(Deidentifier(profile, key=KEY, project="T"), make_instance(), tmp_path)
    assert (out.PatientSex, out.PatientAge) == ("F", "090Y")


def test_override_replace_keep_and_remove(tmp_path: Path) -> None:
    """Per-tag overrides win over the table."""
    profile = profile_from(
        tmp_path,
        "overrides:\n  InstitutionName: {replace: SITE-A}\n  Manufacturer: remove\n"
        "  StudyDescription: keep\n",
    )
    ds = make_instance(StudyDescription="CT thorax")
    out = run(Deidentifier(profile, key=KEY, project="T"), ds, tmp_path)
    assert out.InstitutionName == "SITE-A"
    assert "Manufacturer" not in out
    assert out.StudyDescription == "CT thorax"


def test_atomic_output_named_by_new_uid(engine: Deidentifier, tmp_path: Path) -> None:
    """The output is <new SOPInstanceUID>.dcm and no temporary file is left."""
    src = write(make_instance(), tmp_path / "in" / "Vandenberghe.dcm")
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert result.path.name == f"{result.sop_instance_uid}.dcm"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [result.path.name]


def test_bad_input_and_labels_fail_clearly(engine: Deidentifier, tmp_path: Path) -> None:
    """A non-DICOM file fails the item; an invalid label is an input error."""
    junk = tmp_path / "junk.txt"
    junk.write_text("not dicom", encoding="utf-8")
    with pytest.raises(ItemFailed, match=r"junk.txt: .*not a composite instance|cannot read"):
        engine.deidentify_file(junk, tmp_path / "out", subject="S01", session="E01")
    src = write(make_instance(), tmp_path / "in" / "a.dcm")
    with pytest.raises(InputError, match=r"subject label 'S 01' is not valid; use 1-64"):
        engine.deidentify_file(src, tmp_path / "out", subject="S 01", session="E01")


def test_logs_are_events_without_phi(engine: Deidentifier, tmp_path: Path) -> None:
    """One (debug) event per file; no name, ID, accession or source path in any log entry."""
    src = write(make_instance(), tmp_path / "in" / "Vandenberghe_MRN4711235.dcm")
    saved = structlog.get_config()
    structlog.reset_defaults()  # whatever level an earlier test configured
    try:
        with structlog.testing.capture_logs() as logs:
            engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    finally:
        structlog.configure(**saved)
    assert [entry["event"] for entry in logs] == ["anonymize_written"]
    text = repr(logs)
    assert not any(secret in text for secret in ("Vandenberghe", MRN, ACCESSION, STUDY_UID))


# -- burned-in quarantine -----------------------------------------------------------------


def _deidentify(engine: Deidentifier, ds: Dataset, tmp_path: Path) -> AnonymizeResult:
    src = write(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm")
    return engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"Modality": "US", "SOPClassUID": UltrasoundImageStorage}, "ultrasound image"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "OT"}, "secondary capture"),
        ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation is YES"),
        ({"Modality": "CR"}, "BurnedInAnnotation is absent in modality 'CR'"),
    ],
)
def test_burned_in_risk_is_quarantined(
    engine: Deidentifier, tmp_path: Path, extra: dict[str, str], reason: str
) -> None:
    """Risky images go to <out>.quarantine with a reason file, never to the output."""
    result = _deidentify(engine, make_instance(**extra), tmp_path)
    assert result.quarantined is True
    assert reason in (result.reason or "")
    assert result.path.parent == quarantine_dir(tmp_path / "out")
    note = result.path.with_name(result.path.name + ".reason.txt")
    assert reason in note.read_text(encoding="utf-8")
    assert not (tmp_path / "out" / result.path.name).exists()


def test_burned_in_accepted_by_profile_or_flagged_no(tmp_path: Path) -> None:
    """Accepted modalities and CR with BurnedInAnnotation NO are written; stale copies go."""
    engine = Deidentifier(load_profile(None), key=KEY, project="T")
    held = _deidentify(engine, make_instance(Modality="US"), tmp_path)
    assert held.quarantined
    accepting = profile_from(tmp_path, "burned_in: {accept: [US]}\n")
    ok = _deidentify(
        Deidentifier(accepting, key=KEY, project="T"), make_instance(Modality="US"), tmp_path
    )
    assert not ok.quarantined
    assert not held.path.exists()
    flagged = make_instance(
        "1.2.826.0.1.3680043.8.498.1077", Modality="CR", BurnedInAnnotation="NO"
    )
    assert not _deidentify(engine, flagged, tmp_path).quarantined


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on writing the bad source
def test_a_uid_that_is_a_path_fails_the_item(tmp_path: Path) -> None:
    """Kept UIDs name the output file: one that is not digits and dots is refused."""
    engine = Deidentifier(profile_from(tmp_path, "options: [retain_uids]\n"), key=KEY, project="T")
    src = write(make_instance("../../escaped"), tmp_path / "in" / "a.dcm")
    with pytest.raises(InstanceFailed, match=r"a.dcm: its SOPInstanceUID is not a valid UID"):
        engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert not list(tmp_path.rglob("*escaped*"))
