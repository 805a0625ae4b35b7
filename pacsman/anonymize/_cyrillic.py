"""Cyrillic names in Latin letters, every usual way, in both directions.

Facts about spelling, not a matcher (like :mod:`._terms`): :mod:`._spelling` turns them
into the patterns the leak check's matcher runs, and the engine's scrubber removes
whatever that matcher finds.

* :data:`FORMS`: each Cyrillic letter's spellings in ISO 9, GOST 7.79-B, BGN/PCGN, ICAO
  9303, the scholarly system and German, Polish and French usage -- folded as the matcher
  folds text (ISO 9's ``ë č š ž â û`` read ``e c s z a u``), so ``Ковалёва`` is
  ``Kovaleva``, ``Kovalyova``, ``Kovaljova``, ``Kowaljowa``, ``Kovalëva``... and
  ``Дарья`` is ``Darya``, ``Daria``, ``Darja``, ``Dar'ya``, ``Darʹâ``;
* :func:`cyrillic_body`: a pattern for every romanization of a Cyrillic word;
* :func:`latin_bodies`: for a name already in Latin letters (``KOVALEVA``, ``Darja``), the
  other romanizations of the Cyrillic it may stand for (``Kovaljova``, ``Darya``);
* :func:`transliterated`: Cyrillic text in Latin letters (one spelling), so that a name
  given in Latin letters is found in Cyrillic text.

``е`` and ``ё`` are one letter here (Russian writes ``ё`` as ``е`` more often than not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["FORMS", "Body", "cyrillic_body", "has_cyrillic", "latin_bodies", "transliterated"]

_SOFT = ("", "'", "’", "ʹ", "ʼ", "`", "i")  # ь: dropped (ICAO), a prime, or i (Dariya)
_HARD = ("", "'", "’", "ʺ", '"', "``", "ie")  # ъ; ICAO 9303 writes "ie"
_E = ("e", "ye", "je", "ie")
_YO = ("yo", "jo", "io")
#: Each letter's spellings, most usual first (the first is :func:`transliterated`'s).
FORMS: dict[str, tuple[str, ...]] = {
    "а": ("a",),
    "б": ("b",),
    "в": ("v", "w"),
    "г": ("g", "h", "gh"),
    "д": ("d",),
    "е": _E + _YO,  # е/ё are one letter
    "ё": ("e", *_YO, *_E[1:]),
    "ж": ("zh", "z", "j", "sch", "zs", "zj"),
    "з": ("z", "s"),
    "и": ("i", "y"),
    "й": ("y", "j", "i"),
    "к": ("k",),
    "л": ("l",),
    "м": ("m",),
    "н": ("n",),
    "о": ("o",),
    "п": ("p",),
    "р": ("r",),
    "с": ("s", "ss"),
    "т": ("t",),
    "у": ("u", "ou"),
    "ф": ("f", "ph"),
    "х": ("kh", "h", "ch", "x"),
    "ц": ("ts", "c", "z", "tz", "tc", "cz"),
    "ч": ("ch", "tsch", "tch", "cz", "c"),
    "ш": ("sh", "sch", "sz", "ch", "s"),
    "щ": ("shch", "shh", "sch", "szcz", "shtch", "chtch", "schtsch", "sc", "s"),
    "ъ": _HARD,
    "ы": ("y", "i", "y`"),
    "ь": _SOFT,
    "э": ("e", "eh", "e`"),
    "ю": ("yu", "ju", "iu", "iou", "u"),
    "я": ("ya", "ja", "ia", "a"),
    "і": ("i",),
    "ї": ("yi", "ji", "i"),
    "є": ("ye", "je", "ie", "e"),
    "ґ": ("g",),
    "ў": ("u", "w"),
    "ђ": ("dj", "d"),
    "ј": ("j", "y"),
    "љ": ("lj", "l"),
    "њ": ("nj", "n"),
    "ћ": ("c", "ch"),
    "џ": ("dz", "dzh", "dj"),
    "ѕ": ("dz",),
}
#: Two letters written as one unit: ``Евгений`` is also ``Evgeny`` and ``Evgeni``.
_PAIRS: dict[str, tuple[str, ...]] = {"ий": ("y", "i"), "ый": ("y", "i"), "кс": ("x",), "ия": ()}
_PAIRS |= {sign + vowel: () for sign in "ьъ" for vowel in "яю"}
_SIBILANTS = frozenset("жчшщ")  # ё after them is also written o (Горбачёв: Gorbachov)
_HARD_O = _SIBILANTS | {"л"}  # ... and after л in Polish (Королёв: Korolow)
#: ISO 9 (and Czech, Polish) letters that fold to another letter's usual spelling (``â``
#: to ``a``, ``š`` to ``s``): read into Latin names of :data:`_SHORT` letters or more only.
_LOSSY = {"я": {"a"}, "ю": {"u"}, "ш": {"s"}, "щ": {"s", "sc"}, "ч": {"c"}, "ж": {"z"}}
_SHORT = 6
_VOWELISH = frozenset("aeiouyj")  # first letters a short name may still vary (Yulia, Julia)
#: Latin spellings -> the Cyrillic they may stand for (for names given in Latin letters).
_UNITS: dict[str, tuple[str, ...]] = {
    "schtsch": ("щ",),
    "shch": ("щ",),
    "szcz": ("щ",),
    "shtch": ("щ",),
    "chtch": ("щ",),
    "tsch": ("ч",),
    "shh": ("щ",),
    "sch": ("ш", "щ", "ж"),
    "tch": ("ч",),
    "iou": ("ю",),
    "iya": ("ия",),
    "ija": ("ия",),
    "zh": ("ж",),
    "zs": ("ж",),
    "kh": ("х",),
    "gh": ("г",),
    "ts": ("ц",),
    "tz": ("ц",),
    "tc": ("ц",),
    "ch": ("ч", "х", "ш"),
    "cz": ("ч", "ц"),
    "sh": ("ш",),
    "sz": ("ш",),
    "yo": ("ё",),
    "jo": ("ё",),
    "io": ("ё",),
    "ya": ("я",),
    "ja": ("я",),
    "ia": ("я", "ия"),
    "yu": ("ю",),
    "ju": ("ю",),
    "iu": ("ю",),
    "ye": ("е",),
    "je": ("е",),
    "ie": ("е",),
    "iy": ("ий",),
    "ij": ("ий",),
    "ii": ("ий",),
    "yy": ("ый",),
    "ph": ("ф",),
    "ou": ("у",),
    "eh": ("э",),
    "ks": ("кс",),
    "a": ("а",),
    "b": ("б",),
    "c": ("ц", "к"),
    "d": ("д",),
    "e": ("е", "э"),
    "f": ("ф",),
    "g": ("г",),
    "h": ("х", "г"),
    "i": ("и", "й"),
    "j": ("й", "ж"),
    "k": ("к",),
    "l": ("л",),
    "m": ("м",),
    "n": ("н",),
    "o": ("о",),
    "p": ("п",),
    "q": ("к",),
    "r": ("р",),
    "s": ("с", "з"),
    "t": ("т",),
    "u": ("у",),
    "v": ("в",),
    "w": ("в",),
    "x": ("кс", "х"),
    "y": ("ы", "й"),
    "z": ("з", "ж", "ц"),
}
_LONGEST_UNIT = max(len(unit) for unit in _UNITS)
#: Letters a soft sign may stand before, unwritten in some romanizations (Дарья: Daria,
#: Dar'ya; Соловьёва: Soloveva, Solov'ëva).
_SOFTENED = frozenset("яюеё")
_CYRILLIC = re.compile("[\u0400-\u04ff]")


def has_cyrillic(text: str) -> bool:
    """True when ``text`` holds a Cyrillic letter."""
    return _CYRILLIC.search(text) is not None


#: A spelling pattern: a sequence of groups, each the spellings one letter (or pair) may
#: take, ``""`` among them when it may be left out.  :mod:`._spelling` makes regular
#: expressions of them.
Body = tuple[tuple[str, ...], ...]


def _group(forms: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(forms), key=lambda f: (-len(f), f)))


def _forms(letters: str, *, after: str = "") -> set[str]:
    """Every spelling of ``letters`` (one letter, or a pair of :data:`_PAIRS`)."""
    if letters in _PAIRS:
        first, second = _forms(letters[0], after=after), _forms(letters[1], after=letters[0])
        spelled = {a + b for a in first for b in second} | set(_PAIRS[letters])
        if letters[0] in "ьъ":  # ISO 9 writes ья ʹâ: a bare "a" would be Dara for Darja
            spelled -= _LOSSY.get(letters[1], set())
    else:
        spelled = set(FORMS.get(letters, (letters,)))
        if letters in "её" and after in _HARD_O:
            spelled.add("o")
    return spelled


@lru_cache(maxsize=1024)
def cyrillic_body(word: str) -> Body | None:
    """The pattern of every romanization of the Cyrillic ``word`` (lower case, matched
    case-insensitively on folded text); ``None`` when it holds no Cyrillic.

    ``word`` is read in NFC: ``й`` stays ``й`` (NFKD would make it ``и``).
    """
    word = word.lower()
    if not has_cyrillic(word):
        return None
    groups: list[tuple[str, ...]] = []
    index, previous = 0, ""
    while index < len(word):
        pair = word[index : index + 2]
        letters = pair if pair in _PAIRS else word[index]
        known = letters[0] in FORMS or letters in _PAIRS
        groups.append(_group(_forms(letters, after=previous)) if known else (letters,))
        previous, index = letters[-1], index + len(letters)
    return tuple(groups)


def _parse(word: str) -> list[str] | None:
    """``word`` (lower-case ASCII letters) cut into :data:`_UNITS`, longest first."""
    units, index = [], 0
    while index < len(word):
        for size in range(min(_LONGEST_UNIT, len(word) - index), 0, -1):
            unit = word[index : index + size]
            if unit in _UNITS:
                units.append(unit)
                index += size
                break
        else:
            return None  # a letter the table does not know
    return units


@lru_cache(maxsize=1024)
def latin_bodies(word: str) -> tuple[Body, ...]:
    """Patterns for the other romanizations of the Cyrillic that the Latin name ``word``
    (folded: ASCII letters) may stand for; none for other letters.

    ``KOVALEVA`` gives ``Kovaljova``, ``Kowalewa``, ``Kovalyova``; ``Darja`` gives
    ``Darya``, ``Daria``, ``Dar'ya``.  The name itself always matches.  A short name
    (under :data:`_SHORT` letters) keeps its first consonant and loses nothing to ISO 9's
    folded letters, so that ``Hart`` does not find ``chart``, nor ``Yang`` ``ang`` -- but
    ``â`` after a prime is still ``я`` (``Darʹâ``): one more pattern per such letter.
    """
    word = word.lower()
    units = _parse(word)
    if units is None:
        return ()
    short = len(word) < _SHORT
    groups: list[tuple[str, ...]] = []
    swaps: list[tuple[int, tuple[str, ...]]] = []  # short names: (group, ISO 9's â or û)
    previous = ""
    for position, unit in enumerate(units):
        after = "".join(sorted(_HARD_O.intersection(previous)))[:1] if not short else ""
        after = after or ("ж" if _SIBILANTS.intersection(previous) else "")
        if short and position == 0 and unit[0] not in _VOWELISH:
            spelled = {unit} | (set(FORMS["в"]) if unit in FORMS["в"] else set())
        else:
            spelled = _unit_forms(unit, after=after, lossy=not short)
        cyrillic = "".join(_UNITS[unit])
        if _SOFTENED.intersection(cyrillic) and groups:
            groups.append(_group(_SOFT))  # Dar'ya, Solov'ëva for Soloveva
            folded = {f for letter in cyrillic if letter in "яю" for f in _LOSSY[letter]}
            if short and folded:
                swaps.append((len(groups), _group(folded)))
        groups.append(_group(spelled))
        previous = cyrillic
    primes = _group(set(_SOFT) - {""})
    swapped = [(*groups[: at - 1], primes, folded, *groups[at + 1 :]) for at, folded in swaps]
    return (tuple(groups), *swapped)


def _unit_forms(unit: str, *, after: str, lossy: bool) -> set[str]:
    """The spellings of every Cyrillic letter the Latin ``unit`` may stand for, after the
    Cyrillic letter ``after`` (one that makes ``ё`` an ``o``, or none)."""
    spelled = {unit}
    for letters in _UNITS[unit]:
        found = _forms(letters, after=after)
        if letters == "о" and after:
            found |= _forms("ё", after=after)  # Gorbachov for Gorbachev
        spelled |= found if lossy else found - _LOSSY.get(letters, set())
    return spelled


def transliterated(text: str) -> tuple[str, list[int]]:
    """``text`` with its Cyrillic letters in Latin ones (each letter's first spelling),
    case kept, and for each character of the result the index it comes from in ``text``.
    """
    out: list[str] = []
    index: list[int] = []
    for position, char in enumerate(text):
        lower = char.lower()
        spelled = FORMS.get(lower, (char,))[0] if lower in FORMS else char
        if spelled and char != lower:  # upper case: all of it in a word in capitals
            following = text[position + 1 : position + 2]
            capitals = following.isupper() or (not following.isalpha() and position > 0)
            spelled = spelled.upper() if capitals else spelled.capitalize()
        out.append(spelled)
        index.extend([position] * len(spelled))
    return "".join(out), index
