"""Names spelled in other scripts and romanizations, found by the leak check and cut out by
the scrubber alike (one rule); Type 1 labels, qualifiers and SR identity items.

Covers the blind run's findings: Cyrillic names in every romanization and the other way
round, Japanese names in romaji with every long-vowel convention and in either kana script,
a scrubber weaker than the leak check, ContentLabel and GraphicLayer, LUTLabel (Type 1),
ResponsiblePersonRole without its person, and the SR "Subject ID".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from pacsman.anonymize import Deidentifier, Originals, load_profile
from pacsman.anonymize._walk import scrubber_for
from tests.test_anonymize_engine import KEY, make_instance, run

RUSSIAN = "Ковалёва^Дарья"
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _originals(name: str) -> Originals:
    return Originals(name_parts=Originals.from_dataset(make_instance(PatientName=name)).name_parts)


@pytest.fixture
def engine() -> Deidentifier:
    """The built-in default profile, project TEST."""
    return Deidentifier(load_profile(None), key=KEY, project="TEST")


_CYRILLIC_SPELLINGS = [
    "CT Ковалёва",
    "CT Ковалева",  # ё written е
    "CT КОВАЛЁВА",
    "CT Kovaleva",  # ICAO 9303
    "T1 Kovalyova3",  # BGN/PCGN in practice, glued to a digit
    "T1_Kovaljova",  # scholarly
    "CT Kowaljowa",  # German
    "CT Kovalëva",  # ISO 9
    "CT Kovaliova",  # French
    "CT Kowalowa",  # Polish: ё after л is o
    "CT Darya",
    "CT Daria",  # ICAO 9303
    "axDarja",  # camel case
    "CT Dar'ya",
    "CT Darʹâ",  # ISO 9
]


@pytest.mark.parametrize("text", _CYRILLIC_SPELLINGS)
def test_cyrillic_name_in_every_romanization(text: str) -> None:
    """A Russian name is found in every romanization, and the scrubber cuts it out."""
    originals = _originals(RUSSIAN)
    assert originals.matcher.first(text) is not None
    cleaned = scrubber_for(originals)(text)
    assert originals.matcher.first(cleaned) is None, cleaned
    assert cleaned in ("CT", "T1", "T1 3", "T1_", "ax"), cleaned  # the name alone goes


@pytest.mark.parametrize(
    "text",
    [
        "CT Ковалёва",
        "CT Ковалева",
        "... Kovaljova",
        "Kowaljowa Darja",
        "CT " + "Ковалёва".encode().decode("latin-1"),  # UTF-8 Cyrillic in a Latin-1 file
        "Darʹâ",
    ],
)
def test_latin_name_found_in_other_spellings_and_in_cyrillic(text: str) -> None:
    """PatientName KOVALEVA^DARJA: the other romanizations and the Cyrillic (UTF-8, or
    UTF-8 read as Latin-1) are the same name."""
    originals = _originals("KOVALEVA^DARJA")
    assert originals.matcher.first(text) is not None
    assert originals.matcher.first(scrubber_for(originals)(text)) is None


@pytest.mark.parametrize(
    "text",
    [
        *("MR Yamada", "MR Taro", "MR Tarō", "MR Tarô", "MR Taroh", "MR Taroo", "MR Tarou"),
        *("MR やまだ", "MR ヤマダ", "MR ﾔﾏﾀﾞ", "MR 山田太郎", "MR タロウ", "MR タロー", "MR TAROU"),
    ],
)
def test_japanese_name_in_romaji_and_kana(text: str) -> None:
    """Romaji with every long-vowel convention, katakana and half-width katakana for the
    hiragana reading, and the kanji: found and cut out."""
    originals = _originals(JAPANESE)
    assert originals.matcher.first(text) is not None
    assert scrubber_for(originals)(text) == "MR"


def test_romaji_name_without_kana_is_read_as_romaji() -> None:
    """A Japanese name given in romaji only (``Tarou``: a word processor's long vowel)
    still finds its other spellings and its kana."""
    originals = _originals("Yamada^Tarou")
    for text in ("Taroh", "Tarō", "やまだ", "ヤマダ"):
        assert originals.matcher.first(text) is not None, text


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Hart^Kim", "chart review"),  # a short name keeps its first consonant
        ("Yang^Li", "angle ang"),
        ("Moore^Tina", "more slices, China"),  # not romaji without a Japanese name
        ("Chen^Wei", "son con"),
        ("Diane^Anne", "dane"),
        ("Ковалёва^Дарья", "Dara oval"),
        ("Yamada^Tarou", "Tarot cards, Yamadas"),
        ("HEAD^Thomas", "forehead overhead"),
    ],
)
def test_spellings_do_not_match_ordinary_words(name: str, text: str) -> None:
    """Other spellings are a name's, not any word that sounds alike: no finding."""
    assert _originals(name).matcher.first(text) is None


@pytest.mark.parametrize(
    "text",
    [*_CYRILLIC_SPELLINGS, "MRN 12345678", "dob 14.03.1952", "Kovaleva-Darja 12-345-678"],
)
def test_the_scrubber_cuts_whatever_the_leak_check_finds(text: str) -> None:
    """One rule: a cleaned value never holds what the leak check would flag."""
    originals = Originals.from_dataset(
        make_instance(PatientName=RUSSIAN, PatientID="12-345-678", PatientBirthDate="19520314")
    )
    assert originals.matcher.first(scrubber_for(originals)(text)) is None


def test_content_label_and_graphic_layer_are_scrubbed(engine: Deidentifier, tmp_path: Path) -> None:
    """A CS label holding the name keeps the rest (``KOVALYOVA_REVIEW`` -> ``REVIEW``); a
    layer that is only the name becomes the dummy, the same in every place it is named."""
    layer, annotation = Dataset(), Dataset()
    layer.GraphicLayer, layer.GraphicLayerOrder = "KOVALEVA", 1
    annotation.GraphicLayer = "KOVALEVA"
    ds = make_instance(
        PatientName=RUSSIAN,
        SpecificCharacterSet="ISO_IR 192",
        ContentLabel="KOVALYOVA_REVIEW",
        GraphicLayerSequence=[layer],
        GraphicAnnotationSequence=[annotation],
    )
    out = run(engine, ds, tmp_path)
    assert out.ContentLabel == "REVIEW"
    assert out.GraphicLayerSequence[0].GraphicLayer == "ANONYMIZED"
    assert out.GraphicAnnotationSequence[0].GraphicLayer == "ANONYMIZED"


def test_lut_label_is_type1_and_role_goes_with_its_person(
    engine: Deidentifier, tmp_path: Path
) -> None:
    """LUTLabel (Type 1 in the Real World Value Mapping item) is cleaned, never removed;
    ResponsiblePersonRole (Type 1C) leaves with ResponsiblePerson."""
    mapping = Dataset()
    mapping.LUTLabel, mapping.LUTExplanation = "HU_KOVALEVA", "Hounsfield units"
    mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, 4095
    mapping.RealWorldValueIntercept, mapping.RealWorldValueSlope = -1024, 1
    ds = make_instance(
        PatientName="KOVALEVA^DARJA",
        RealWorldValueMappingSequence=[mapping],
        ResponsiblePerson="Kovaleva^Galina",
        ResponsiblePersonRole="MOTHER",
    )
    out = run(engine, ds, tmp_path)
    assert out.RealWorldValueMappingSequence[0].LUTLabel == "HU"
    assert "ResponsiblePerson" not in out
    assert "ResponsiblePersonRole" not in out


def test_latin1_file_with_utf8_cyrillic_keeps_its_bytes(
    engine: Deidentifier, tmp_path: Path
) -> None:
    """UTF-8 Cyrillic in a Latin-1 file: the name goes, the rest keeps its bytes (no
    ``?`` for letters Latin-1 has not)."""
    text = "CT Ковалёва грудь".encode().decode("latin-1")
    ds = make_instance(PatientName="KOVALEVA^DARJA", SeriesDescription=text)
    out = run(engine, ds, tmp_path)
    assert out.SeriesDescription == "CT " + "грудь".encode().decode("latin-1")


def test_a_name_written_in_utf8_into_a_latin1_file_is_read_both_ways() -> None:
    """PatientName holding UTF-8 bytes in a Latin-1 file: its parts are the repaired name's
    too, so its spellings are found."""
    mojibake = RUSSIAN.encode().decode("latin-1")
    originals = Originals.from_dataset(make_instance(PatientName=mojibake))
    assert {"Ковалёва", "Дарья"} <= originals.name_parts
    assert originals.matcher.first("CT Kovalyova") is not None
