"""Japanese names: kana in either script and width, and in Latin letters every usual way.

Facts about spelling, not a matcher (see :mod:`._cyrillic`).  A Japanese PatientName has
up to three groups, ``Yamada^Tarou=山田^太郎=やまだ^たろう``; text may hold any of them in
another form:

* katakana or half-width katakana for hiragana (``ヤマダ``, ``ﾔﾏﾀﾞ`` for ``やまだ``):
  :data:`KATAKANA_TO_HIRAGANA` folds both to hiragana (after NFKD, as the matcher folds);
* romaji in Hepburn, Kunrei or Nihon-shiki (``shi``/``si``, ``tsu``/``tu``, ``ja``/``zya``),
  long vowels written every way: ``たろう`` as ``Tarou``, ``Taroo``, ``Taroh``, ``Tarō``,
  ``Tarô`` or ``Taro`` (:func:`kana_body`);
* a name given in romaji (``Tarou``, ``Sato``) stands for kana too: :func:`romaji_kana`
  reads it back, so its other romanizations and its kana are found as well.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from pacsman.anonymize._cyrillic import Body

__all__ = [
    "KATAKANA_TO_HIRAGANA",
    "has_kana",
    "hiragana",
    "kana_body",
    "long_vowel_forms",
    "romaji_kana",
]

KATAKANA_TO_HIRAGANA = {code: code - 0x60 for code in range(0x30A1, 0x30F7)}
_KANA = re.compile("[\u3041-\u30ff\uff66-\uff9f]")
_TABLE = """
あ a|い i|う u|え e|お o|か ka|き ki|く ku|け ke|こ ko|が ga|ぎ gi|ぐ gu|げ ge|ご go
さ sa|し shi si|す su|せ se|そ so|ざ za|じ ji zi|ず zu|ぜ ze|ぞ zo|た ta|ち chi ti|つ tsu tu
て te|と to|だ da|ぢ ji di zi|づ zu du dzu|で de|ど do|な na|に ni|ぬ nu|ね ne|の no|は ha
ひ hi|ふ fu hu|へ he|ほ ho|ば ba|び bi|ぶ bu|べ be|ぼ bo|ぱ pa|ぴ pi|ぷ pu|ぺ pe|ぽ po|ま ma
み mi|む mu|め me|も mo|や ya|ゆ yu|よ yo|ら ra|り ri|る ru|れ re|ろ ro|わ wa|ゐ i wi|ゑ e we
を o wo|ゔ vu bu|ぁ a|ぃ i|ぅ u|ぇ e|ぉ o
"""
#: hiragana -> its romaji, Hepburn first.
_SYLLABLES: dict[str, tuple[str, ...]] = {
    entry.split()[0]: tuple(entry.split()[1:])
    for line in _TABLE.strip().splitlines()
    for entry in line.split("|")
}
_SMALL_Y = {"ゃ": "a", "ゅ": "u", "ょ": "o"}
#: The vowel of a syllable -> kana that make it long -> how the length is written.
_LONG = {
    "o": ("うおー", ("u", "o", "h", "")),
    "u": ("うー", ("u", "h", "")),
    "a": ("あー", ("a", "h", "")),
    "i": ("いー", ("i", "")),
    "e": ("えいー", ("e", "i", "h", "")),
}
_N, _SOKUON, _LONG_MARK = "ん", "っ", "ー"


def has_kana(text: str) -> bool:
    """True when ``text`` holds hiragana or katakana (full- or half-width)."""
    return _KANA.search(text) is not None


def hiragana(text: str) -> str:
    """``text`` in NFKC (half-width kana made full-width, voiced marks composed), its
    katakana as hiragana."""
    return unicodedata.normalize("NFKC", text).translate(KATAKANA_TO_HIRAGANA)


def _youon(forms: tuple[str, ...], vowel: str) -> set[str]:
    """``きゃ``-like syllables: ``kya``, ``sha``/``sya``, ``cha``/``tya``, ``ja``/``zya``."""
    spelled = set()
    for form in forms:
        stem = form[:-1]
        spelled.add(stem + vowel if stem.endswith("h") or stem == "j" else f"{stem}y{vowel}")
    if "ji" in forms:
        spelled.add(f"jy{vowel}")
    return spelled


def _units(kana: str, *, hidden_length: bool) -> list[set[str]] | None:
    """``kana`` (hiragana, NFC) as the spellings of its syllables, long vowels and small
    tsu included; ``None`` for anything that is not kana."""
    units: list[set[str]] = []
    index, double = 0, False
    while index < len(kana):
        char, following = kana[index], kana[index + 1 : index + 2]
        if char == _SOKUON:
            double, index = True, index + 1
            continue
        forms, vowel = _syllable(char, following)
        if forms is None:
            return None
        index += 2 if following in _SMALL_Y and vowel != _SYLLABLES.get(char, ("",))[0][-1:] else 1
        units.append(forms | {_doubled(f) for f in forms} if double else forms)
        double = False
        if vowel in _LONG and kana[index : index + 1] in _LONG[vowel][0] and kana[index:]:
            units.append(set(_LONG[vowel][1]))  # the long vowel: ou, oo, oh, o...
            index += 1
        elif hidden_length and vowel in ("o", "u"):
            units.append(set(_LONG[vowel][1]))  # Sato may be さとう
    return units


def _syllable(char: str, following: str) -> tuple[set[str] | None, str]:
    """One syllable's spellings and vowel (``きゃ`` read with its small ya)."""
    if char == _N:
        return {"n", "nn", "n'"}, ""
    if char == _LONG_MARK:
        return {"", "h"}, ""
    forms = _SYLLABLES.get(char)
    if forms is None:
        return None, ""
    if following in _SMALL_Y and forms[0].endswith("i") and len(forms[0]) > 1:
        vowel = _SMALL_Y[following]
        return _youon(forms, vowel), vowel
    return set(forms), forms[0][-1]


def _doubled(form: str) -> str:
    """The small tsu before ``form``: its consonant doubled (``kk``), ``tch`` for ``ch``."""
    if not form or form[0] in "aeioun":
        return form
    return "t" + form if form.startswith("ch") else form[0] + form


@lru_cache(maxsize=512)
def kana_body(kana: str, *, hidden_length: bool = False) -> Body | None:
    """The pattern (see :data:`._cyrillic.Body`) of every romanization of ``kana``
    (hiragana or katakana); ``None`` when ``kana`` holds anything else, or reads shorter
    than 3 letters.

    ``hidden_length``: a long ``o`` or ``u`` may hide behind a short one (``Sato`` for
    ``さとう``), as in names given in passport Hepburn.
    """
    units = _units(hiragana(kana), hidden_length=hidden_length)
    if not units or sum(min(len(f) for f in unit) for unit in units) < 3:
        return None
    for position, unit in enumerate(units[:-1]):  # ん before b, m, p: m (Shimbashi)
        if "n'" in unit and any(f[:1] in ("b", "m", "p") for f in units[position + 1]):
            unit.add("m")
    return tuple(tuple(sorted(unit, key=lambda f: (-len(f), f))) for unit in units if unit != {""})


#: The vowel kana a long vowel is written with, after a syllable of each vowel.
_LENGTHENER = {"a": "あ", "i": "い", "u": "う", "e": "い", "o": "う"}


@lru_cache(maxsize=512)
def long_vowel_forms(kana: str) -> frozenset[str]:
    """``kana`` (hiragana) with its long vowels written the other ways: ``たろう`` as
    ``たろー`` (katakana writes them with the prolonged sound mark), and back; each long
    vowel on its own (``しょうへい``: ``しょーへい``, ``しょうへー``, ``しょーへー``)."""
    kana = hiragana(kana)
    choices: list[tuple[str, ...]] = [(kana[0],)] if kana else []
    for index in range(1, len(kana)):
        vowel, char = _vowel(kana[index - 1]), kana[index]
        if vowel and char in _LONG[vowel][0][:-1]:
            choices.append((char, _LONG_MARK))
        elif vowel and char == _LONG_MARK:
            choices.append((char, _LENGTHENER[vowel]))
        else:
            choices.append((char,))
    forms = {""}
    for options in choices:
        forms = {f + o for f in forms for o in options}
        if len(forms) > _MAX_LONG_FORMS:
            return frozenset()  # a long reading with many long vowels: its own form only
    return frozenset(forms - {kana})


_MAX_LONG_FORMS = 16


def _vowel(char: str) -> str:
    if char in _SMALL_Y:
        return _SMALL_Y[char]
    forms = _SYLLABLES.get(char)
    return forms[0][-1] if forms and forms[0][-1] in _LONG else ""


@lru_cache(maxsize=512)
def romaji_kana(word: str) -> str | None:
    """The hiragana a name written in romaji stands for (``tarou`` -> ``たろう``,
    ``satoh`` -> ``さとう``), or ``None`` when ``word`` is not romaji."""
    word = word.lower()
    reading = _read(word, 0, {})
    return "".join(reading) if reading else None


@lru_cache(maxsize=1)
def _spellings() -> dict[str, str]:
    """romaji -> hiragana, for every spelling of every syllable (``sya`` and ``sha``)."""
    table: dict[str, str] = {}
    for kana, forms in _SYLLABLES.items():
        if kana in "ぁぃぅぇぉゐゑを":
            continue
        for form in forms:
            table.setdefault(form, kana)
        if forms[0].endswith("i") and len(forms[0]) > 1:
            for small, vowel in _SMALL_Y.items():
                for form in _youon(forms, vowel):
                    table.setdefault(form, kana + small)
    return table


def _read(word: str, index: int, memo: dict[int, list[str] | None]) -> list[str] | None:
    """``word[index:]`` as kana syllables, or ``None`` (longest spellings first)."""
    if index == len(word):
        return []
    if index in memo:
        return memo[index]
    memo[index] = None
    table, rest = _spellings(), word[index:]
    for size in (4, 3, 2, 1):
        kana = table.get(rest[:size]) if len(rest) >= size else None
        if kana is not None and (tail := _read(word, index + size, memo)) is not None:
            memo[index] = [kana, *tail]
            return memo[index]
    memo[index] = _special(word, index, memo)
    return memo[index]


def _special(word: str, index: int, memo: dict[int, list[str] | None]) -> list[str] | None:
    """The syllabic n (or m before b, m, p), a doubled consonant, and a long vowel's h."""
    char, following = word[index], word[index + 1 : index + 2]
    previous = word[index - 1 : index]
    if char in "nm" and following not in tuple("aeiouy") and (char == "n" or following in "bmp"):
        tail = _read(word, index + 1, memo)
        return None if tail is None else [_N, *tail]
    if (following == char and char not in "aeioun") or (
        word.startswith("tch", index) and previous != "t"
    ):
        tail = _read(word, index + 1, memo)
        return None if tail is None else [_SOKUON, *tail]
    if char == "h" and previous in ("o", "u") and following not in tuple("aeiouy"):
        tail = _read(word, index + 1, memo)
        return None if tail is None else ["う", *tail]
    return None
