"""What a PACS node can be sent: each value in the node's character set, located if not.

DA, TM, UI, IS and CS values are ASCII whatever ``SpecificCharacterSet`` says; names and
texts (PN, LO, SH) must be encodable in the node's character set, or the C-FIND identifier
cannot be built -- or, worse, pydicom sends the character as ``?``, a wildcard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pacsman.dicom.charsets import PYTHON_ENCODINGS
from pacsman.models import QueryRow
from pacsman.queryfile._encoding import DecodeFailure, decode
from pacsman.queryfile._text import FileRefused, clean, read_bytes, read_records, show
from pacsman.queryfile._values import ASCII_VRS, PHI_COLUMNS, VR_BY_COLUMN, not_ascii

__all__ = ["Targets", "encoding_problem", "header_column", "sendable_problem"]


def encoding_problem(
    column: str, value: str, character_set: str, *, node: str, private: bool = False
) -> str | None:
    """``None`` if ``value`` can be sent in PACS node ``node``'s ``character_set``, else why.

    DA, TM, UI, IS and CS values must be ASCII whatever the character set; names and texts
    (PN, LO, SH) must be encodable in it, or the C-FIND identifier cannot be built (or, worse,
    the character is sent as '?', a wildcard).  ``private`` values are never quoted.
    """
    vr = VR_BY_COLUMN[column]
    if vr in ASCII_VRS:
        return None if value.isascii() else not_ascii(column, vr, value)
    encodings = _encodings(character_set)
    for index, char in enumerate(value, 1):
        if not char.isascii() and not any(_encodes(char, e) for e in encodings):
            what = f"character {index}" if private else f"{show(char)} (U+{ord(char):04X})"
            return (
                f"{what} cannot be sent to PACS node '{node}', whose character set is "
                f"{character_set!r} (pacs.{node}.character_set); replace it with '?' (any one "
                "character), or set the node's character_set to 'ISO_IR 192' (UTF-8) if the "
                "PACS accepts it"
            )
    return None


#: Terms of the default repertoire: ASCII, although pydicom decodes them as Latin-1.
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def _encodings(character_set: str) -> list[str]:
    """The Python codecs of a SpecificCharacterSet (with code extensions: of every term)."""
    found = []
    for term in (t.strip() for t in character_set.split("\\")):
        if term in _DEFAULT_REPERTOIRE:
            found.append("ascii")
        elif term in PYTHON_ENCODINGS:
            found.append(PYTHON_ENCODINGS[term])
        else:  # not validated here: the config refuses unknown terms
            found.append("utf-8")
    return found


def _encodes(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


@dataclass(frozen=True)
class Targets:
    """The PACS node each row goes to, and that node's character set."""

    character_sets: Mapping[str, str]
    default_pacs: str | None

    def of(self, pacs: str | None) -> tuple[str, str] | None:
        """``(node, character_set)`` for a row whose Pacs cell is ``pacs``; None if unknown."""
        name = pacs or self.default_pacs or next(iter(self.character_sets), None)
        if name is None or name not in self.character_sets:
            return None
        return name, self.character_sets[name]


def sendable_problem(row: QueryRow, *, node: str, character_set: str) -> tuple[str, str] | None:
    """``(column, message)`` for the first value of ``row`` that PACS node ``node`` cannot be
    sent in ``character_set``; ``None`` when every value can be sent.

    The same rule :func:`load_queryfile` applies when given the character sets: the run
    checks it again per row, so a row that slipped through fails alone, before any C-FIND.
    """
    for column, value in row.keys.items():
        private = column in PHI_COLUMNS
        problem = encoding_problem(column, value, character_set, node=node, private=private)
        if problem:
            return column, f"column '{column}': {problem}"
    return None


def header_column(path: Path, column: str, *, limit: int, known: tuple[str, ...]) -> int | None:
    """The 1-based field number of ``column`` in the header of the query file at ``path``.

    For messages that locate a value after validation; ``None`` if it cannot be found.
    """
    try:
        text = decode(read_bytes(path, limit), path.name, known).text
    except (OSError, FileRefused, DecodeFailure):
        return None
    header = next((r for r in read_records(text, known) if not r.is_blank_line), None)
    if header is None:
        return None
    return next((c.column for c in header.cells if clean(c.text)[0] == column), None)
