"""Facts about coded values that the engine and the leak check both rely on.

* the coding schemes whose codes are standard (PS3.16 section 8), and what makes a code
  value well-formed in them;
* the meaning the standard gives a code (pydicom's public code dictionary, PS3.16);
* DICOM defined terms: values of CS attributes (body parts, modalities, image types, SR
  enumerations, ...) that are words of the standard, not data about anyone -- a patient
  named HEAD does not make BodyPartExamined ``HEAD`` a leak.

These are facts, not matchers: the engine's scrubber and the leak check each match text
their own way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

from pydicom.sr.codedict import Collection, codes

__all__ = [
    "DEFINED_TERMS",
    "STANDARD_SCHEMES",
    "is_defined_term",
    "is_plausible_meaning",
    "is_standard_code",
    "is_standard_meaning",
    "standard_meaning",
]

#: Coding schemes of PS3.16 Table 8-1 whose codes carry no local (institution) meaning.
#: Local schemes -- ``99...``, ``L``, ``LOCAL`` and anything not listed -- are not standard.
STANDARD_SCHEMES = frozenset(
    {"DCM", "SCT", "SRT", "SNM3", "LN", "UCUM", "FMA", "RADLEX", "NCIt", "NCIT", "UMLS"}
    | {"ICD10", "I10", "I10P", "I9C", "I9", "ICD10PCS", "ICDO3", "ICD11", "ACR", "MSH", "MDC"}
    | {"NEU", "BARI", "RXNORM", "PUBCHEM_CID", "NDC", "ITIS_TSN", "IBSI", "NCBITaxon", "UBERON"}
    | {"DCMUID", "RFC5646", "ISO3166_1", "ISO639_1", "ISO639_2", "NICIP", "ATC", "HPC"}
    | {"MGI", "C4", "C5", "CD2", "ACR-TIRADS", "CIDO", "UNS", "SCT-RT", "ICDO"}
)
#: What a code value looks like in schemes with a known form; other standard schemes only
#: need a short value without spaces that contains a digit, or a UCUM unit.
_VALUE_FORMS: Mapping[str, re.Pattern[str]] = {
    "DCM": re.compile(r"\d{1,8}|[A-Z][A-Z0-9_]{0,15}"),
    "SCT": re.compile(r"\d{6,18}|[A-Z]-[0-9A-Z]{4,6}"),
    "SRT": re.compile(r"[A-Z]-[0-9A-Z]{4,6}|\d{6,18}"),
    "LN": re.compile(r"(LP|LA)?\d{1,7}-\d"),
    "FMA": re.compile(r"\d{1,8}"),
    "RADLEX": re.compile(r"RID\d{1,8}"),
    "NCIt": re.compile(r"C\d{1,8}"),
    "UMLS": re.compile(r"C\d{7}"),
}
_GENERIC_VALUE = re.compile(r"[0-9A-Za-z._:/\-\[\]{}()^*%']{1,32}")

#: Defined terms of CS attributes that are also ordinary words or short letter groups.
#: Body parts (PS3.16 Annex L) are completed from the anatomic-region context groups.
_WORDS = """
ABDOMEN ABDOMENPELVIS ADRENAL ANKLE AORTA ARM AXILLA BACK BLADDER BONE BRAIN BREAST BRONCHUS
BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM CSPINE CTSPINE CERVIX CHEEK CHEST CHESTABDOMEN
CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX COLON CORNEA CORONARYARTERY DUODENUM EAR ELBOW
ENTIREBODY ESOPHAGUS EXTREMITY EYE EYELID FACE FEMUR FINGER FOOT GALLBLADDER HAND HEAD HEADNECK
HEART HIP HUMERUS IAC ILEUM ILIUM JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LSPINE LSSPINE LUNG
MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY
PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX PROSTATE RADIUS RADIUSULNA RECTUM RIB SCALP
SCAPULA SCLERA SCROTUM SHOULDER SKULL SPINE SPLEEN STERNUM STOMACH SUBMANDIBULAR TMJ TESTIS
THIGH THUMB THYMUS THYROID TIBIA TIBIAFIBULA TOE TONGUE TRACHEA TSPINE TLSPINE ULNA URETER
URETHRA UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA
CT MR PT NM US XA RF CR DX MG IO PX OT SC SR KO PR SEG RTSTRUCT RTPLAN RTDOSE RTIMAGE RTRECORD
DOC ECG EPS HD ES XC OP OPT SM GM BDUS IVUS OAM AU BI DG LS OPM OPV REG RWV SMR BMD M3D AR
ORIGINAL DERIVED PRIMARY SECONDARY AXIAL LOCALIZER REFORMATTED MPR MIP MINIP VOLUME MOSAIC
OTHER MAGNITUDE PHASE REAL IMAGINARY MIXED ND NORM DIFFUSION ADC TRACEW FA PROJECTION IMAGE
SUBTRACTION POST_PROCESSED HELICAL SPIRAL SCOUT STANDARD SOFT DETAIL SHARP SMOOTH LUNG
MONOCHROME1 MONOCHROME2 RGB YBR_FULL YBR_FULL_422 YBR_ICT YBR_RCT PALETTE COLOR
HFS HFP FFS FFP HFDR HFDL FFDR FFDL AP PA LL RL LAT LLO RLO LATERAL OBLIQUE
SE IR GR EP RM SK MTC SS TRSS SP MP OSP NONE PER RG CG PPG FC PFF PFP FS 2D 3D
CONTAINER TEXT CODE NUM DATE TIME DATETIME PNAME UIDREF COMPOSITE WAVEFORM SCOORD SCOORD3D
TCOORD CONTAINS HAS PROPERTIES OBS CONTEXT ACQ CONCEPT MOD INFERRED FROM SELECTED
SEPARATE CONTINUOUS PARTIAL COMPLETE VERIFIED UNVERIFIED PERSON DEVICE
POINT POLYLINE INTERPOLATED CIRCLE ELLIPSE MULTIPOINT POLYGON PIXEL DISPLAY MATRIX IDENTITY
INVERSE LEFT RIGHT CENTER RECTANGULAR CIRCULAR POLYGONAL BITMAP SCALE FIT TRUE SIZE MAGNIFY
YES NO UNKNOWN MALE FEMALE ABSENT PRESENT EMPTY REMOVED MODIFIED UNMODIFIED
ORGAN PTV CTV GTV EXTERNAL AVOIDANCE MARKER ISOCENTER CAVITY SUPPORT FIXATION CONTROL
DOSE_REGION CONTRAST_AGENT BRACHY_CHANNEL BOLUS REGISTRATION MANUAL AUTOMATIC SEMIAUTOMATIC
PHYSICAL EFFECTIVE ERROR PLAN FRACTION BEAM BRACHY PHOTON ELECTRON NEUTRON PROTON ION STATIC
DYNAMIC GATED WHOLE BODY TOMO RECON GSPS BINARY FRACTIONAL LABELMAP SURFACE
HU US MGML Z_EFF ED EDW HU_MOD PCT OD NONE CNTS BQML GML SUV SUVBW SUVLBM SUVBSA
"""
DEFINED_TERMS = frozenset(_WORDS.split())


@cache
def _meanings() -> Mapping[tuple[str, str], tuple[str, ...]]:
    """``(scheme, code value) -> meanings`` for every code in pydicom's dictionary (PS3.16);
    one code can have several (``Head``, ``Head structure (body structure)``), shortest first.
    """
    table: dict[tuple[str, str], set[str]] = {}
    for scheme in codes.schemes():
        for code in Collection(scheme).concepts.values():
            table.setdefault((code.scheme_designator, code.value), set()).add(code.meaning)
    return {key: tuple(sorted(found, key=lambda m: (len(m), m))) for key, found in table.items()}


@cache
def _anatomy() -> frozenset[str]:
    """Words of the anatomic-region context groups, upper case (body part terms)."""
    words: set[str] = set()
    for cid in ("CID4031", "CID4030", "CID4028", "CID4040"):
        try:
            concepts = Collection(cid).concepts
        except (AttributeError, ValueError):  # pragma: no cover (a pydicom without it)
            continue
        for code in concepts.values():
            meaning = code.meaning.upper()
            words.add(re.sub(r"[^A-Z]", "", meaning))
            words.update(re.findall(r"[A-Z]{2,}", meaning))
    return frozenset(words)


def _known(scheme: str, value: str) -> tuple[str, ...]:
    scheme = "SCT" if scheme == "SRT" and value[:1].isdigit() else scheme
    return _meanings().get((scheme, value), ())


def standard_meaning(scheme: str, value: str) -> str | None:
    """The meaning PS3.16 gives code ``value`` of ``scheme`` (the shortest, when it gives
    several), if pydicom knows the code."""
    meanings = _known(scheme, value)
    return meanings[0] if meanings else None


@cache
def _meaning_words() -> frozenset[str]:
    """Every word of every meaning in PS3.16 (pydicom's code dictionary), lower case."""
    return frozenset(
        word for meanings in _meanings().values() for m in meanings for word in _words(m)
    )


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.casefold())


def is_plausible_meaning(meaning: str) -> bool:
    """True when every word of ``meaning`` is a word of PS3.16 meanings: a meaning of a
    standard code pydicom does not know may stay, a name in it may not."""
    words = _meaning_words()
    return all(word in words for word in _words(meaning))


def is_standard_meaning(scheme: str, value: str, meaning: str) -> bool:
    """True when ``meaning`` is one PS3.16 gives the code (case aside)."""
    folded = meaning.strip().casefold()
    return any(folded == known.casefold() for known in _known(scheme, value))


def is_standard_code(scheme: str, value: str) -> bool:
    """True for a code of a standard scheme whose value has that scheme's form."""
    if scheme not in STANDARD_SCHEMES:
        return False
    form = _VALUE_FORMS.get(scheme)
    if form is not None:
        return form.fullmatch(value) is not None
    return _GENERIC_VALUE.fullmatch(value) is not None and (
        scheme == "UCUM" or any(c.isdigit() for c in value)
    )


@cache
def _all_terms() -> frozenset[str]:
    return DEFINED_TERMS | _anatomy()


def is_defined_term(value: str) -> bool:
    """True when a CS value (one of its values) is a DICOM defined term."""
    return value.strip().upper() in _all_terms()
