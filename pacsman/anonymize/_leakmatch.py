"""The leak check's matcher: normalize first, then find originals as whole tokens.

This module is the leak check's alone; the engine's scrubber (:mod:`._scrub`) finds the
same originals its own way, so that a blind spot of one is not a blind spot of both.

Normalization (:func:`._spelling.fold`): Unicode NFKD with combining marks dropped
(``Dvořák`` -> ``Dvorak``, NFD input too), letters without a decomposition transliterated
(``ß`` -> ``ss``, ``ł`` -> ``l``, ``ø`` -> ``o``), katakana as hiragana, case kept for the
token rule, then compared lower-cased.  A name part also matches in its other usual
spellings (:func:`._spelling.spelling`): ``Müller`` as ``Mueller`` and ``Muller``, ``Søren``
as ``Soeren``, a Cyrillic name in every romanization and a Latin one in Cyrillic, kana in
either script and in romaji.  The engine's scrubber removes whatever this matcher finds
(:meth:`Matcher.spans`), so a cleaned value never fails the check.

How each kind of original is found:

* a **name part** (2+ letters) is a whole token: text splits into tokens at every
  non-letter, at letter/digit changes and at lower -> upper case changes (``JohnSmith``,
  ``MRIMuller``), so ``LI`` matches ``LI`` and ``Li2`` but not ``SLICE``; parts in scripts
  without case (CJK, kana) match anywhere;
* an **ID** matches with or without separators (``12-345-678``, ``12345678``), without
  its leading zeros or its letter prefix when what is left still has 6+ digits, and with
  leading zeros it lacks;
* the **birth date** matches as ``19520314`` and in the usual written forms: ``1952-03-14``,
  ``14.03.1952``, ``14/3/52``, ``03/14/1952``, ``14-Mar-1952``, ``14MAR52``, ``March 14,
  1952``, ``14. März 1952``...;
* an **institution** matches as its sequence of words, whatever separates them;
* a **UID** matches as a whole run of digits and dots.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from pacsman.anonymize._leakname import Spelled, spelled_spans
from pacsman.anonymize._spelling import Body, fold, has_cyrillic, spelling, transliterated
from pacsman.anonymize._terms import is_defined_term

__all__ = [
    "Hit",
    "Matcher",
    "Spelled",
    "Term",
    "date_term",
    "id_term",
    "name_term",
    "phrase_term",
    "repaired",
    "uid_term",
]

_LETTER_RUNS = re.compile(r"[^\W\d_]+")
_ALNUM = re.compile(r"[0-9a-z]+")
_ID_SEPARATORS = r"[\s\-_./:#]*"
_MONTHS = (
    "jan january januar janvier janv januari enero ene gennaio gen jaenner janner",
    "feb february februar fevrier fevr februari febrero febbraio",
    "mar march marz maerz mars maart mrt marzo",
    "apr april avril abril aprile",
    "may mai mei mayo maggio mag",
    "jun june juni juin junio giugno giu",
    "jul july juli juillet juil julio luglio lug",
    "aug august aout agosto augustus ago",
    "sep sept september septembre septiembre settembre set",
    "oct october oktober octobre okt octubre ottobre ott",
    "nov november novembre noviembre",
    "dec december dezember decembre dez diciembre dicembre dic",
)


def repaired(text: str) -> str | None:
    """``text`` decoded again as UTF-8 when it is UTF-8 read as Latin-1, else ``None``."""
    if text.isascii():
        return None
    try:
        fixed = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    return fixed if fixed != text else None


@dataclass(frozen=True)
class Term:
    """One original, as the kind of value it is and the patterns that find it.

    Screens keep the precise patterns rare: ``needles`` (IDs) must occur in the text
    without separators for the pattern to run over the text; ``anchors`` (dates,
    institutions) must occur in it, and the pattern then runs only within ``reach``
    characters of each, with no letter or digit (``edge``) touching a match.
    """

    kind: str
    how: str
    words: tuple[str, ...] = ()  # name spellings (lower case), matched as whole tokens
    anywhere: tuple[str, ...] = ()  # spellings in scripts without case: matched anywhere
    spelled: Spelled | None = None  # the Latin spellings (the ASCII words among them)
    pattern: re.Pattern[str] | None = None  # IDs, dates, institutions (on lower-cased text)
    uid: str = ""
    needles: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()
    reach: int = 0
    edge: frozenset[str] = frozenset()

    @property
    def is_defined_word(self) -> bool:
        """True for a name part that is a DICOM defined term (HEAD, KNEE, HU...)."""
        return any(is_defined_term(word) for word in self.words)

    def restricted(self, keep: Callable[[str], bool]) -> Term | None:
        """This name term with only the literal spellings ``keep`` accepts (romanizations
        stay: they are 3+ letters); ``None`` when nothing is left."""
        words = tuple(w for w in self.words if keep(w))
        anywhere = tuple(w for w in self.anywhere if keep(w))
        return _name_term(self.kind, self.how, words, anywhere, self._romanizations())

    def _romanizations(self) -> tuple[Body, ...]:
        if self.spelled is None:
            return ()
        literal = {((w,),) for w in self.words if w.isascii()}
        return tuple(b for b in self.spelled.bodies if b not in literal)


class Hit(NamedTuple):
    """Where the matcher found an original: the term's index, its kind and how."""

    term: int
    kind: str
    how: str


def name_term(part: str, *, japanese: bool = False) -> Term | None:
    """The term for one name part, or ``None`` when it has fewer than 2 letters.

    ``japanese``: the patient's name has kana or kanji, so Latin parts are romaji.
    """
    found = spelling(part, japanese=japanese)
    how = "as a whole word after folding case, accents and spelling"
    return _name_term("patient name part", how, found.words, found.anywhere, found.patterns)


def _name_term(
    kind: str, how: str, words: tuple[str, ...], anywhere: tuple[str, ...], bodies: Iterable[Body]
) -> Term | None:
    """A name term: ASCII words go into the patterns, the others are found as they are."""
    bodies = [*bodies, *(((w,),) for w in words if w.isascii())]
    if not words and not anywhere and not bodies:
        return None
    return Term(kind, how, words, anywhere, Spelled.from_bodies(bodies))


def _skeleton(value: str) -> str:
    return "".join(_ALNUM.findall(fold(value).lower()))


def _id_pattern(variants: Iterable[str]) -> re.Pattern[str]:
    alternatives = []
    for variant in sorted(set(variants), key=len, reverse=True):
        left = r"(?<![0-9])" if variant[0].isdigit() else r"(?<![a-z])"
        right = r"(?![0-9])" if variant[-1].isdigit() else r"(?![a-z])"
        body = _ID_SEPARATORS.join(re.escape(char) for char in variant)
        zeros = f"(?:0{_ID_SEPARATORS})*" if variant[0].isdigit() else ""  # 0012345 for 12345
        alternatives.append(f"{left}{zeros}{body}{right}")
    return re.compile("|".join(alternatives))


def id_term(value: str, *, kind: str, min_length: int, min_digits: int) -> Term | None:
    """The term for an identifier (with and without separators, leading zeros, prefix)."""
    skeleton = _skeleton(value)
    if len(skeleton) < (min_digits if skeleton.isdigit() else min_length):
        return None
    variants = {skeleton}
    digits = re.findall(r"\d+", skeleton)
    core = max(digits, key=len) if digits else ""
    for candidate in (skeleton.lstrip("0"), core, core.lstrip("0")):
        if len(candidate) >= min_digits and candidate.isdigit():
            variants.add(candidate)
    pattern = _id_pattern(variants)
    return Term(kind, "with or without separators", pattern=pattern, needles=tuple(variants))


@lru_cache(maxsize=256)
def _date_pattern(date: str) -> re.Pattern[str] | None:
    try:
        year, month, day = int(date[:4]), int(date[4:6]), int(date[6:8])
    except ValueError:
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    d = f"0?{day}" if day < 10 else f"{day}"
    m = f"0?{month}" if month < 10 else f"{month}"
    word = "(?:" + "|".join(_MONTHS[month - 1].split()) + r")\.?"
    y = f"(?:{year:04d}|{year % 100:02d})"
    sep, loose, nth = r"[\s\-./,]{1,3}", r"[\s\-./,]{0,3}", "(?:st|nd|rd|th)?"
    forms = [
        f"{year:04d}{month:02d}{day:02d}",
        f"{year:04d}{sep}{m}{sep}{d}",
        f"{d}{sep}{m}{sep}{y}",
        f"{m}{sep}{d}{sep}{y}",
        f"{d}{nth}{loose}{word}{loose}{y}",
        f"{word}{loose}{d}{nth}{loose}{y}",
        f"{year:04d}{loose}{word}{loose}{d}",
    ]
    return re.compile("|".join(forms))  # edges are checked around each match


def date_term(value: str) -> Term | None:
    """The term for a birth date (DA): its DICOM form and the usual written forms."""
    date = value.strip()[:8]
    pattern = _date_pattern(date) if len(date) == 8 else None
    if pattern is None:
        return None
    how = "as a date in a written form"
    return Term("birth date", how, pattern=pattern, anchors=(date[2:4],), reach=40, edge=_DIGITS)


def phrase_term(value: str, *, kind: str) -> Term | None:
    """The term for an institution name or address: its words, whatever separates them."""
    words = _ALNUM.findall(fold(value).lower())
    if sum(len(w) for w in words) < 4:
        return None
    body = r"[\W_]*".join(re.escape(w) for w in words)
    reach = 3 * sum(len(w) for w in words) + 8
    return Term(
        kind,
        "as its sequence of words",
        pattern=re.compile(body),
        anchors=(words[0],),
        reach=reach,
        edge=_DIGITS | _LETTERS,
    )


def uid_term(uid: str) -> Term:
    """The term for an original UID (a whole run of digits and dots)."""
    return Term("original UID", "as a whole UID", uid=uid)


_UID_TERM = Term("original UID", "as a whole UID")
_UID_HIT = Hit(0, _UID_TERM.kind, _UID_TERM.how)


def _is_boundary(text: str, lowered: str, index: int) -> bool:
    """True when a token starts or ends at ``index`` of ``text`` (see the module doc)."""
    if index <= 0 or index >= len(lowered):
        return True
    before, after = lowered[index - 1], lowered[index]
    if not before.isalpha() or not after.isalpha():
        return True
    if len(text) != len(lowered):  # lower() changed the length: no case information
        return False
    left, right = text[index - 1], text[index]
    if left.islower() and right.isupper():
        return True
    following = text[index + 1] if index + 1 < len(text) else ""
    return left.isupper() and right.isupper() and following.islower()


def _word_starts(word: str, text: str, lowered: str) -> Iterator[int]:
    """Start offsets where ``word`` is a whole token of ``text`` (``lowered`` is it
    lower-cased)."""
    start = lowered.find(word)
    while start != -1:
        if _is_boundary(text, lowered, start) and _is_boundary(text, lowered, start + len(word)):
            yield start
        start = lowered.find(word, start + 1)


def _starts(word: str, lowered: str) -> Iterator[int]:
    start = lowered.find(word)
    while start != -1:
        yield start
        start = lowered.find(word, start + 1)


@dataclass(frozen=True)
class _View:
    """Folded text as the matcher reads it: with its case, lower-cased, and in Latin
    letters (Cyrillic transliterated; ``latin_index`` maps back, ``None``: the same)."""

    folded: str
    lowered: str
    latin: str
    latin_lower: str
    latin_index: list[int] | None = None

    @classmethod
    def of(cls, folded: str) -> _View:
        lowered = folded.lower()
        if folded.isascii() or not has_cyrillic(folded):
            return cls(folded, lowered, folded, lowered)
        latin, index = transliterated(folded)
        return cls(folded, lowered, latin, latin.lower(), index)


def _folded_with_index(text: str) -> tuple[str, list[int] | None]:
    """``fold(text)``, and for each of its characters the offset it comes from in ``text``
    (``None``: the same text)."""
    if text.isascii():
        return text, None
    pieces, index = [], []
    for position, char in enumerate(text):
        piece = fold(char)
        if len(piece.lower()) != len(piece):
            piece = piece.lower()  # keep folded and lowered the same length
        pieces.append(piece)
        index.extend([position] * len(piece))
    return "".join(pieces), index


_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_SEPARATORS = re.compile(r"[\s\-_./:#,]+")
_SEPARATOR_BYTES = b" \t\r\n\x0b\x0c-_./:#,"


def _squeezed(lowered: str) -> str:
    """``lowered`` without separators (bytes.translate is fast; str.translate is not)."""
    if lowered.isascii():
        return lowered.encode("ascii").translate(None, _SEPARATOR_BYTES).decode("ascii")
    return _SEPARATORS.sub("", lowered)


class Matcher:
    """Finds a set of terms in text, normalized (see the module docstring).

    Each term is screened with plain substring tests first (``needles``, name words,
    UIDs, one pattern for every name's Latin spellings); its precise pattern or
    whole-token rule runs only where a screen passes.
    """

    def __init__(self, terms: Iterable[Term], uids: Iterable[str] = ()) -> None:
        self.terms = tuple(terms)
        self._uids = tuple((len(self.terms) + i, uid) for i, uid in enumerate(uids))
        self._patterned = tuple((i, t) for i, t in enumerate(self.terms) if t.pattern)
        self._literal = tuple(
            (i, tuple(w for w in t.words if not w.isascii()), t.anywhere)
            for i, t in enumerate(self.terms)
            if t.anywhere or any(not w.isascii() for w in t.words)
        )
        self._spelled = tuple((i, t.spelled) for i, t in enumerate(self.terms) if t.spelled)
        self._hit_of = [Hit(i, t.kind, t.how) for i, t in enumerate(self.terms)]

    def with_uids(self, uids: Iterable[str]) -> Matcher:
        """This matcher, also looking for ``uids`` (built without compiling anything)."""
        copy = Matcher.__new__(Matcher)
        copy.__dict__.update(self.__dict__)
        copy._uids = tuple((len(self.terms) + i, uid) for i, uid in enumerate(uids))
        return copy

    def term(self, index: int) -> Term:
        """The term a hit's index names (original UIDs share one)."""
        return self.terms[index] if index < len(self.terms) else _UID_TERM

    def __len__(self) -> int:
        return len(self.terms) + len(self._uids)

    def _found(self, view: _View) -> Iterator[tuple[int, bool, int, int]]:
        """``(term, in_latin, start, end)`` of each original in ``view``; offsets are into
        ``view.latin`` when ``in_latin``, else into ``view.folded``."""
        for index, uid in self._uids:
            for start in _uid_starts(view.folded, uid):
                yield index, False, start, start + len(uid)
        yield from self._patterned_spans(view.lowered)
        if not view.lowered.isascii():
            for index, words, anywhere in self._literal:
                for word in words:
                    for start in _word_starts(word, view.folded, view.lowered):
                        yield index, False, start, start + len(word)
                for word in anywhere:
                    for start in _starts(word, view.lowered):
                        yield index, False, start, start + len(word)
        for index, spelled in self._spelled:
            if spelled.may_occur_in(view.latin_lower):
                for start, end in spelled_spans(spelled, view.latin, view.latin_lower):
                    yield index, True, start, end

    def _patterned_spans(self, lowered: str) -> Iterator[tuple[int, bool, int, int]]:
        squeezed = ""
        for index, term in self._patterned:
            if term.anchors:
                for start, end in sorted(_anchored(term, lowered)):
                    yield index, False, start, end
                continue
            squeezed = squeezed or _squeezed(lowered)
            if any(needle in squeezed for needle in term.needles):
                assert term.pattern is not None
                for match in term.pattern.finditer(lowered):
                    yield index, False, match.start(), match.end()

    def _hits(self, text: str, *, repair: bool) -> Iterator[Hit]:
        """The hot path (every value and the raw bytes of every file): what :meth:`_found`
        finds, without places, with cheap screens first."""
        hits = self._hit_of
        for index, uid in self._uids:
            if next(_uid_starts(text, uid), None) is not None:
                yield _UID_HIT._replace(term=index)
        texts = [text]
        fixed = repaired(text) if repair else None
        if fixed is not None:
            texts.append(fixed)  # UTF-8 bytes in a Latin-1 file: read both ways
        for one in texts:
            folded = fold(one)
            lowered = folded.lower()
            squeezed = ""
            for index, term in self._patterned:
                if term.anchors:
                    for _ in _anchored(term, lowered):
                        yield hits[index]
                    continue
                squeezed = squeezed or _squeezed(lowered)
                if any(needle in squeezed for needle in term.needles):
                    assert term.pattern is not None
                    for _ in term.pattern.finditer(lowered):
                        yield hits[index]
            if self._literal and not lowered.isascii():
                for index, words, anywhere in self._literal:
                    for word in words:
                        for _ in _word_starts(word, folded, lowered):
                            yield hits[index]
                    for word in anywhere:
                        for _ in _starts(word, lowered):
                            yield hits[index]
            latin, latin_lower = folded, lowered
            if not folded.isascii() and has_cyrillic(folded):
                latin = transliterated(folded)[0]
                latin_lower = latin.lower()
            for index, spelled in self._spelled:
                if spelled.may_occur_in(latin_lower):
                    for _ in spelled_spans(spelled, latin, latin_lower):
                        yield hits[index]

    def first(self, text: str) -> Hit | None:
        """The first original found in ``text``, or ``None``."""
        return next(self._hits(text, repair=True), None)

    def count(self, text: str) -> Counter[int]:
        """How many times each term (by index) occurs in ``text`` (read as it is)."""
        return Counter(hit.term for hit in self._hits(text, repair=False))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where originals occur in ``text`` (read as it is): ``[start, end)`` offsets,
        sorted; what the engine's scrubber cuts out."""
        if next(self._hits(text, repair=False), None) is None:
            return []
        folded, index = _folded_with_index(text)
        view = _View.of(folded)
        spans = []
        for _, in_latin, start, end in self._found(view):
            if in_latin and view.latin_index is not None:
                start, end = view.latin_index[start], view.latin_index[end - 1] + 1
            if index is not None:
                start, end = index[start], index[end - 1] + 1
            spans.append((start, end))
        return sorted(spans)


def _anchored(term: Term, lowered: str) -> set[tuple[int, int]]:
    """The spans where the term's pattern matches near one of its anchors, edges clear."""
    assert term.pattern is not None
    spans: set[tuple[int, int]] = set()
    digits = term.edge is _DIGITS  # a year: at the edge of a run of digits, or whole
    for anchor in term.anchors:
        position = lowered.find(anchor)
        while position != -1:
            if digits and _inside_digits(lowered, position, len(anchor)):
                position = lowered.find(anchor, position + 1)
                continue
            low, high = max(0, position - term.reach), position + len(anchor) + term.reach
            for match in term.pattern.finditer(lowered, low, high):
                start, end = match.span()
                before = lowered[start - 1] if start else ""
                after = lowered[end] if end < len(lowered) else ""
                if before not in term.edge and after not in term.edge:
                    spans.add((start, end))
            position = lowered.find(anchor, position + 1)
    return spans


def _inside_digits(text: str, start: int, length: int) -> bool:
    """True when text[start:start+length] has digits on both sides and is not the end of
    a four-digit year (``19520314`` holds ``52`` as part of ``1952``)."""
    before = text[start - 1] if start else ""
    after = text[start + length] if start + length < len(text) else ""
    if before not in _DIGITS or after not in _DIGITS:
        return False
    return not (start >= 2 and text[start - 2 : start].isdigit() and text[start - 2] in "12")


def _uid_starts(text: str, uid: str) -> Iterator[int]:
    """Where ``uid`` occurs in ``text`` as a whole run of digits and dots."""
    start = text.find(uid)
    while start != -1:
        end = start + len(uid)
        before = text[start - 1] if start else ""
        after = text[end] if end < len(text) else ""
        if before not in _UID_CHARS and after not in _UID_CHARS:
            yield start
        start = text.find(uid, start + 1)


_UID_CHARS = frozenset("0123456789.")
