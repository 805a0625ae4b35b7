"""How a name part may be spelled: one rule, for the leak check and the scrubber alike.

Facts about spelling, not a matcher.  The leak check's matcher (:mod:`._leakmatch`) turns a
:class:`Spelling` into its patterns; the engine's scrubber (:mod:`._scrub`) removes what
that matcher finds, on top of its own word rule, so a cleaned value never holds anything
the leak check would flag.

* :func:`fold`: the one normalization of text -- Unicode NFKD without combining marks
  (``Dvořák`` -> ``Dvorak``, NFD input too), letters without a decomposition spelled out
  (``ß`` ss, ``ł`` l, ``ø`` o), katakana as hiragana (``ヤマダ`` and half-width ``ﾔﾏﾀﾞ``
  as ``やまだ``); case kept;
* :func:`spelling`: a name part's spellings -- folded; German and Scandinavian
  (``Müller`` as ``Mueller`` and ``Muller``); every romanization of a Cyrillic name
  (:mod:`._cyrillic`) and of a Japanese one (:mod:`._kana`); for a name already in Latin
  letters, the other romanizations of the Cyrillic (``KOVALEVA``: ``Kovaljova``) or the
  kana (``Tarou``: ``Taro``, ``Taroh``, ``たろう``) it may stand for.

Text in Cyrillic is also read in Latin letters (:func:`._cyrillic.transliterated`), so a
name given in Latin letters is found in it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from pacsman.anonymize._cyrillic import (
    Body,
    cyrillic_body,
    has_cyrillic,
    latin_bodies,
    transliterated,
)
from pacsman.anonymize._kana import (
    KATAKANA_TO_HIRAGANA,
    has_kana,
    kana_body,
    long_vowel_forms,
    romaji_kana,
)

__all__ = [
    "Body",
    "Spelling",
    "fold",
    "has_cyrillic",
    "is_japanese",
    "spelling",
    "transliterated",
]

_TRANSLIT = str.maketrans(
    {"ß": "ss", "ẞ": "SS", "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE"}
    | {"œ": "oe", "Œ": "OE", "đ": "d", "Đ": "D", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D"}
    | {"ı": "i", "ħ": "h", "Ħ": "H", "ŀ": "l", "Ŀ": "L", "ŧ": "t", "Ŧ": "T"}
)
#: Other usual spellings of letters in names (German, Scandinavian).
_ALTERNATIVE = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ø": "oe", "Ø": "Oe"}
    | {"å": "aa", "Å": "Aa"}
)
_SPECIAL = re.compile("[ßẞłŁøØæÆœŒđĐþÞðÐıħĦŀĿŧŦ]")
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
_KATAKANA = re.compile("[\u30a1-\u30f6]")
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
#: Long vowels as Japanese word processors write them: a Latin name with one is romaji.
_WAPURO = re.compile("ou|uu|oh(?![aeiouy])")
#: Latin names shorter than this keep their own spellings only: romanizations of two or
#: three letters (``Li``, ``Wu``, ``Ivo``) would match ordinary words.
_MIN_ROMANIZED = 4


def fold(text: str) -> str:
    """``text`` in NFKD without combining marks, special letters spelled out, katakana as
    hiragana; case kept."""
    if text.isascii():
        return text
    if _SPECIAL.search(text):  # str.translate is slow: only when there is something to do
        text = text.translate(_TRANSLIT)
    text = _MARKS.sub("", unicodedata.normalize("NFKD", text))
    return text.translate(KATAKANA_TO_HIRAGANA) if _KATAKANA.search(text) else text


@dataclass(frozen=True)
class Spelling:
    """The spellings of one name part.

    ``words``: folded, lower-case spellings, each a whole token where it is found (text
    splits at non-letters, letter/digit changes and lower -> upper case changes);
    ``anywhere``: spellings in scripts without case (kana, CJK), found anywhere;
    ``patterns``: romanizations (:data:`Body`: the spellings of each letter in turn),
    matched case-insensitively as whole tokens of folded text.
    """

    words: tuple[str, ...] = ()
    anywhere: tuple[str, ...] = ()
    patterns: tuple[Body, ...] = ()


def _has_case(text: str) -> bool:
    return any(c.isupper() or c.islower() for c in text)


def _variants(part: str) -> set[str]:
    """The part folded, in its German/Scandinavian spelling, and with ``ue`` as ``u``."""
    variants = {fold(part).lower(), fold(part.translate(_ALTERNATIVE)).lower()}
    if has_cyrillic(part):
        variants.add(transliterated(fold(part).lower())[0])  # short names too: Ли as li
    for variant in list(variants):
        shortened = re.sub(r"([aou])e", r"\1", variant)
        if shortened != variant and len(shortened) >= 3:
            variants.add(shortened)
    return {v for v in variants if len(v) >= 2 and v.isalpha()}


def is_japanese(parts: Iterable[str]) -> bool:
    """True when a person's name parts hold kana or kanji, or a Latin part is romaji with
    a long vowel as word processors write it (``Tarou``): its Latin parts are romaji."""
    parts = tuple(parts)
    if any(has_kana(part) or _CJK.search(part) for part in parts):
        return True
    return _romaji({fold(part).lower() for part in parts}, japanese=False) is not None


@lru_cache(maxsize=1024)
def spelling(part: str, *, japanese: bool = False) -> Spelling:
    """Every spelling of the name part ``part`` (a run of letters of a PN value).

    ``japanese``: the name also has kana or kanji (:func:`is_japanese`), so a Latin part
    is read as romaji; otherwise only one that looks like it (``Tarou``, ``Satoh``).
    """
    part = unicodedata.normalize("NFC", part)
    variants = _variants(part)
    anywhere = {v for v in variants if not _has_case(v)}
    if has_kana(part):  # たろう also as タロー
        anywhere |= {fold(form) for form in long_vowel_forms(part)}
    patterns = _romanized(part, variants)
    romaji = _romaji(variants, japanese=japanese)
    if romaji is not None:
        anywhere |= {fold(form) for form in {romaji, *long_vowel_forms(romaji)}}  # やまだ
        body = kana_body(romaji, hidden_length=True)  # Tarou as Taro, Taroh
        patterns |= {body} if body else set()
    return Spelling(
        words=tuple(sorted(variants - anywhere, key=len, reverse=True)),
        anywhere=tuple(sorted(anywhere, key=len, reverse=True)),
        patterns=tuple(sorted(patterns)),
    )


def _romanized(part: str, variants: set[str]) -> set[Body]:
    """Patterns for the part's romanizations (Cyrillic, kana) and its Latin variants'."""
    patterns = {cyrillic_body(part.lower()) if len(part) >= 3 else None, kana_body(part)}
    for variant in variants:
        if variant.isascii() and len(variant) >= _MIN_ROMANIZED:
            patterns.update(latin_bodies(variant))
    return {p for p in patterns if p}


def _romaji(variants: set[str], *, japanese: bool) -> str | None:
    """The kana a Latin name of 4+ letters stands for when it is romaji, else ``None``."""
    for variant in sorted(variants):
        if not variant.isascii() or len(variant) < _MIN_ROMANIZED:
            continue
        if japanese or _WAPURO.search(variant):
            kana = romaji_kana(variant)
            if kana is not None and len(kana) >= 2:
                return kana
    return None
