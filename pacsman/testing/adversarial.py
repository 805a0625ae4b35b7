"""An adversarial corpus for de-identification, built the way a privacy officer would.

``build_corpus(root, seed)`` writes one folder per study under ``root`` and returns a
:class:`Corpus`: every identifier it planted (:class:`Patient`), every original UID, which
instance refers to which, and the outcome each file should have with the built-in profile
(every file written, except encapsulated documents, which are left out).  The same seed
gives the same corpus; each seed draws other names, spellings and placements.

What it plants, each class in several places and spellings chosen by the seed:

* names spelled every way people spell them: diacritics (NFC and NFD), German and Slavic
  transliterations, compound surnames and one part of them, two-letter surnames, names
  glued to digits and in camel case, UTF-8 bytes inside a Latin-1 file (one file per
  study declares ISO_IR 100 and holds the name in another script as UTF-8 bytes);
* a Russian patient: the Cyrillic name, or its Latin form in PatientName, and in text
  every romanization (ISO 9, GOST 7.79-B, BGN/PCGN, ICAO 9303, scholarly, German, Polish,
  French, English usage), ``ё`` written ``е``, the Cyrillic in a file whose PatientName is
  in Latin letters; a Japanese patient (``Yamada^Tarou=山田^太郎=やまだ^たろう``) with
  romaji in Hepburn and Kunrei and every way of writing long vowels (``ou oo oh ō ô o``),
  katakana and half-width katakana for the hiragana reading, and the kanji;
* a patient named like a DICOM defined term (HEAD, KNEE...), imaged where that term is the
  body part and an SCT code meaning;
* IDs with and without separators and leading zeros; the birth date as ``14-Mar-1952``,
  ``14.03.1952``, ``March 14, 1952`` and in an alternative calendar;
* code sequences the table marks D (institution, operator and person codes), local codes
  with names in their meanings, issuer qualifiers; attributes outside Table E.1-1 (LO,
  SH, UT, UR...);
* pixel payloads: overlay bits embedded above BitsStored, Exif/APPn and COM segments in
  JPEG, JPEG lossless and JPEG-LS frames;
* object kinds: CT (with a Real World Value Mapping whose LUTLabel may name the patient,
  and a ResponsiblePerson with its role), enhanced multi-frame MR with functional groups,
  Comprehensive SR (with "Subject Name", "Subject ID", "Subject Birth Date" and an age over
  89), GSPS (a ContentLabel and GraphicLayer that may hold the name), RT Structure Set,
  encapsulated PDF;
* encodings: explicit and implicit VR, big endian, deflate, a file with no preamble and no
  file meta, a public sequence stored as UN, private blocks and private sequences.

Never imported by production code (``pacsman/testing``).
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

from pacsman.testing.synthetic import synthetic_uid

__all__ = ["Corpus", "Patient", "Person", "SourceFile", "build_corpus"]

_FAMILIES = (
    "Müller-Dvořák",
    "García-López",
    "Øvergård",
    "Przybyszewski",
    "Šťastný",
    "Brönnimann",
    "Nguyễn",
    "O'Sullivan-Ruiz",
    "Łukaszewicz",
    "Van den Broeck",
)
_SHORT = ("Li", "Ng", "Wu", "Xu", "Yu", "Hu")
_TERMS = ("HEAD", "KNEE", "HAND", "CHEST", "FOOT")
_GIVEN = ("Zoë", "José", "Anaïs", "Jürgen", "Søren", "Thérèse", "Radomír", "Ingrid", "Mateo")
_RELATIVES = ("Hildegard", "Marguerite", "Wojciech", "Ottokar")
#: Russian patients (family, given): each written in every romanization below.
_CYRILLIC_PEOPLE = (
    ("Ковалёва", "Дарья"),
    ("Щербакова", "Юлия"),
    ("Хрущёв", "Евгений"),
    ("Жуков", "Алексей"),
    ("Соловьёва", "Наталья"),
    ("Цветков", "Илья"),
)
#: Japanese patients: romaji (as PatientName's first group), kanji, hiragana.
_JAPANESE_PEOPLE = (
    ("Yamada", "Tarou", "山田", "太郎", "やまだ", "たろう"),
    ("Satou", "Yuuko", "佐藤", "優子", "さとう", "ゆうこ"),
    ("Kondou", "Shouhei", "近藤", "翔平", "こんどう", "しょうへい"),
    ("Itou", "Kyouko", "伊藤", "京子", "いとう", "きょうこ"),
)
_INSTITUTIONS = (
    "Sint-Elisabeth Ziekenhuis",
    "Hôpital Saint-Éloi",
    "Klinikum Großhadern",
    "Fakultní nemocnice Motol",
    "Ospedale San Raffaele",
)
_STAFF = ("Vandermeulen^Kees", "Okonkwo^Adaeze", "Brandstätter^Vreni", "Kowalczyk^Bożena")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NAMES: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
)
_MONTH_NAMES += ("September", "October", "November", "December")
_SCT_BODY = {  # body part (defined term) -> SCT code and meaning
    "HEAD": ("69536005", "Head"),
    "KNEE": ("72696002", "Knee"),
    "HAND": ("85562004", "Hand"),
    "CHEST": ("51185008", "Chest"),
    "FOOT": ("56459004", "Foot"),
}
_EXIF = b"Exif\0\0MM\0*\0\0\0\x08"
_JPEG_8 = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805"
    "050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f17181614"
    "1812141514ffc0000b080008000801011100ffc40014000100000000000000000000000000000007ffc4"
    "001910000105000000000000000000000000000005082432a2ffda0008010100003f00264464958183ff"
    "ffd9"
)
_JPEG_LOSSLESS_16 = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffc3000b100008000801011100ffc400170001010101"
    "00000000000000000000000004020510ffda0008010100060000ebbbbbbbd86318c6319b0c6318c63361"
    "8c6318c66c318c6318cd86318c6319b0c6318c633618c6318c67ffd9"
)
_JPEG_LS_16 = bytes.fromhex(
    "ffd8fff7000b100008000801011100fff8000d01ffff0012004301140040ffda000801010000000"
    "0a02c0580700c030180b0c20340480a02804020343080402020202020242e808080808102028b2040"
    "810204080a2a810204081020128810208208201268208208208000ffffd9"
)
_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]"
    b"/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
)


@dataclass(frozen=True)
class Person:
    """A person's name, as DICOM PN components."""

    family: str
    given: str
    ideographic: str = ""  # Japanese: the kanji group, Family^Given
    phonetic: str = ""  # Japanese: the kana group

    @property
    def pn(self) -> str:
        """``Family^Given``, with the ideographic and phonetic groups when there are any."""
        alphabetic = f"{self.family}^{self.given}"
        if not self.ideographic and not self.phonetic:
            return alphabetic
        return f"{alphabetic}={self.ideographic}={self.phonetic}"


@dataclass(frozen=True)
class Patient:
    """Everything identifying that the corpus plants for one patient and study."""

    person: Person
    patient_id: str  # with separators and leading zeros
    birth_date: str  # YYYYMMDD
    accession: str
    institution: str
    address: str
    operator: Person
    employee_number: str
    subject: str  # XNAT labels for the de-identified study
    session: str
    defined_term: str | None = None  # the surname, when it is a DICOM defined term
    relative: Person | None = None  # the ResponsiblePerson
    forms: tuple[str, ...] = ()  # the name in other scripts and romanizations, as planted
    latin_pn: str = ""  # PatientName where the file's character set is Latin-1

    @property
    def names(self) -> tuple[str, ...]:
        """Every personal name planted for this study (patient and staff), as PN."""
        relative = (self.relative.pn,) if self.relative else ()
        return (self.person.pn, self.operator.pn, *relative, *_STAFF)

    @property
    def ascii_name(self) -> str:
        """The family name in ASCII letters (for CS, UR and AE values)."""
        latin = [f for f in self.forms if f.isascii() and f.isalpha()]
        plain = _plain(self.person.family).encode("ascii", "ignore").decode()
        return latin[0] if latin else re.findall(r"[A-Za-z]+", plain)[0]


@dataclass(frozen=True)
class SourceFile:
    """One file of the corpus and what should become of it."""

    path: Path
    study: str
    kind: str
    sop_instance_uid: str
    expected: str = "written"  # or "left out"
    references: tuple[str, ...] = ()  # SOP Instance UIDs it refers to


@dataclass(frozen=True)
class Corpus:
    """A written corpus: its studies (by folder name), files and original UIDs."""

    root: Path
    studies: Mapping[str, Patient]
    files: tuple[SourceFile, ...]
    uids: frozenset[str]
    standard_meanings: frozenset[str] = field(default=frozenset())


class _Study:
    """Builds the files of one study, with the seed's random choices."""

    def __init__(self, rng: random.Random, root: Path, index: int, patient: Patient) -> None:
        self.rng = rng
        self.patient = patient
        self.folder = root / f"study{index:02d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = f"{index}|{rng.random()}"
        self.made: set[str] = set()  # every UID this study's files hold
        self.study_uid = self.uid("study")
        self.frame_uid = self.uid("frame")
        self.files: list[SourceFile] = []
        self.images: list[tuple[str, str]] = []  # (SOP class, SOP instance) of images
        self.series_uid_of: dict[str, str] = {}

    def uid(self, *parts: object) -> str:
        uid = str(synthetic_uid("adversarial", self.key, *parts))
        self.made.add(uid)
        return uid

    # -- spellings -------------------------------------------------------------------

    def spelled(self, person: Person) -> str:
        """One way of writing a person's name in free text."""
        if person == self.patient.person and self.patient.forms and self.rng.random() < 0.7:
            return self.other_script()
        family, given = person.family, person.given
        first_part = family.replace("-", " ").split()[0]
        ascii_family = _plain(family)
        forms = [
            family.upper(),
            f"{family}{self.rng.randint(1, 9)}",
            _camel(given) + _camel(ascii_family),  # ZoeDvorak: a case change between
            first_part,
            _german(family),
            unicodedata.normalize("NFD", f"{given} {family}"),
            f"{ascii_family.lower()}, {given[0]}.",
        ]
        return self.rng.choice(forms)

    def other_script(self) -> str:
        """The patient's name in another script or romanization, as text may hold it:
        alone, in capitals, glued to a digit, after a lower-case prefix (``axDarja``)."""
        form = self.rng.choice(self.patient.forms)
        decorated = [form, form.upper(), f"{form}{self.rng.randint(2, 9)}", f"T1_{form}"]
        decorated.append(f"ax{form}" if form[:1].isupper() else f"ax {form}")
        return self.rng.choice(decorated)

    def birth_text(self) -> str:
        date = self.patient.birth_date
        year, month, day = date[:4], int(date[4:6]), int(date[6:])
        forms = [
            f"{day:02d}-{_MONTHS[month - 1]}-{year}",
            f"{day:02d}.{month:02d}.{year}",
            f"{_MONTH_NAMES[month - 1]} {day}, {year}",
            f"{year}/{month:02d}/{day:02d}",
            f"{day}{_MONTHS[month - 1].upper()}{year[2:]}",
        ]
        return self.rng.choice(forms)

    def id_text(self) -> str:
        raw = self.patient.patient_id
        digits = "".join(c for c in raw if c.isdigit())
        return self.rng.choice([digits, digits.lstrip("0"), raw.replace("-", " "), f"#{digits}"])

    def free_text(self) -> str:
        """A description with this patient's identifiers hidden in it."""
        parts = [
            self.rng.choice(["CT", "MR", "follow-up", "routine", "contrast"]),
            self.spelled(self.patient.person),
            self.rng.choice(["born", "dob", "*"]),
            self.birth_text(),
            self.rng.choice(["MRN", "id", "pat"]),
            self.id_text(),
        ]
        return " ".join(parts)

    # -- building blocks -------------------------------------------------------------

    def common(self, ds: Dataset, sop_class: str, modality: str, series: str) -> str:
        p = self.patient
        sop_uid = self.uid("sop", series, len(self.files))
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid_of.setdefault(series, self.uid("series", series))
        ds.PatientName, ds.PatientID = p.person.pn, p.patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = p.birth_date, "F", "093Y"
        ds.PatientAddress = p.address
        ds.OtherPatientNames = _plain(p.person.pn)
        ds.StudyDate, ds.StudyTime, ds.SeriesDate = "20230105", "101500", "20230105"
        ds.ContentDate, ds.ContentTime = "20230105", "101700"
        ds.AccessionNumber, ds.StudyID = p.accession, "4711"
        ds.ReferringPhysicianName = self.rng.choice(_STAFF)
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, len(self.series_uid_of), 1
        ds.Manufacturer, ds.InstitutionName = "ACME Medical", p.institution
        ds.InstitutionAddress = p.address
        ds.OperatorsName = p.operator.pn
        ds.StudyDescription = self.free_text()
        ds.SeriesDescription = f"{modality} {self.free_text()}"
        ds.PatientBirthDateInAlternativeCalendar = _hijri_like(p.birth_date)
        ds.PatientAlternativeCalendar = "I"
        ds.RetrieveURL = f"https://pacs.example.org/wado?patient={p.ascii_name}"
        self._codes(ds)
        self._private(ds)
        return sop_uid

    def _codes(self, ds: Dataset) -> None:
        p = self.patient
        ds.InstitutionCodeSequence = [_code("INST01", "99LOCAL", p.institution)]
        person = Dataset()
        person.PersonIdentificationCodeSequence = [
            _code(p.employee_number, "99HR", _plain(p.operator.pn))
        ]
        person.InstitutionName = p.institution
        person.PersonAddress = p.address
        ds.OperatorIdentificationSequence = [person]
        facility = Dataset()
        facility.LocalNamespaceEntityID = p.institution
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = f"urn:oid:1.2.3.{p.employee_number}"
        qualifiers.UniversalEntityIDType = "ISO"
        qualifiers.IdentifierTypeCode = "MR"
        qualifiers.AssigningFacilitySequence = [facility]
        qualifiers.AssigningJurisdictionCodeSequence = [_code("J1", "99STATE", p.institution)]
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
        ds.ProcedureCodeSequence = [
            _code("CTHEAD", "99ORDERS", f"CT for {self.spelled(p.person)}"),
        ]
        ds.RequestAttributesSequence = [Dataset()]
        ds.RequestAttributesSequence[0].RequestedProcedureID = self.id_text()

    def _private(self, ds: Dataset) -> None:
        p = self.patient
        block = ds.private_block(0x0029, "ACME ADVERSARIAL 1.0", create=True)
        block.add_new(0x10, "LO", p.person.pn)
        inner = Dataset()
        inner.PatientName = p.person.pn
        inner.ReferencedSOPInstanceUID = self.uid("private-ref")
        block.add_new(0x11, "SQ", Sequence([inner]))

    def anatomy(self, ds: Dataset) -> None:
        term = self.patient.defined_term or self.rng.choice(list(_SCT_BODY))
        ds.BodyPartExamined = term
        value, meaning = _SCT_BODY[term]
        ds.AnatomicRegionSequence = [_code(value, "SCT", meaning)]

    def pixels(self, ds: Dataset, *, rows: int = 8, overlay: bool = False) -> None:
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        values = np.random.default_rng(self.rng.randrange(1 << 30)).integers(
            0, 1 << 12, size=rows * rows, dtype=np.uint16
        )
        if overlay:  # the retired embedded overlay: a plane in bit 12
            values |= (np.arange(rows * rows, dtype=np.uint16) % 3 == 0).astype(np.uint16) << 12
            ds.add_new(0x60000010, "US", rows)
            ds.add_new(0x60000011, "US", rows)
            ds.add_new(0x60000040, "CS", "G")
            ds.add_new(0x60000050, "SS", [1, 1])
            ds.add_new(0x60000100, "US", 16)
            ds.add_new(0x60000102, "US", 12)
            ds.add_new(0x60000022, "LO", self.spelled(self.patient.person))
        ds.PixelData = values.tobytes()

    def image_plane(self, ds: Dataset) -> None:
        ds.FrameOfReferenceUID = self.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0, 0, float(len(self.files))]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1

    def save(
        self,
        ds: Dataset,
        kind: str,
        syntax: str,
        *,
        expected: str = "written",
        references: tuple[str, ...] = (),
        meta: bool = True,
    ) -> None:
        path = self.folder / f"{kind}-{len(self.files):02d}.dcm"
        _write(ds, path, syntax, meta=meta)
        sop = str(ds.SOPInstanceUID)
        self.files.append(SourceFile(path, self.folder.name, kind, sop, expected, references))


def _plain(text: str) -> str:
    """``text`` without accents: what an ASCII-only system makes of a name."""
    table = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ß": "ss", "đ": "d"})
    decomposed = unicodedata.normalize("NFKD", text.translate(table))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _camel(text: str) -> str:
    """``text`` without separators, each word capitalized (``van den Broeck``: ``VanDenBroeck``)."""
    return "".join(w if not w.isupper() else w.capitalize() for w in re.split(r"[\s\-]+", text))


def _german(text: str) -> str:
    table = {"ü": "ue", "ö": "oe", "ä": "ae", "Ü": "Ue", "Ö": "Oe", "Ä": "Ae", "ß": "ss"}
    return _plain("".join(table.get(c, c) for c in text))


_RU_COMMON = dict(zip("абвгдзиклмнопрстуф", "abvgdziklmnoprstuf", strict=True))
#: Russian in Latin letters, system by system: letter -> spelling (the generator's own
#: tables; letters not listed are _RU_COMMON's).  "e*" is ye/je at the start of a word
#: and after a vowel or a sign.
_RU_SYSTEMS: dict[str, dict[str, str]] = {
    "ISO 9": dict(zip("ёжйхцчшщъыьэюяе", "ëžjhcčšŝʺyʹèûâe", strict=True)),
    "GOST 7.79-B": {"ё": "yo", "ж": "zh", "й": "j", "х": "x", "ц": "cz", "ч": "ch", "ш": "sh"}
    | {"щ": "shh", "ъ": "``", "ы": "y`", "ь": "`", "э": "e`", "ю": "yu", "я": "ya", "е": "e"},
    "BGN/PCGN": {"ё": "ë", "ж": "zh", "й": "y", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh"}
    | {"щ": "shch", "ъ": '"', "ы": "y", "ь": "'", "э": "e", "ю": "yu", "я": "ya", "е": "e*"},
    "ICAO 9303": {"ё": "e", "ж": "zh", "й": "i", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh"}
    | {"щ": "shch", "ъ": "ie", "ы": "y", "ь": "", "э": "e", "ю": "iu", "я": "ia", "е": "e"},
    "scholarly": dict(zip("ёжйхцчшъыьэюяе", "ëžjxcčšʺyʹèüäe", strict=True))
    | {"щ": "šč", "ю": "ju", "я": "ja"},
    "German": {"ё": "jo", "ж": "sch", "з": "s", "в": "w", "й": "i", "х": "ch", "ц": "z"}
    | {"ч": "tsch", "ш": "sch", "щ": "schtsch", "ъ": "", "ы": "y", "ь": "", "э": "e"}
    | {"ю": "ju", "я": "ja", "е": "e*"},
    "Polish": {"ё": "io", "ж": "ż", "в": "w", "й": "j", "х": "ch", "ц": "c", "ч": "cz"}
    | {"ш": "sz", "щ": "szcz", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "ju", "я": "ja"}
    | {"е": "e*"},
    "French": {"ё": "io", "ж": "j", "й": "ï", "х": "kh", "ц": "ts", "ч": "tch", "ш": "ch"}
    | {"щ": "chtch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "iou", "я": "ia", "у": "ou"}
    | {"е": "e"},
    "English": {"ё": "yo", "ж": "zh", "й": "y", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh"}
    | {"щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya", "е": "e"},
}


def _romanized(word: str, system: str) -> str:
    """A Russian word in one system's Latin letters, capitalized."""
    table, out, previous = _RU_SYSTEMS[system], [], ""
    for letter in word.lower():
        spelled = table.get(letter, _RU_COMMON.get(letter, letter))
        if spelled == "e*":
            spelled = "je" if system in ("German", "Polish") else "ye"
            spelled = spelled if not previous or previous in "аеёиоуыэюяьъ" else "e"
        if system == "Polish" and letter == "ё" and previous in "лжчшщ":
            spelled = "o"  # Королёв: Korolow
        out.append(spelled)
        previous = letter
    text = "".join(out)
    return text[:1].upper() + text[1:]


def _cyrillic_forms(family: str, given: str) -> tuple[str, ...]:
    """Every way the corpus writes a Russian name: each system, ``ё`` as ``е``."""
    forms = {family, given, family.replace("ё", "е"), given.replace("ё", "е")}
    for system in _RU_SYSTEMS:
        forms |= {_romanized(family, system), _romanized(given, system)}
    return tuple(sorted(forms))


#: hiragana -> (Hepburn, Kunrei) for the syllables of the Japanese names above.
_KANA_ROMAJI = {
    "や": "ya",
    "ま": "ma",
    "だ": "da",
    "た": "ta",
    "ろ": "ro",
    "う": "u",
    "さ": "sa",
    "と": "to",
    "ゆ": "yu",
    "こ": "ko",
    "ん": "n",
    "ど": "do",
    "へ": "he",
    "い": "i",
    "しょ": "sho syo",
    "きょ": "kyo",
}
_LONG_O = ("ou", "oo", "oh", "ō", "ô", "o")
_LONG_U = ("uu", "ū", "u")


def _romaji_forms(kana: str) -> set[str]:
    """Every romanization of ``kana`` the corpus writes: Hepburn and Kunrei, each long
    vowel in every style (``ou oo oh ō ô o``; ``uu ū u``)."""
    syllables: list[list[str]] = []
    index = 0
    while index < len(kana):
        pair = kana[index : index + 2]
        key = pair if pair in _KANA_ROMAJI else kana[index]
        spelled = _KANA_ROMAJI[key].split()
        if key == "う" and syllables and syllables[-1][0].endswith(("o", "u")):
            vowel = syllables[-1][0][-1]
            syllables[-1] = [
                s[:-1] + long
                for s in syllables[-1]
                for long in (_LONG_O if vowel == "o" else _LONG_U)
            ]
        else:
            syllables.append(spelled)
        index += len(key)
    forms = {""}
    for options in syllables:
        forms = {f + o for f in forms for o in options}
    return {f[:1].upper() + f[1:] for f in forms}


#: ウ after an o- or u-row katakana: a long vowel, written ー in katakana names.
_PROLONGED = re.compile("(?<=[オコソトノホモヨロヲゴゾドボポョウクスツヌフムユルグズヅブプュ])ウ")


def _katakana(hiragana: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in hiragana)


def _halfwidth(katakana: str) -> str:
    """Katakana in half-width forms (voiced marks as separate half-width marks)."""
    narrow = {unicodedata.normalize("NFKC", chr(code)): chr(code) for code in range(0xFF66, 0xFF9E)}
    out = []
    for char in unicodedata.normalize("NFD", katakana):
        if char == "\u3099":
            out.append("\uff9e")
        elif char == "\u309a":
            out.append("\uff9f")
        else:
            out.append(narrow.get(char, char))
    return "".join(out)


def _japanese_forms(kanji: tuple[str, str], kana: tuple[str, str]) -> tuple[str, ...]:
    """Every way the corpus writes a Japanese name: romaji, kana in both scripts and
    widths, kanji."""
    forms: set[str] = set(kanji)
    for reading in kana:
        forms |= _romaji_forms(reading) | {reading, _katakana(reading)}
        forms.add(_halfwidth(_katakana(reading)))
        forms.add(_PROLONGED.sub("ー", _katakana(reading)))  # タロー for たろう
    return tuple(sorted(forms))


def _mojibake(text: str) -> str:
    """``text`` as UTF-8 bytes read as Latin-1 (what a Latin-1 file holds then)."""
    return text.encode("utf-8").decode("latin-1")


def _hijri_like(date: str) -> str:
    """A birth date written in another calendar (a fixed offset: enough to plant it)."""
    return f"{int(date[:4]) - 579}-{date[4:6]}-{date[6:]}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _write(ds: Dataset, path: Path, syntax: str, *, meta: bool) -> None:
    uid = UID(syntax)
    if not meta:  # no preamble, no file meta: a bare implicit VR data set
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        write_dataset(buffer, ds)
        path.write_bytes(buffer.getvalue())
        return
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    workstation = _plain(str(ds.PatientName)).encode("ascii", "ignore").decode()
    ds.file_meta.SourceApplicationEntityTitle = "WS_" + workstation.replace("^", "")[:8]
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=uid.is_implicit_VR,
        little_endian=uid.is_little_endian,
    )


def _jpeg_frame(frame: bytes, study: _Study) -> bytes:
    """A JPEG codestream with Exif (APP1), another APPn and a comment naming the patient."""
    p = study.patient
    exif = _EXIF + f"{p.person.pn} {p.patient_id} {p.birth_date}".encode()
    segments = [(0xE1, exif), (0xFE, f"{study.spelled(p.person)} {p.patient_id}".encode())]
    segments.append((0xE7, f"operator {p.operator.pn} {p.employee_number}".encode()))
    study.rng.shuffle(segments)
    payload = b"".join(
        bytes([0xFF, marker]) + (len(data) + 2).to_bytes(2, "big") + data
        for marker, data in segments
    )
    return frame[:2] + payload + frame[2:]


def _encapsulated(frames: list[bytes]) -> bytes:
    return encapsulate(frames, has_bot=True)


# -- the objects ------------------------------------------------------------------------


def _ct(study: _Study, syntax: str, *, overlay: bool, relative: bool = False) -> None:
    ds = Dataset()
    sop = study.common(ds, CTImageStorage, "CT", "ct")
    study.anatomy(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.AcquisitionNumber = 120, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    _real_world_values(study, ds)
    if relative and study.patient.relative is not None:  # Type 1C role with its person
        ds.ResponsiblePerson = study.patient.relative.pn
        ds.ResponsiblePersonRole = study.rng.choice(["MOTHER", "FATHER", "GUARDIAN"])
    ds.ConvolutionKernel, ds.BurnedInAnnotation = "B30f", "NO"
    ds.AcquisitionProtocolName = f"protocol {study.spelled(study.patient.person)}"
    ds.ImageComments = study.free_text()
    study.image_plane(ds)
    study.pixels(ds, overlay=overlay)
    if syntax == ExplicitVRLittleEndian and study.rng.random() < 0.5:
        _un_sequence(ds)
    study.images.append((CTImageStorage, sop))
    study.save(ds, "ct", syntax)


def _real_world_values(study: _Study, ds: Dataset) -> None:
    """A Real World Value Mapping item: its LUTLabel (SH, Type 1) may name the patient."""
    mapping = Dataset()
    name = study.patient.ascii_name.upper()
    labels = [label for label in (f"HU_{name}", f"{name}_HU") if len(label) <= 16]
    mapping.LUTLabel = study.rng.choice(["HU_MAP", *labels])
    mapping.LUTExplanation = "Hounsfield units"
    mapping.MeasurementUnitsCodeSequence = [_code("[hnsf'U]", "UCUM", "Hounsfield unit")]
    mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, 4095
    mapping.RealWorldValueIntercept, mapping.RealWorldValueSlope = -1024, 1
    ds.RealWorldValueMappingSequence = [mapping]


def _latin1_ct(study: _Study) -> None:
    """A CT whose file declares ISO_IR 100 but whose text holds UTF-8 bytes: PatientName
    in Latin letters, the name in another script (or with its accents) in descriptions."""
    p = study.patient
    ds = Dataset()
    sop = study.common(ds, CTImageStorage, "CT", "ct")
    study.anatomy(ds)
    ds.ImageType, ds.BurnedInAnnotation = ["ORIGINAL", "PRIMARY", "AXIAL"], "NO"
    study.image_plane(ds)
    study.pixels(ds)
    foreign = [f for f in p.forms if not _in_latin1(f) and not _is_kanji(f)]
    foreign = foreign or [p.person.family]  # kanji cannot be told from a Latin name
    ds.SeriesDescription = f"CT {study.rng.choice(foreign)} {study.birth_text()}"
    ds.ImageComments = f"{study.rng.choice(foreign)} {study.id_text()}"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ds.OtherPatientNames = p.latin_pn
    for element in ds.iterall():
        if isinstance(element.value, str) and not _in_latin1(element.value):
            element.value = _mojibake(element.value)
        elif element.VR == "PN" and not _in_latin1(str(element.value)):
            element.value = _mojibake(str(element.value))
    study.images.append((CTImageStorage, sop))
    study.save(ds, "ct-latin1", ExplicitVRLittleEndian)


def _is_kanji(text: str) -> bool:
    return all("\u4e00" <= c <= "\u9fff" for c in text)


def _in_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _un_sequence(ds: Dataset) -> None:
    """Store AnatomicRegionSequence as UN (implicit VR items), as some archives do."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    for item in ds.AnatomicRegionSequence:
        inner = DicomBytesIO()
        inner.is_little_endian, inner.is_implicit_VR = True, True
        write_dataset(inner, item)
        body = inner.getvalue()
        buffer.write(b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body)
    del ds.AnatomicRegionSequence
    value = buffer.getvalue()  # raw: pydicom would turn a known tag's UN into SQ
    ds[0x00082218] = RawDataElement(Tag(0x00082218), "UN", len(value), value, 0, False, True)


def _jpeg(study: _Study, syntax: str) -> None:
    ds = Dataset()
    sop = study.common(ds, CTImageStorage, "CT", "jpeg")
    study.anatomy(ds)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.BurnedInAnnotation = 0, 1, "NO"
    ds.KVP, ds.AcquisitionNumber = 120, 1
    study.image_plane(ds)
    frames: dict[str, tuple[bytes, int]] = {
        JPEGBaseline8Bit: (_JPEG_8, 8),
        JPEGLosslessSV1: (_JPEG_LOSSLESS_16, 16),
        JPEGLSLossless: (_JPEG_LS_16, 16),
    }
    frame, bits = frames[syntax]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        ds.LossyImageCompressionRatio = 3
    ds.PixelData = _encapsulated([_jpeg_frame(frame, study)])
    ds["PixelData"].VR = "OB"
    study.images.append((CTImageStorage, sop))
    study.save(ds, f"jpeg{bits}", syntax)


def _enhanced_mr(study: _Study, syntax: str) -> None:
    ds = Dataset()
    sop = study.common(ds, "1.2.840.10008.5.1.4.1.1.4.1", "MR", "emr")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentQualification, ds.BurnedInAnnotation = "PRODUCT", "NO"
    ds.PulseSequenceName, ds.AcquisitionProtocolName = "tse2d1", study.free_text()
    ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.SoftwareVersions = "X1", "SN77", "1.0"
    ds.AcquisitionContrast, ds.ResonantNucleus, ds.MagneticFieldStrength = "T2", "1H", 3
    ds.AcquisitionDateTime, ds.AcquisitionDuration = "20230105101600", 60
    ds.NumberOfFrames, ds.FrameOfReferenceUID = 2, study.frame_uid
    ds.PositionReferenceIndicator = ""
    shared = Dataset()
    coil = Dataset()
    coil.ReceiveCoilName, coil.ReceiveCoilManufacturerName = "Head 32", "ACME"
    coil.ReceiveCoilType, coil.QuadratureReceiveCoil = "MULTICOIL", "NO"
    shared.MRReceiveCoilSequence = [coil]
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1, 1], 2
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    anatomy = Dataset()
    term = study.patient.defined_term or "HEAD"
    anatomy.AnatomicRegionSequence = [_code(_SCT_BODY[term][0], "SCT", _SCT_BODY[term][1])]
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = [anatomy]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for index in range(2):
        group = Dataset()
        content = Dataset()
        content.FrameAcquisitionDateTime = f"2023010510160{index}"
        content.FrameReferenceDateTime = f"2023010510160{index}"
        content.FrameAcquisitionDuration, content.StackID = 30, "1"
        content.InStackPositionNumber, content.FrameAcquisitionNumber = index + 1, index + 1
        content.DimensionIndexValues = [1, index + 1]
        content.FrameLabel = f"{study.spelled(study.patient.person)} slice {index}"
        content.FrameComments = study.free_text()
        group.FrameContentSequence = [content]
        position = Dataset()
        position.ImagePositionPatient = [0, 0, 2.0 * index]
        group.PlanePositionSequence = [position]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = study.uid("dim")
    study.pixels(ds)
    ds.PixelData = ds.PixelData * 2
    study.images.append(("1.2.840.10008.5.1.4.1.1.4.1", sop))
    study.save(ds, "enhanced-mr", syntax)


def _sr(study: _Study, syntax: str) -> None:
    p = study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    study.common(ds, "1.2.840.10008.5.1.4.1.1.88.33", "SR", "sr")
    ds.PatientID = p.patient_id.replace("-", "").lstrip("0")  # the SR drops the zeros
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    observer = Dataset()
    observer.VerifyingObserverName = p.operator.pn
    observer.VerifyingOrganization = p.institution
    observer.VerificationDateTime = "20230106120000"
    observer.VerifyingObserverIdentificationCodeSequence = [
        _code(p.employee_number, "99HR", p.operator.pn)
    ]
    ds.VerifyingObserverSequence = [observer]
    request = Dataset()
    request.StudyInstanceUID, request.AccessionNumber = study.study_uid, p.accession
    request.RequestedProcedureID = study.id_text()
    request.RequestedProcedureDescription = study.free_text()
    request.RequestedProcedureCodeSequence = [_code("RPX", "99ORDERS", p.person.pn)]
    request.PlacerOrderNumberImagingServiceRequest = p.accession
    request.FillerOrderNumberImagingServiceRequest = p.accession
    request.ReferencedStudySequence = []
    ds.ReferencedRequestSequence = [request]
    ds.PerformedProcedureCodeSequence = [_code("PPX", "99ORDERS", study.free_text()[:60])]
    references = _evidence(ds, study)
    items = [
        _item("PNAME", ("121029", "DCM", "Subject Name"), PersonName=p.person.pn),
        _item("TEXT", ("121030", "DCM", "Subject ID"), TextValue=p.patient_id),
        _item("DATE", ("121031", "DCM", "Subject Birth Date"), Date=p.birth_date),
        _age_item(),
        _item("PNAME", ("121008", "DCM", "Person Observer Name"), PersonName=p.operator.pn),
        _item("TEXT", ("121106", "DCM", "Comment"), TextValue=study.free_text()),
        _item(
            "CODE",
            ("121071", "DCM", "Finding"),
            ConceptCodeSequence=[_code("F99", "99LOCAL", f"finding {p.person.pn}")],
        ),
        _item(
            "CODE",
            ("363698007", "SCT", "Finding Site"),
            ConceptCodeSequence=[_code(_SCT_BODY["HEAD"][0], "SCT", _SCT_BODY["HEAD"][1])],
        ),
    ]
    study.rng.shuffle(items)
    for item in items:
        item.RelationshipType = "CONTAINS"
    ds.ContentSequence = items
    ds.ContentTemplateSequence = [Dataset()]
    ds.ContentTemplateSequence[0].MappingResource = "DCMR"
    ds.ContentTemplateSequence[0].TemplateIdentifier = "2000"
    study.save(ds, "sr", syntax, references=references)


def _evidence(ds: Dataset, study: _Study) -> tuple[str, ...]:
    by_series: dict[str, list[tuple[str, str]]] = {}
    for sop_class, sop in study.images:
        by_series.setdefault("images", []).append((sop_class, sop))
    series = Dataset()
    series.SeriesInstanceUID = study.series_uid_of.get("ct", study.uid("series", "ct"))
    series.ReferencedSOPSequence = [
        _ref(sop_class, sop) for sop_class, sop in by_series.get("images", [])
    ]
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study_uid
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    return tuple(sop for _, sop in study.images)


def _ref(sop_class: str, sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop
    return item


def _item(value_type: str, concept: tuple[str, str, str], **values: object) -> Dataset:
    item = Dataset()
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(*concept)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _age_item() -> Dataset:
    measured = Dataset()
    measured.NumericValue = "93"
    measured.MeasurementUnitsCodeSequence = [_code("a", "UCUM", "year")]
    return _item("NUM", ("121033", "DCM", "Subject Age"), MeasuredValueSequence=[measured])


def _gsps(study: _Study, syntax: str) -> None:
    p = study.patient
    ds = Dataset()
    study.common(ds, "1.2.840.10008.5.1.4.1.1.11.1", "PR", "pr")
    name = p.ascii_name.upper()
    layers = [label for label in (f"{name}_NOTES", f"{name}_REVIEW", name) if len(label) <= 16]
    layer = study.rng.choice(["LAYER1", *layers])
    ds.ContentLabel = "".join(c for c in layer if c.isalnum() or c == "_")[:16]
    ds.ContentDescription = f"annotations for {study.spelled(p.person)}"
    ds.ContentCreatorName = p.operator.pn
    ds.PresentationCreationDate, ds.PresentationCreationTime = "20230106", "120000"
    ds.InstanceNumber, ds.PresentationLUTShape = 1, "IDENTITY"
    references = tuple(sop for _, sop in study.images)
    series = Dataset()
    series.SeriesInstanceUID = study.series_uid_of.get("ct", study.uid("series", "ct"))
    series.ReferencedImageSequence = [_ref(c, s) for c, s in study.images]
    ds.ReferencedSeriesSequence = [series]
    layer_item = Dataset()
    layer_item.GraphicLayer, layer_item.GraphicLayerOrder = ds.ContentLabel, 1
    layer_item.GraphicLayerDescription = study.free_text()[:64]
    ds.GraphicLayerSequence = [layer_item]
    text = Dataset()
    text.UnformattedTextValue = study.free_text()
    text.AnchorPointAnnotationUnits, text.AnchorPoint = "PIXEL", [1.0, 1.0]
    text.AnchorPointVisibility = "Y"
    annotation = Dataset()
    annotation.GraphicLayer = ds.ContentLabel
    annotation.ReferencedImageSequence = [_ref(c, s) for c, s in study.images]
    annotation.TextObjectSequence = [text]
    ds.GraphicAnnotationSequence = [annotation]
    ds.DisplayedAreaSelectionSequence = [Dataset()]
    area = ds.DisplayedAreaSelectionSequence[0]
    area.DisplayedAreaTopLeftHandCorner, area.DisplayedAreaBottomRightHandCorner = [1, 1], [8, 8]
    area.PresentationSizeMode, area.PresentationPixelSpacing = "SCALE TO FIT", [1, 1]
    study.save(ds, "gsps", syntax, references=references)


def _rtstruct(study: _Study, syntax: str) -> None:
    p = study.patient
    ds = Dataset()
    study.common(ds, "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", "rt")
    ds.StructureSetLabel = f"{_plain(p.person.family)[:8]} plan"
    ds.StructureSetName = study.free_text()[:64]
    ds.StructureSetDate, ds.StructureSetTime = "20230106", "120000"
    contour_images = [_ref(c, s) for c, s in study.images if c == CTImageStorage]
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = study.series_uid_of.get("ct", study.uid("series", "ct"))
    rt_series.ContourImageSequence = contour_images
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    rt_study.ReferencedSOPInstanceUID = study.study_uid
    rt_study.RTReferencedSeriesSequence = [rt_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = study.frame_uid
    frame.RTReferencedStudySequence = [rt_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, study.frame_uid
    roi.ROIName, roi.ROIGenerationAlgorithm = f"GTV {study.spelled(p.person)}", "MANUAL"
    ds.StructureSetROISequence = [roi]
    contour = Dataset()
    contour.ContourGeometricType, contour.NumberOfContourPoints = "POINT", 1
    contour.ContourData = [0.0, 0.0, 0.0]
    contour.ContourImageSequence = contour_images[:1]
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = 1, [255, 0, 0]
    roi_contour.ContourSequence = [contour]
    ds.ROIContourSequence = [roi_contour]
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", p.operator.pn
    ds.RTROIObservationsSequence = [observation]
    ds.ApprovalStatus = "UNAPPROVED"
    references = tuple(sop for c, sop in study.images if c == CTImageStorage)
    study.save(ds, "rtstruct", syntax, references=references)


def _pdf(study: _Study, syntax: str) -> None:
    p = study.patient
    ds = Dataset()
    study.common(ds, "1.2.840.10008.5.1.4.1.1.104.1", "DOC", "doc")
    ds.DocumentTitle = f"Report {study.spelled(p.person)}"
    ds.MIMETypeOfEncapsulatedDocument, ds.BurnedInAnnotation = "application/pdf", "YES"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ConversionType, ds.AcquisitionDateTime = "WSD", "20230106120000"
    text = f"4 0 obj<</Author({p.person.pn})/Subject({p.patient_id})>>endobj\n%%EOF\n".encode()
    document = _PDF + text
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    study.save(ds, "pdf", syntax, expected="left out")


def _private_implicit(study: _Study) -> None:
    """A meta-less implicit VR MR image with a private sequence (read as UN bytes)."""
    ds = Dataset()
    sop = study.common(ds, "1.2.840.10008.5.1.4.1.1.4", "MR", "mr")
    study.anatomy(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
    ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", 10, 500
    ds.EchoTrainLength, ds.MagneticFieldStrength, ds.BurnedInAnnotation = 1, 3, "NO"
    ds.SequenceName = "*tse2d1"
    study.image_plane(ds)
    study.pixels(ds, overlay=True)
    study.images.append(("1.2.840.10008.5.1.4.1.1.4", sop))
    study.save(ds, "mr-nometa", ImplicitVRLittleEndian, meta=False)


_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
_SYNTAXES += (DeflatedExplicitVRLittleEndian,)
Builder = Callable[[_Study, str], None]


def _person(rng: random.Random, kind: str) -> tuple[Person, tuple[str, ...], str]:
    """The patient's name, its other spellings, and its form in a Latin-1 file."""
    if kind == "cyrillic":
        family, given = rng.choice(_CYRILLIC_PEOPLE)
        forms = _cyrillic_forms(family, given)
        system = rng.choice(["ICAO 9303", "German", "English"])
        latin = Person(_romanized(family, system).upper(), _romanized(given, system).upper())
        person = latin if rng.random() < 0.5 else Person(family, given)  # PN in Latin, or not
        return person, forms, latin.pn
    if kind == "japanese":
        family, given, *kanji_kana = rng.choice(_JAPANESE_PEOPLE)
        kanji, kana = tuple(kanji_kana[:2]), tuple(kanji_kana[2:])
        person = Person(family, given, "^".join(kanji), "^".join(kana))
        forms = _japanese_forms((kanji[0], kanji[1]), (kana[0], kana[1]))
        return person, forms, f"{family}^{given}"
    pool = {"term": _TERMS, "short": _SHORT}.get(kind, _FAMILIES)
    person = Person(rng.choice(pool), rng.choice(_GIVEN))
    return person, (), _plain(person.pn)


def _patient(rng: random.Random, index: int, kind: str) -> Patient:
    person, forms, latin_pn = _person(rng, kind)
    digits = f"{rng.randrange(10**6, 10**7):07d}"  # 6+ digits without the leading zeros
    year, month, day = rng.randrange(1925, 1934), rng.randrange(1, 13), rng.randrange(1, 29)
    operator_family, operator_given = rng.choice(_STAFF).split("^")
    return Patient(
        person=person,
        patient_id=f"00-{digits[:3]}-{digits[3:]}",
        birth_date=f"{year:04d}{month:02d}{day:02d}",
        accession=f"ACC{rng.randrange(10**8):08d}",
        institution=rng.choice(_INSTITUTIONS),
        address=f"{rng.choice(['Kerkstraat', 'Hauptstraße', 'Rue Haute'])} {rng.randrange(1, 99)}",
        operator=Person(operator_family, operator_given),
        employee_number=f"E{rng.randrange(10**6):06d}",
        subject=f"SUBJ{index + 1:02d}",
        session=f"SUBJ{index + 1:02d}_E1",
        defined_term=person.family if kind == "term" else None,
        relative=Person(person.family, rng.choice(_RELATIVES)),
        forms=forms,
        latin_pn=latin_pn,
    )


def build_corpus(root: Path, seed: int) -> Corpus:
    """Write the corpus for ``seed`` under ``root``; one folder per study (five studies:
    patients named like a defined term, with a two-letter surname, with a long Latin name,
    a Russian and a Japanese one)."""
    rng = random.Random(seed)
    studies: dict[str, Patient] = {}
    files: list[SourceFile] = []
    uids: set[str] = set()
    for index, kind in enumerate(("term", "short", "long", "cyrillic", "japanese")):
        patient = _patient(rng, index, kind)
        study = _Study(rng, root, index, patient)
        syntax = rng.choice(_SYNTAXES)
        _ct(study, ExplicitVRLittleEndian, overlay=True, relative=True)
        _ct(study, syntax, overlay=rng.random() < 0.5)
        _latin1_ct(study)
        _jpeg(study, rng.choice([JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless]))
        _enhanced_mr(study, rng.choice(_SYNTAXES))
        _private_implicit(study)
        builders: list[Builder] = [_sr, _gsps, _rtstruct, _pdf]
        rng.shuffle(builders)
        for build in builders:
            build(study, rng.choice(_SYNTAXES))
        studies[study.folder.name] = patient
        files += study.files
        uids |= study.made
    meanings = frozenset(meaning for _, meaning in _SCT_BODY.values())
    meanings |= {"Diagnostic Imaging Report", "Finding Site", "year"}
    return Corpus(root, studies, tuple(files), frozenset(uids), meanings)
