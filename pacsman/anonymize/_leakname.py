"""A name part's Latin spellings as patterns, for the leak check's matcher.

Private to :mod:`._leakmatch`.  A :data:`._spelling.Body` (the spellings of each letter in
turn) becomes a regular expression; a whole token is one that starts and ends where the
matcher's token rule says (non-letters, letter/digit changes, lower -> upper case).  Cheap
screens first: ``needles`` (pieces every spelling holds) must occur in the text before a
pattern runs, and the patterns are compiled only when first needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache

from pacsman.anonymize._spelling import Body

__all__ = ["Spelled", "spelled_spans"]

#: A whole token starts (ends) here: not after (before) a letter, or at a lower -> upper
#: case change, or before the last capital of a run followed by lower case (``MRIMuller``).
_START = r"(?:(?<![A-Za-z])|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]))"
_END = r"(?:(?![A-Za-z])|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]))"


@dataclass(frozen=True)
class Spelled:
    """A name part's Latin spellings as patterns: ``loose`` runs on lower-cased text,
    ``bounded`` finds whole tokens in text with its case (see :data:`_START`);
    ``needles``: pieces of text one of which every spelling holds (``None`` when some
    pattern has none: ``loose`` then runs on every text).  The patterns are compiled
    when first needed: most files never get past the needles."""

    bodies: tuple[Body, ...]
    needles: tuple[str, ...] | None

    @classmethod
    def from_bodies(cls, bodies: Iterable[Body]) -> Spelled | None:
        """The patterns for ``bodies``, or ``None`` when there are none."""
        unique = tuple(sorted(set(bodies)))
        if not unique:
            return None
        needles = [_needles(b) for b in unique]
        found = None if None in needles else _pruned({n for ns in needles for n in ns or ()})
        return cls(unique, found)

    @cached_property
    def _body(self) -> str:
        return "|".join(sorted({_regex(b) for b in self.bodies}))

    @cached_property
    def loose(self) -> re.Pattern[str]:
        """Any spelling, anywhere in lower-cased text."""
        return re.compile(self._body, re.ASCII)

    @cached_property
    def bounded(self) -> re.Pattern[str]:
        """A spelling as a whole token of text with its case."""
        return re.compile(f"{_START}(?i:{self._body}){_END}", re.ASCII)

    def may_occur_in(self, lowered: str) -> bool:
        """False when no spelling can occur in ``lowered`` (no needle is in it)."""
        return self.needles is None or any(needle in lowered for needle in self.needles)


def _regex(body: Body) -> str:
    """A pattern's regular expression: each group ``(?:f1|f2)``, optional with ``""``."""
    parts = []
    for group in body:
        alternatives = "|".join(re.escape(f) for f in group if f)
        parts.append(f"(?:{alternatives})?" if "" in group else f"(?:{alternatives})")
    return "".join(parts)


@lru_cache(maxsize=4096)
def _needles(body: Body) -> tuple[str, ...] | None:
    """Pieces of text one of which every spelling of ``body`` holds: the spellings of a
    run of neighbouring groups, chosen so that the shortest is as long as can be (2
    letters at least, 3 is plenty; ``None`` when no run gives 2)."""
    best: tuple[str, ...] | None = None
    for start in range(len(body)):
        pieces = {""}
        for group in body[start:]:
            pieces = {p + f for p in pieces for f in group}
            if len(pieces) > _MAX_NEEDLES:
                break
            if min(map(len, pieces)) >= 2 and _better(pieces, best):
                best = tuple(sorted(pieces))
            if min(map(len, pieces)) >= _ENOUGH:
                break
    return best


_MAX_NEEDLES = 48
_ENOUGH = 3  # letters: a needle this long is rare enough in clean text


def _pruned(needles: set[str]) -> tuple[str, ...]:
    """``needles`` without those that hold another (that one is found wherever they are)."""
    return tuple(sorted(n for n in needles if not any(m != n and m in n for m in needles)))


def _better(pieces: set[str], best: tuple[str, ...] | None) -> bool:
    if best is None:
        return True
    shortest = min(min(map(len, pieces)), _ENOUGH)
    current = min(min(map(len, best)), _ENOUGH)
    return shortest > current or (shortest == current and len(pieces) < len(best))


def spelled_spans(spelled: Spelled, text: str, lowered: str) -> Iterator[tuple[int, int]]:
    """The whole tokens of ``text`` that are one of the spellings (the loose pattern on
    ``lowered`` first: where it finds nothing, no token can be one)."""
    done = 0
    for loose in spelled.loose.finditer(lowered):
        for position in range(max(loose.start(), done), loose.end()):
            found = spelled.bounded.match(text, position)
            if found is not None:
                yield found.span()
                done = found.end()
                break
