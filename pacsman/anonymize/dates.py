"""Keyed per-subject date shifts (Retain Longitudinal Modified Dates) and age capping.

The shift is a whole number of days derived from HMAC-SHA256(key, project|subject): the
same subject always gets the same shift, so intervals between dates -- within a study and
across studies of the subject -- are preserved.  Times of day are not changed: a whole-day
shift leaves them consistent with the shifted dates.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, timedelta
from functools import lru_cache

__all__ = ["MAX_SHIFT_DAYS", "cap_age", "date_shift_days", "shift_da", "shift_dt"]

#: Shifts are in ``[-MAX_SHIFT_DAYS, -1] U [1, MAX_SHIFT_DAYS]``: never zero.
MAX_SHIFT_DAYS = 365
#: PatientAge values above 89 years are reported as this (HIPAA: "90 or older").
CAPPED_AGE = "090Y"


def date_shift_days(key: bytes, project: str, subject: str) -> int:
    """The subject's shift in days, never 0, within +/- :data:`MAX_SHIFT_DAYS`."""
    message = f"pacsman-date|{project}|{subject}".encode()
    number = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:8], "big")
    magnitude = number % MAX_SHIFT_DAYS + 1
    return magnitude if number >> 63 else -magnitude


@lru_cache(maxsize=4096)  # a study's files share their dates
def _shift_date(text: str, days: int) -> str | None:
    digits = text.replace(".", "") if len(text) == 10 else text  # ACR-NEMA YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        return (day + timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return None


def shift_da(value: str, days: int) -> str:
    """Shift every DA value of a (possibly multi-valued) string; unparsable values -> ''."""
    return "\\".join(_shift_date(v.strip(), days) or "" for v in value.split("\\"))


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of every DT value; time and UTC offset stay; partial dates -> ''."""
    shifted = []
    for text in value.split("\\"):
        text = text.strip()
        new_date = _shift_date(text[:8], days) if len(text) >= 8 else None
        shifted.append(new_date + text[8:] if new_date else "")
    return "\\".join(shifted)


def cap_age(value: str) -> str:
    """An AS value, with ages over 89 years replaced by ``090Y``."""
    text = value.strip()
    if len(text) == 4 and text[3] == "Y" and text[:3].isdigit() and int(text[:3]) > 89:
        return CAPPED_AGE
    return value
