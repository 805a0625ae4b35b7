"""Checks of one query value against its DICOM VR and C-FIND matching (PS3.4 C.2.2.2).

Each check takes the column's keyword and the cleaned, non-empty value and returns ``None`` when
the value is fine, else the message after ``column 'X': `` -- value, rule and fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta

from pacsman.queryfile._text import show

__all__ = ["VR_BY_COLUMN", "check_value"]

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
_MAX_LENGTH = {"LO": 64, "SH": 16, "CS": 16, "PN": 64}
_MULTI_VALUED = frozenset({"ImageType"})
_WILDCARDS = frozenset("*?")
_DATE_USE = "use YYYYMMDD or YYYYMMDD-YYYYMMDD"
_TIME_USE = "use HHMMSS (or HH, HHMM, HHMMSS.ffffff) or a range such as 080000-120000"
_UID_RULE = "UIDs are digits and dots, at most 64 characters"
_EXCEL_ISO = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T][\d:.]+)?")
_EXCEL_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})(?: [\d:.]+)?")
_EXCEL_SERIAL = re.compile(r"[1-7]\d{4}")
_EXCEL_NUMBER = re.compile(r"\d+(?:[.,]\d+)?[eE][+-]?\d+")
_TIME = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?")
_CS_CHARS = re.compile(r"[A-Z0-9 _*?]*")


def check_value(column: str, value: str) -> str | None:
    """Check ``value`` for ``column``; ``None`` if fine, else the message (value, rule, fix)."""
    vr = VR_BY_COLUMN[column]
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
    if all(re.fullmatch(r"\d{8}", p) for p in parts) and (dash or len(parts) == 1):
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
    if re.fullmatch(r"[+-]?\d+", value):
        if len(value) > 12 or not -(2**31) <= int(value) < 2**31:
            return f"{show(value)} is out of range; {column} is a whole number up to 2147483647"
        return None
    if re.fullmatch(r"[+-]?\d+\.0*", value):
        return f"{show(value)} is not a whole number; use {value.split('.')[0]}"
    return f"{show(value)} is not a whole number; {column} matches one integer, e.g. 3"


def _check_text(column: str, vr: str, value: str) -> str | None:
    if _WILDCARDS & set(value) and set(value) <= _WILDCARDS | {"\\", " "}:
        if value == "*":
            return "a bare '*' matches everything; leave the cell empty or narrow it"
        return f"{show(value)} is only wildcards; leave the cell empty or narrow it"
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


_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "DA": _check_date,
    "TM": _check_time,
    "UI": _check_uid,
    "IS": _check_integer,
}
