"""Code sequences, attributes outside Table E.1-1, SR content by concept, UN private
sequences, Type 1/2 attributes and quarantine reasons (issue 11, items 1, 2, 4, 7, 8, 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacsman.anonymize import Deidentifier, MappingTable, load_profile
from tests.test_anonymize_engine import KEY, MRN, NAME, make_instance, profile_from, run, write


@pytest.fixture
def engine() -> Deidentifier:
    """The built-in default profile, project TEST."""
    return Deidentifier(load_profile(None), key=KEY, project="TEST")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def test_d_code_sequences_become_one_dummy_item(engine: Deidentifier, tmp_path: Path) -> None:
    """InstitutionCodeSequence (X/Z/D) and, inside OperatorIdentificationSequence (X/D),
    PersonIdentificationCodeSequence (D) hold one dummy code: nothing of theirs is kept."""
    person = Dataset()
    person.PersonIdentificationCodeSequence = [_code("E-4711", "99HR", "Jansen, Pieter")]
    person.InstitutionName = "Sint-Elisabeth Ziekenhuis"
    person.PersonAddress = "Kerkstraat 1"
    ds = make_instance(
        InstitutionCodeSequence=[_code("SEZ", "99LOCAL", "Sint-Elisabeth Ziekenhuis")],
        OperatorIdentificationSequence=[person],
    )
    out = run(engine, ds, tmp_path)
    dummy = ("ANONYMIZED", "99PACSMAN", "ANONYMIZED")
    (institution,) = out.InstitutionCodeSequence
    assert (institution.CodeValue, institution.CodingSchemeDesignator) == dummy[:2]
    (operator,) = out.OperatorIdentificationSequence
    (code,) = operator.PersonIdentificationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == dummy
    assert operator.InstitutionName == "ANONYMIZED"
    assert "PersonAddress" not in operator


def test_standard_codes_kept_local_codes_dummied(engine: Deidentifier, tmp_path: Path) -> None:
    """A standard code keeps its value and gets the standard meaning; a local code (or one
    that names the patient) becomes the dummy code, so Type 1 code attributes stay."""
    ds = make_instance(
        AnatomicRegionSequence=[_code("69536005", "SCT", "Head of Vandenberghe")],
        ProcedureCodeSequence=[_code("CT7", "99ORDERS", "CT for Josephine")],
        RequestedProcedureCodeSequence=[_code(MRN, "DCM", "named by its ID")],
    )
    out = run(engine, ds, tmp_path)
    anatomy = out.AnatomicRegionSequence[0]
    assert (anatomy.CodeValue, anatomy.CodingSchemeDesignator, anatomy.CodeMeaning) == (
        "69536005",
        "SCT",
        "Head",
    )
    for keyword in ("ProcedureCodeSequence", "RequestedProcedureCodeSequence"):
        item = out[keyword][0]
        assert (item.CodeValue, item.CodingSchemeDesignator) == ("ANONYMIZED", "99PACSMAN")


def test_issuer_qualifiers_are_cleaned(engine: Deidentifier, tmp_path: Path) -> None:
    """IssuerOfPatientIDQualifiersSequence (outside the table) keeps no identity: the
    HL7v2 designators (Type 1C) are dummies, local jurisdiction codes dummied."""
    facility = Dataset()
    facility.LocalNamespaceEntityID = "Sint-Elisabeth"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = "urn:oid:1.2.3", "ISO"
    qualifiers.AssigningFacilitySequence = [facility]
    qualifiers.AssigningJurisdictionCodeSequence = [_code("BE", "99STATE", "Sint-Elisabeth")]
    out = run(engine, make_instance(IssuerOfPatientIDQualifiersSequence=[qualifiers]), tmp_path)
    item = out.IssuerOfPatientIDQualifiersSequence[0]
    assert item.UniversalEntityID == "ANONYMIZED"
    assert item.AssigningFacilitySequence[0].LocalNamespaceEntityID == "ANONYMIZED"
    assert item.AssigningJurisdictionCodeSequence[0].CodeMeaning == "ANONYMIZED"


def test_outside_the_table_removed_emptied_or_kept(engine: Deidentifier, tmp_path: Path) -> None:
    """Text, date and time attributes outside the table go; Type 2 ones stay empty; the
    keep-list stays; Type 1 ones are cleaned and never left empty."""
    ds = make_instance(
        PatientBirthDateInAlternativeCalendar="1369-06-26",
        RetrieveURL="https://pacs.example/wado?name=Vandenberghe",
        AcquisitionProtocolName="Josephine knee",
        ContentDescription="for Vandenberghe",
        ContentLabel="VANDENBERGHE",
        ConvolutionKernel="B30f",
        SecondaryReviewDate="20230105",
    )
    out = run(engine, ds, tmp_path)
    for keyword in (
        "PatientBirthDateInAlternativeCalendar",
        "RetrieveURL",
        "AcquisitionProtocolName",
        "SecondaryReviewDate",
    ):
        assert keyword not in out, keyword
    assert out.ContentDescription == ""  # Type 2
    assert out.ContentLabel == "ANONYMIZED"  # Type 1: cleaned, nothing left, a dummy
    assert (out.ConvolutionKernel, out.Manufacturer) == ("B30f", "ACME")  # keep-list


def test_type_2_attributes_are_emptied_not_dropped(engine: Deidentifier, tmp_path: Path) -> None:
    """RequestedProcedureID (table X) is Type 2 in an SR's Referenced Request Sequence."""
    request = Dataset()
    request.RequestedProcedureID = "RP" + MRN
    request.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2001"
    out = run(engine, make_instance(ReferencedRequestSequence=[request]), tmp_path)
    assert out.ReferencedRequestSequence[0].RequestedProcedureID == ""


def _item(value_type: str, code: tuple[str, str, str], **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    item.ConceptNameCodeSequence = [_code(*code)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _age(years: str) -> Dataset:
    measured = Dataset()
    measured.NumericValue = years
    measured.MeasurementUnitsCodeSequence = [_code("a", "UCUM", "year")]
    return _item("NUM", ("121033", "DCM", "Subject Age"), MeasuredValueSequence=[measured])


def _sr_content() -> list[Dataset]:
    return [
        _item("DATE", ("121031", "DCM", "Subject Birth Date"), Date="19500317"),
        _item("PNAME", ("121029", "DCM", "Subject Name"), PersonName=NAME),
        _item("TEXT", ("121030", "DCM", "Subject ID"), TextValue=MRN),
        _age("93"),
        _item("DATE", ("111060", "DCM", "Study Date"), Date="20230105"),
        _item("TEXT", ("121106", "DCM", "Comment"), TextValue=f"seen {NAME}"),
    ]


def test_sr_content_items_follow_their_concept(engine: Deidentifier, tmp_path: Path) -> None:
    """Subject Birth Date, Name and ID -- the patient's identity -- are removed with their
    item (never shifted, never a dummy: TID 1007 makes them optional, the header holds the
    subject label); the basic profile drops the age; other dates shift; free text is a
    dummy."""
    out = run(engine, make_instance(ContentSequence=_sr_content()), tmp_path)
    concepts = [item.ConceptNameCodeSequence[0].CodeValue for item in out.ContentSequence]
    assert concepts == ["111060", "121106"]
    study_date, comment = out.ContentSequence
    assert study_date.Date == out.StudyDate  # shifted like StudyDate
    assert comment.TextValue == "ANONYMIZED"


def test_sr_age_over_89_capped_when_kept(tmp_path: Path) -> None:
    """With Retain Patient Characteristics, Subject Age stays, capped at 90 years."""
    profile = profile_from(tmp_path, "options: [retain_patient_characteristics]\n")
    engine = Deidentifier(profile, key=KEY, project="T")
    out = run(engine, make_instance(ContentSequence=[_age("93"), _age("45")]), tmp_path)
    values = [item.MeasuredValueSequence[0].NumericValue for item in out.ContentSequence]
    assert values == [90, 45]


def _implicit_private_sequence(ds: Dataset) -> bytes:
    """``ds`` as a meta-less implicit VR data set with a private sequence of PHI."""
    inner = Dataset()
    inner.PatientName = NAME
    inner.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.6001"
    inner.add_new(0x00191010, "LO", "ACME 1.0")  # a nested private block
    inner.add_new(0x00191011, "LO", MRN)
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291012, "SQ", Sequence([inner]))
    ds.add_new(0x00291013, "LO", f"kept text {MRN}")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_allow_listed_private_sequence_in_implicit_vr_is_walked(tmp_path: Path) -> None:
    """A kept private sequence read as UN bytes (implicit VR, no file meta) is parsed and
    walked like any other: names dummied, UIDs remapped, unlisted private elements gone."""
    profile = profile_from(
        tmp_path,
        "options: [retain_safe_private, retain_longitudinal_modified_dates]\n"
        "private_tags:\n  - {group: '0029', creator: 'ACME 1.0', element: '12'}\n",
    )
    engine = Deidentifier(profile, key=KEY, project="T")
    src = tmp_path / "in" / "bare.dcm"
    src.parent.mkdir()
    src.write_bytes(_implicit_private_sequence(make_instance()))
    assert dcmread(src, force=True)[0x00291012].VR == "UN"  # no dictionary: raw bytes
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert not result.quarantined, result.reason
    out = dcmread(result.path)
    (inner,) = out[0x00291012].value
    assert inner.PatientName != NAME
    assert inner.ReferencedSOPInstanceUID == engine.remap_uid("1.2.826.0.1.3680043.8.498.6001")
    assert 0x00191011 not in inner
    assert 0x00291013 not in out


def test_leading_zeros_are_the_same_patient(tmp_path: Path) -> None:
    """An SR whose PatientID drops the leading zeros is the same subject, not a clash; a
    real clash says which element differs, without values."""
    mapping = MappingTable(tmp_path / "map.sqlite")
    engine = Deidentifier(load_profile(None), key=KEY, project="T", mapping=mapping)
    try:
        first = make_instance("1.2.826.0.1.3680043.8.498.1001", PatientID="0004711235")
        second = make_instance("1.2.826.0.1.3680043.8.498.1002", PatientID="4711235")
        for ds in (first, second):
            src = write(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm")
            result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
            assert not result.quarantined, result.reason
        other = make_instance("1.2.826.0.1.3680043.8.498.1003", PatientID="999888777")
        src = write(other, tmp_path / "in" / "other.dcm")
        result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    finally:
        mapping.close()
    assert result.quarantined
    assert "this file's PatientID (0010,0020) differs" in (result.reason or "")
    assert "999888777" not in (result.reason or "")


def test_quarantine_reason_names_the_element_and_why(tmp_path: Path) -> None:
    """A leak's reason names the element (tag and keyword) and how it matched, no value."""
    profile = profile_from(tmp_path, "overrides: {ImageComments: keep}\n")
    engine = Deidentifier(profile, key=KEY, project="T")
    src = write(make_instance(ImageComments="JosephineV2"), tmp_path / "in" / "a.dcm")
    result = engine.deidentify_file(src, tmp_path / "out", subject="S01", session="E01")
    assert result.reason == (
        "leak check: patient name part found in element (0020,4000) ImageComments (as a "
        "whole word after folding case, accents and spelling)"
    )


def test_unknown_standard_code_meanings(engine: Deidentifier, tmp_path: Path) -> None:
    """A standard code PS3.16 does not list keeps its value; its meaning stays when made
    of PS3.16 words, and becomes the dummy when it may name someone (an observer)."""
    ds = make_instance(
        AnatomicRegionSequence=[_code("999999999", "SCT", "Structure of left femur")],
        ProcedureCodeSequence=[_code("99999-9", "LN", "Read by Jansen, Pieter")],
    )
    out = run(engine, ds, tmp_path)
    anatomy, procedure = out.AnatomicRegionSequence[0], out.ProcedureCodeSequence[0]
    assert (anatomy.CodeValue, anatomy.CodeMeaning) == ("999999999", "Structure of left femur")
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("99999-9", "LN")
    assert procedure.CodeMeaning == "ANONYMIZED"


@pytest.mark.parametrize(
    ("name", "patient_id", "text"),
    [
        ("Dvořák^Zoë", "MRN4711235", "knee Dvorak2 left"),  # glued to a digit, accents off
        ("Dvořák^Zoë", "MRN4711235", "knee ZoeDvorak left"),  # camel case
        ("García-López^María", "MRN4711235", "knee LOPEZ left"),  # part of a compound name
        ("Müller^Hans", "MRN4711235", "knee Mueller left"),  # transliteration
        ("Müller^Hans", "MRN4711235", "knee Mu\u0308ller left"),  # NFD
        ("Li^Wei", "MRN4711235", "knee LI2 left SLICE"),  # two-letter surname
        ("Smith^Anna", "MRN4711235", "knee dob 17-Mar-1950 left"),  # the birth date as text
        ("Smith^Anna", "MRN-471-1235", "knee mrn4711235 left"),  # the MRN, other separators
        ("Smith^Anna", "959763", "knee MRN 00 095 9763 left"),  # the MRN with its zeros
    ],
)
def test_cleaned_descriptions_hold_no_spelling(
    engine: Deidentifier, tmp_path: Path, name: str, patient_id: str, text: str
) -> None:
    """The scrubber removes every spelling the leak check knows, so the file is written."""
    ds = make_instance(PatientName=name, PatientID=patient_id, SeriesDescription=text)
    ds.SpecificCharacterSet = "ISO_IR 192"
    out = run(engine, ds, tmp_path)  # run() asserts it was not quarantined
    assert out.SeriesDescription.startswith("knee")
    assert "left" in out.SeriesDescription
    assert ("SLICE" in out.SeriesDescription) == ("SLICE" in text)


def test_utf8_bytes_in_a_latin1_description_are_scrubbed(
    engine: Deidentifier, tmp_path: Path
) -> None:
    """A Latin-1 file whose description holds UTF-8 bytes (``MÃ¼ller``) is scrubbed."""
    mojibake = "Müller".encode().decode("latin-1")
    ds = make_instance(PatientName="Müller^Hans", SeriesDescription=f"knee {mojibake} left")
    out = run(engine, ds, tmp_path)
    assert out.SeriesDescription == "knee left"
