"""Local re-check of C-FIND answers against query keys (PS3.4 C.2.2.2 matching).

PACSes differ in which optional keys they honour.  pacsman re-checks every answer locally so
that a PACS that ignores, say, ``ProtocolName`` cannot widen a research pull.  The local check is
deliberately lenient where the standard leaves room (case, spaces): it only ever narrows what
the PACS already matched.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["matches"]

_RANGE_KEYS = frozenset({"StudyDate", "StudyTime", "PatientBirthDate", "AcquisitionDate"})
_UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID"})


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _in_range(pattern: str, value: str, key: str) -> bool:
    low, _, high = pattern.partition("-")
    if key == "StudyTime":
        value, low, high = value.split(".")[0], low.split(".")[0], high.split(".")[0]
        value = value.ljust(6, "0")
        low = low.ljust(6, "0") if low else ""
        high = high.ljust(6, "9") if high else ""
    return (not low or value >= low) and (not high or value <= high)


def matches(key: str, pattern: str, value: str) -> bool:
    """True when ``value`` (as the PACS returned it) satisfies the query ``pattern``."""
    pattern, value = pattern.strip(), value.strip()
    if not pattern:
        return True
    if key in _UID_KEYS:
        return value in pattern.split("\\")
    if key in _RANGE_KEYS and "-" in pattern:
        return bool(value) and _in_range(pattern, value, key)
    if key == "SeriesNumber":
        return value.lstrip("0") == pattern.lstrip("0")
    if "*" in pattern or "?" in pattern:
        return _wildcard(pattern).fullmatch(value) is not None
    return " ".join(pattern.split()).casefold() == " ".join(value.split()).casefold()
