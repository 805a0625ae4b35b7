"""The engine's scrubber: text cleaned of this patient's identifiers (the *clean* action).

Two passes, so that a cleaned value never holds what the leak check would flag:

1. its own word rule, which shares no code with the leak check's matcher:

   * text read as Latin-1 that is really UTF-8 is decoded again first;
   * a **word** (a run of letters) goes when its parts -- split at lower -> upper case
     changes, as in ``JohnSmith`` or ``MRIMuller`` -- contain a name part, compared in
     ASCII without accents and case (``Müller``, ``Mueller``, ``MULLER``); in scripts
     without case, when the word contains a name part;
   * **IDs** go with any separators between their characters; **institution** names as
     a run of their words;
   * **dates** go in every written form (``1952-03-14``, ``14.03.52``, ``14-Mar-1952``,
     ``March 14, 1952``, ``19520314``), whoever's date they are, and so do UID-like
     strings and runs of 6+ digits;

2. then whatever the leak check's matcher (:class:`._leakmatch.Matcher`, the ``guard``)
   still finds is cut out -- every spelling of a name (:mod:`._spelling`: romanizations
   of Cyrillic and Japanese names, a Latin name in Cyrillic text...), IDs, dates -- and a
   value it still flags after that becomes empty (a dummy where the attribute is Type 1).

Text that was UTF-8 read as Latin-1 is given back the same way, so the file's bytes
stay as they were around what was cut.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

__all__ = ["Guard", "Scrubber"]


class Guard(Protocol):
    """The leak check's matcher, as far as the scrubber needs it."""

    def first(self, text: str) -> object | None: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...


_GERMAN = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ø": "oe", "å": "aa", "æ": "ae"}
_STRIP = {"ß": "ss", "ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th"}
_WORDS = re.compile(r"[^\W\d_]+")
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[^\W\d_]+")
_MONTH = (
    r"(?:jan|feb|m[aä]r|apr|ma[iy]|mei|jun|jul|aug|sep|o[ck]t|nov|de[cz]|janv|f[eé]v|avr"
    r"|juin|juil|ao[uû]t|d[eé]c|mrt|ene|abr|ago|dic|gen|giu|lug|ott)[a-zäéû]*\.?"
)
_GENERIC = re.compile(
    r"\d+(?:\.\d+){3,}"  # UID-like
    r"|(?<!\d)\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?!\d)|(?<!\d)\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}(?!\d)"
    rf"|(?<!\d)\d{{1,2}}(?:st|nd|rd|th)?[\s.\-/]*{_MONTH}[\s.\-/,]*\d{{2,4}}(?!\d)"
    rf"|\b{_MONTH}[\s.\-/]*\d{{1,2}}(?:st|nd|rd|th)?,?[\s.\-/]*\d{{2,4}}(?!\d)"
    rf"|(?<!\d)\d{{4}}[\s.\-/]*{_MONTH}[\s.\-/]*\d{{1,2}}(?!\d)"
    r"|\d{6,}",  # long digit runs (record numbers, YYYYMMDD)
    re.IGNORECASE,
)


def _ascii(text: str, table: dict[str, str]) -> str:
    """Lower case, special letters spelled out, accents dropped; non-Latin kept as is."""
    lowered = "".join(table.get(c, c) for c in text.lower())
    plain = unicodedata.normalize("NFKD", lowered).encode("ascii", "ignore").decode()
    return plain if len(plain) * 2 >= len(lowered) else lowered


def _spellings(part: str) -> set[str]:
    spellings = {_ascii(part, _STRIP), _ascii(part, _GERMAN)}
    spellings |= {re.sub("([aou])e", r"\1", s) for s in spellings}
    return {s for s in spellings if len(s) >= 2}


def _fix_encoding(text: str) -> tuple[str, bool]:
    """UTF-8 read as Latin-1 decoded again (and whether it was); decomposed accents
    composed (NFC)."""
    if text.isascii():
        return text, False
    repaired = False
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        text, repaired = text.encode("latin-1").decode("utf-8"), True
    return unicodedata.normalize("NFC", text), repaired


def _as_read(text: str, repaired: bool) -> str:
    """``text`` as the file held it: UTF-8 read as Latin-1 when it was repaired."""
    return text.encode("utf-8").decode("latin-1") if repaired else text


_GUARD_ROUNDS = 3


def _loose(value: str) -> str | None:
    """A pattern for ``value``'s letters and digits with any separators between them."""
    chars = [c for c in value.lower() if c.isalnum()]
    if not chars:
        return None
    zeros = r"(?:0[\s\-_./:#]*)*" if chars[0].isdigit() else ""  # written with leading zeros
    return zeros + r"[\s\-_./:#]*".join(re.escape(c) for c in chars)


class Scrubber:
    """Removes one patient's identifiers, and any date, UID or long number, from text."""

    def __init__(
        self,
        name_parts: Iterable[str],
        ids: Iterable[str],
        dates: Iterable[str],
        institutions: Iterable[str],
        *,
        guard: Guard | None = None,
    ) -> None:
        self._guard = guard
        self._names = frozenset(s for part in name_parts for s in _spellings(part))
        self._caseless = tuple(n for n in self._names if not n.isascii())
        loose = [p for p in (_loose(i) for i in ids) if p]
        for value in ids:  # the number without its prefix or leading zeros
            digits = max(re.findall(r"\d+", value), key=len, default="").lstrip("0")
            if len(digits) >= 6:
                loose.append(_loose(digits) or digits)
        for date in dates:
            loose += _date_forms(date)
        places = [p for p in (_loose(i) for i in institutions) if p]
        alternatives = sorted(loose + places, key=len, reverse=True)
        self._values = (
            re.compile(r"(?<![0-9A-Za-z])(?:" + "|".join(alternatives) + r")", re.IGNORECASE)
            if alternatives
            else None
        )

    def __call__(self, text: str) -> str:
        """``text`` without this patient's identifiers and any date, UID or long number."""
        fixed, repaired = _fix_encoding(text)
        cleaned = " ".join(_GENERIC.sub(" ", self._personal(fixed)).split())
        return _as_read(self._guarded(cleaned), repaired)

    def personal(self, text: str) -> str:
        """``text`` without this patient's identifiers (dates and numbers of others stay)."""
        fixed, repaired = _fix_encoding(text)
        return _as_read(self._guarded(" ".join(self._personal(fixed).split())), repaired)

    def _personal(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(" ", text)
        if self._names and self._may_hold_a_name(text):
            text = _WORDS.sub(self._word, text)
        return text

    def _guarded(self, text: str) -> str:
        """``text`` without what the leak check's matcher finds in it; empty when it still
        finds something after a few rounds (or cannot say where)."""
        if self._guard is None:
            return text
        for _ in range(_GUARD_ROUNDS):
            if self._guard.first(text) is None:
                return text
            spans = self._guard.spans(text)
            if not spans:
                break
            text = " ".join(_cut(text, spans).split())
        return text if self._guard.first(text) is None else ""

    def _may_hold_a_name(self, text: str) -> bool:
        """A cheap screen: some spelling of a name part occurs in ``text`` at all."""
        if text.isascii():
            plain = text.lower()
        else:
            plain = f"{_ascii(text, _STRIP)} {_ascii(text, _GERMAN)} {text.lower()}"
        return any(name in plain for name in self._names)

    def _word(self, match: re.Match[str]) -> str:
        word = match.group()
        if self._caseless and any(name in word for name in self._caseless):
            return " "
        if word.isascii():
            lowered = word.lower()
            if not any(name in lowered for name in self._names):
                return word  # the usual word: no name part inside at all
            parts = [p.lower() for p in _PARTS.findall(word)]
        else:
            parts = [_ascii(p, _STRIP) for p in _PARTS.findall(_ascii_cased(word))]
        for start in range(len(parts)):
            joined = ""
            for part in parts[start:]:
                joined += part
                if joined in self._names:
                    return " "
        return word


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each ``[start, end)`` span replaced by a space."""
    pieces, position = [], 0
    for start, end in spans:
        if start >= position:
            pieces.append(text[position:start])
        position = max(position, end)
    pieces.append(text[position:])
    return " ".join(pieces)


def _ascii_cased(word: str) -> str:
    """``word`` with accents dropped but case kept (for the case-change split)."""
    spelled = "".join(_STRIP.get(c.lower(), c) if c.lower() in _STRIP else c for c in word)
    plain = unicodedata.normalize("NFKD", spelled).encode("ascii", "ignore").decode()
    return plain if len(plain) * 2 >= len(word) else word


@lru_cache(maxsize=256)
def _date_forms_cached(date: str) -> tuple[str, ...]:
    if len(date) < 8 or not date[:8].isdigit():
        return ()
    year, month, day = date[:4], int(date[4:6]), int(date[6:8])
    day_p, month_p = f"0?{day}", f"0?{month}"
    return (
        date[:8],
        rf"{year}[\s\-./]{{1,3}}{month_p}[\s\-./]{{1,3}}{day_p}(?!\d)",
        rf"{day_p}[\s\-./]{{1,3}}{month_p}[\s\-./]{{1,3}}(?:{year}|{year[2:]})(?!\d)",
        rf"{month_p}[\s\-./]{{1,3}}{day_p}[\s\-./]{{1,3}}(?:{year}|{year[2:]})(?!\d)",
    )


def _date_forms(date: str) -> list[str]:
    return list(_date_forms_cached(date.strip()))
