"""Checks of one query value against its DICOM VR and C-FIND matching (PS3.4 C.2.2.2).

Each check takes the column's keyword and the cleaned, non-empty value and returns ``None`` when
the value is fine, else the message after ``column 'X': `` -- value, rule and fix.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import date, timedelta

from pacsman.queryfile._text import show

__all__ = [
    "ASCII_VRS",
    "MODALITY_TERMS",
    "PHI_COLUMNS",
    "VR_BY_COLUMN",
    "check_value",
    "not_ascii",
    "value_warning",
]

#: The value representation of every query column (PS3.6), which decides its rules.
VR_BY_COLUMN: dict[str, str] = {
    "StudyDate": "DA",
    "StudyTime": "TM",
    "PatientID": "LO",
    "PatientName": "PN",
    "PatientBirthDate": "DA",
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "SeriesDescription": "LO",
    "ProtocolName": "LO",
    "ImageType": "CS",
    "AccessionNumber": "SH",
    "Modality": "CS",
    "StudyDescription": "LO",
    "SeriesNumber": "IS",
    "AcquisitionDate": "DA",
    "DeviceSerialNumber": "LO",
    "SequenceName": "SH",
}
#: Columns whose values identify a patient: messages locate them but never quote them, because
#: messages reach terminals, logs and journald.
PHI_COLUMNS = frozenset({"PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"})


_MAX_LENGTH = {"LO": 64, "SH": 16, "CS": 16, "PN": 64}
_MULTI_VALUED = frozenset({"ImageType"})
_WILDCARDS = frozenset("*?")
_DATE_USE = "use YYYYMMDD or YYYYMMDD-YYYYMMDD"
_TIME_USE = "use HHMMSS (or HH, HHMM, HHMMSS.ffffff) or a range such as 080000-120000"
_UID_RULE = "UIDs are digits and dots, at most 64 characters"
# Every pattern is ASCII-only: without re.ASCII, \d also matches full-width and other
# Unicode digits ('２０２４'), which DICOM's DA, TM, IS and UI values cannot hold.
_EXCEL_ISO = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T][\d:.]+)?", re.ASCII)
_EXCEL_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})(?: [\d:.]+)?", re.ASCII)
_EXCEL_SERIAL = re.compile(r"[1-7]\d{4}", re.ASCII)
_EXCEL_NUMBER = re.compile(r"\d+(?:[.,]\d+)?[eE][+-]?\d+", re.ASCII)
_TIME = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?", re.ASCII)
_DATE = re.compile(r"\d{8}", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_INTEGER_POINT_ZERO = re.compile(r"[+-]?\d+\.0*", re.ASCII)
_CS_CHARS = re.compile(r"[A-Z0-9 _*?]*")
#: VRs whose values use the default repertoire (ASCII) whatever SpecificCharacterSet says.
ASCII_VRS = frozenset({"DA", "TM", "UI", "IS", "CS"})
#: PN separators: a value made of them and wildcards alone matches every name.
_PN_SEPARATORS = frozenset("^= \\")


def check_value(column: str, value: str) -> str | None:
    """Check ``value`` for ``column``; ``None`` if fine, else the message (value, rule, fix)."""
    vr = VR_BY_COLUMN[column]
    if vr in ASCII_VRS and not value.isascii():
        return not_ascii(column, vr, value)
    if vr in ("DA", "TM", "UI", "IS"):
        if _WILDCARDS & set(value):
            return f"{show(value)} has a wildcard; {_NO_WILDCARD_FIX[vr]}"
        return _CHECKS[vr](column, value)
    return _check_text(column, vr, value)


_NO_WILDCARD_FIX = {
    "DA": "dates do not take '*' or '?': use a range such as 20230101-20231231",
    "TM": "times do not take '*' or '?': use a range such as 080000-120000",
    "UI": "UIDs match exactly: give whole UIDs, several separated by '\\' if needed",
    "IS": "this column matches one whole number exactly, e.g. 3",
}


def _check_date(column: str, value: str) -> str | None:
    if value == "-":
        return "a bare '-' matches every date; leave the cell empty or give a start or end"
    start, dash, end = value.partition("-")
    parts = [p for p in (start, end) if p]
    if all(_DATE.fullmatch(p) for p in parts) and (dash or len(parts) == 1):
        for part in parts:
            if _to_date(part) is None:
                return f"{show(part)} is not a real calendar date; {_DATE_USE}"
        if dash and len(parts) == 2 and start > end:
            return f"range {show(value)} ends before it starts; write START-END, earliest first"
        return None
    excel = _excel_range(value)
    if excel:
        return (
            f"{show(value)} is not a DICOM date; Excel may have reformatted it; "
            f"use YYYYMMDD (e.g. {excel}) and format the column as Text"
        )
    return f"{show(value)} is not a date; {_DATE_USE}"


def _to_date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _excel_range(value: str) -> str | None:
    """The YYYYMMDD spelling of a date (or range) Excel displays its own way, if it is one."""
    single = _excel_date(value)
    if single:
        return single
    for i, ch in enumerate(value):
        if ch == "-" and 0 < i < len(value) - 1:
            left, right = _excel_date(value[:i].strip()), _excel_date(value[i + 1 :].strip())
            if left and right:
                return f"{left.split()[0]}-{right.split()[0]}"
    return None


def _excel_date(text: str) -> str | None:
    """E.g. ``20230131`` for ``31/01/2023``; ``20230201 or 20230102`` when day/month is moot."""
    candidates: list[date | None] = []
    if match := _EXCEL_ISO.fullmatch(text):
        candidates = [_make_date(match.group(1), match.group(2), match.group(3))]
    elif match := _EXCEL_DMY.fullmatch(text):
        first, second, year = match.groups()
        candidates = [_make_date(year, second, first), _make_date(year, first, second)]
    elif _EXCEL_SERIAL.fullmatch(text):
        candidates = [date(1899, 12, 30) + timedelta(days=int(text))]
    found = sorted({d.strftime("%Y%m%d") for d in candidates if d is not None})
    return " or ".join(found) or None


def _make_date(year: str, month: str, day: str) -> date | None:
    return _to_date(f"{year}{int(month):02d}{int(day):02d}")


def _check_time(column: str, value: str) -> str | None:
    if value == "-":
        return "a bare '-' matches every time; leave the cell empty or give a start or end"
    problem = _time_range_problem(value)
    if problem is None:
        return None
    if ":" in value and _time_range_problem(value.replace(":", "")) is None:
        fixed = value.replace(":", "")
        return f"{show(value)} is not a DICOM time; write it without colons: {fixed}"
    return f"{show(value)} {problem}"


def _time_range_problem(value: str) -> str | None:
    parts = value.split("-")
    if len(parts) > 2 or not any(parts):
        return f"is not a time; {_TIME_USE}"
    for part in filter(None, parts):
        match = _TIME.fullmatch(part)
        if match is None:
            return f"is not a time; {_TIME_USE}"
        hh, mm, ss = (int(g or 0) for g in match.groups())
        if hh > 23 or mm > 59 or ss > 59:
            return "is not a valid time: hours run 00-23, minutes and seconds 00-59"
    if len(parts) == 2 and all(parts):
        common = min(len(parts[0]), len(parts[1]))
        if parts[0][:common] > parts[1][:common]:
            return "ends before it starts; write START-END, earliest first"
    return None


def _check_uid(column: str, value: str) -> str | None:
    if _EXCEL_NUMBER.fullmatch(value):
        return (
            f"{show(value)} is a number, not a UID: Excel converted the UIDs and lost digits; "
            "format the column as Text and paste the UIDs again"
        )
    uids = value.split("\\")
    if "" in uids:
        return f"{show(value)} has an empty value; separate several UIDs with a single '\\'"
    for uid in uids:
        problem = _uid_problem(uid)
        if problem:
            return problem
    return None


def _uid_problem(uid: str) -> str | None:
    if len(uid) > 64:
        return f"UID {show(uid)} is {len(uid)} characters long; {_UID_RULE}"
    bad = sorted(set(re.sub(r"[0-9.]", "", uid)))
    if bad:
        chars = ", ".join(show(ch) for ch in bad)
        return f"UID {show(uid)} holds {chars}; {_UID_RULE}"
    components = uid.split(".")
    if "" in components:
        return f"UID {show(uid)} has an empty component ('..' or a dot at an end); {_UID_RULE}"
    zeros = [c for c in components if len(c) > 1 and c.startswith("0")]
    if zeros:
        fixed = show(zeros[0].lstrip("0") or "0")
        return (
            f"UID {show(uid)} has a component with a leading zero ({show(zeros[0])}): write {fixed}"
        )
    if len(components) < 2 or components[0] not in ("0", "1", "2"):
        return (
            f"{show(uid)} is not a UID: UIDs start with 0., 1. or 2. and have several "
            "components, e.g. 1.2.840.10008...; is it in the right column?"
        )
    return None


def _check_integer(column: str, value: str) -> str | None:
    if _INTEGER.fullmatch(value):
        if len(value) > 12 or not -(2**31) <= int(value) < 2**31:
            return f"{show(value)} is out of range; {column} is a whole number up to 2147483647"
        return None
    if _INTEGER_POINT_ZERO.fullmatch(value):
        return f"{show(value)} is not a whole number; use {value.split('.')[0]}"
    return f"{show(value)} is not a whole number; {column} matches one integer, e.g. 3"


def _check_text(column: str, vr: str, value: str) -> str | None:
    separators = _PN_SEPARATORS if vr == "PN" else frozenset("\\ ")
    if set(value) <= _WILDCARDS | separators and (vr == "PN" or _WILDCARDS & set(value)):
        if value == "*":
            return "a bare '*' matches everything; leave the cell empty or narrow it"
        if set(value) <= _WILDCARDS:
            return f"{show(value)} is only wildcards; leave the cell empty or narrow it"
        if _WILDCARDS & set(value):
            return (
                f"{show(value)} is only wildcards and separators; leave the cell empty or narrow it"
            )
        return f"{show(value)} holds only name separators; give a name or leave the cell empty"
    if "\\" in value and column not in _MULTI_VALUED:
        return f"{show(value)} contains '\\', which separates DICOM values; {_BACKSLASH_FIX[vr]}"
    for part in value.split("\\"):
        problem = _name_problem(part) if vr == "PN" else _text_problem(column, vr, part)
        if problem:
            return problem
    return None


_BACKSLASH_FIX = {
    "PN": "separate family and given names with '^' (e.g. DOE^JANE)",
    "CS": "put one value per row",
    "LO": "remove it",
    "SH": "remove it",
}


def _text_problem(column: str, vr: str, part: str) -> str | None:
    limit = _MAX_LENGTH[vr]
    if len(part) > limit:
        return (
            f"{show(part)} is {len(part)} characters long; {column} (VR {vr}) holds at most "
            f"{limit}: shorten it, ending with '*' to match the rest"
        )
    if vr == "CS" and not _CS_CHARS.fullmatch(part):
        if _CS_CHARS.fullmatch(part.upper()):
            fix = f"DICOM code strings are upper case: use '{part.upper()}'"
            return f"{show(part)} is lower case; {fix}"
        return f"{show(part)} may only hold A-Z, 0-9, spaces, '_' and the wildcards '*' and '?'"
    return None


def _name_problem(value: str) -> str | None:
    groups = value.split("=")
    if len(groups) > 3:
        return f"{show(value)} has more than 3 '='-separated groups; a name has at most 3"
    for group in groups:
        if len(group) > 64:
            return (
                f"{show(group)} is {len(group)} characters long; a name group holds at most "
                "64: shorten it, ending with '*' to match the rest"
            )
        if group.count("^") > 4:
            return f"{show(group)} has more than 5 '^'-separated parts; a name has at most 5"
    return None


_ASCII_WHAT = {"DA": "dates", "TM": "times", "UI": "UIDs", "IS": "numbers", "CS": "codes"}


def not_ascii(column: str, vr: str, value: str) -> str:
    """The message for a DA/TM/UI/IS/CS value with a character outside ASCII."""
    what = f"DICOM {_ASCII_WHAT[vr]} ({column}, VR {vr}) use ASCII characters only"
    if column in PHI_COLUMNS:  # patient data: never quote it, not even one character
        return f"the value holds characters that are not ASCII (full-width digits?); {what}"
    char = next(ch for ch in value if not ch.isascii())
    ascii_form = unicodedata.normalize("NFKC", value)
    fix = f": write {show(ascii_form)}" if ascii_form.isascii() else ": retype it"
    return f"{show(value)} holds {show(char)} (U+{ord(char):04X}), which is not ASCII; {what}{fix}"


#: Modality (0008,0060) defined terms: DICOM PS3.3 C.7.3.1.1.1 (CID 33, 2024), then the
#: retired terms, still found in old archives.
MODALITY_TERMS = frozenset(
    """ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID
    GM HC HD IO IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV
    OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD
    RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF""".split()  # noqa: SIM905 - a table
)
#: What people write for a modality, and the defined term they mean.
_MODALITY_SYNONYMS = {
    "MRI": "MR",
    "PET": "PT",
    "CAT": "CT",
    "SPECT": "NM",
    "XR": "CR' or 'DX",
    "XRAY": "CR' or 'DX",
    "X RAY": "CR' or 'DX",
    "MAMMO": "MG",
    "ULTRASOUND": "US",
    "ECHO": "US",
    "RTSS": "RTSTRUCT",
    "PETCT": "PT' and 'CT",
}


def value_warning(column: str, value: str) -> str | None:
    """A warning for a valid value that is probably not what was meant; ``None`` if none.

    Today: a Modality outside the defined terms of PS3.3 C.7.3.1.1.1 (``XYZ``, ``MRI``).
    """
    if column != "Modality" or _WILDCARDS & set(value) or value in MODALITY_TERMS:
        return None
    guess = _MODALITY_SYNONYMS.get(value)
    fix = f"did you mean '{guess}'?" if guess else "check the spelling"
    return (
        f"{show(value)} is not a Modality defined term (DICOM PS3.3 C.7.3.1.1.1, e.g. CT, MR, "
        f"PT, US, DX, MG, SR); {fix} (a PACS matches it as written: it may find nothing)"
    )


_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "DA": _check_date,
    "TM": _check_time,
    "UI": _check_uid,
    "IS": _check_integer,
}
