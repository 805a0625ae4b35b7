"""Text -> cells for the query-file validator: delimiter, tokenizing, cleaning, reporting.

Everything here keeps track of where a cell came from: its 1-based physical line and its
1-based field number, so that problems can be reported as ``file:line:column`` (in a
workbook: ``file:sheet:B7``, the row and the column letters).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pacsman.errors import Problem, Severity

__all__ = [
    "Cell",
    "CellKind",
    "FileRefused",
    "Record",
    "Report",
    "SheetProblem",
    "clean",
    "column_letters",
    "detect_delimiter",
    "read_bytes",
    "read_records",
    "show",
    "split_records",
]

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_DELIMITERS = (",", ";", "\t")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_QUOTED_SPAN = re.compile(r'"(?:[^"]|"")*"')
_SEP_HINT = re.compile(r"sep=([,;\t])[ \t]*(?:\r\n|\r|\n|$)", re.IGNORECASE)

#: Invisible or space-like characters named the way a user would recognise them.
_CHAR_NAMES = {
    "\t": "tab",
    "\v": "vertical tab",
    "\f": "form feed",
    "\x00": "NUL character",
    "\u00a0": "no-break space",
    "\u202f": "narrow no-break space",
    "\u200b": "zero-width space",
    "\u200c": "zero-width non-joiner",
    "\u200d": "zero-width joiner",
    "\u2060": "word joiner",
    "\ufeff": "byte-order mark",
}
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class SheetProblem(Problem):
    """A problem in one sheet of a workbook, located the way Excel names cells: ``B7``."""

    sheet: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.sheet}"
        if self.line is not None:
            where += f":{column_letters(self.column) if self.column else ''}{self.line}"
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {prefix}{self.message}"


def column_letters(column: int) -> str:
    """Excel's name of the 1-based ``column``: 1 -> A, 27 -> AA."""
    letters = ""
    while column > 0:
        column, rest = divmod(column - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


@dataclass
class Report:
    """Collects every problem of one file, errors and warnings, as they are found.

    Once ``sheet`` is set (a workbook), problems are located as ``file:sheet:B7``.
    """

    source: str
    problems: list[Problem] = field(default_factory=list)
    sheet: str | None = None

    def error(self, line: int | None, column: int | None, message: str) -> None:
        """Record an error at ``line:column``."""
        self.problems.append(self._problem(line, column, message, Severity.ERROR))

    def warn(self, line: int | None, column: int | None, message: str) -> None:
        """Record a warning at ``line:column``."""
        self.problems.append(self._problem(line, column, message, Severity.WARNING))

    def _problem(
        self, line: int | None, column: int | None, message: str, severity: Severity
    ) -> Problem:
        if self.sheet is None:
            return Problem(self.source, message, line, column, severity)
        return SheetProblem(self.source, message, line, column, severity, self.sheet)

    def column_name(self, column: int) -> str:
        """How messages name a column: its field number, or its letters in a workbook."""
        return str(column) if self.sheet is None else column_letters(column)

    def in_file_order(self) -> tuple[Problem, ...]:
        """All problems sorted by line, then column (whole-file problems first)."""
        return tuple(sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0)))


class CellKind(StrEnum):
    """What a cell held: a CSV field, or an Excel cell's type (checked against its column)."""

    FIELD = "field"
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    TIME = "time"
    ERROR = "error"
    FORMULA = "formula"  # a formula whose saved result is empty, or was never calculated


@dataclass(frozen=True)
class Cell:
    """One CSV field as written in the file, or one Excel cell as shown, before cleaning."""

    text: str
    line: int
    column: int
    quoted: bool = False
    kind: CellKind = CellKind.FIELD


@dataclass(frozen=True)
class Record:
    """One CSV record (or sheet row); ``line`` is the physical line (row) it starts on."""

    line: int
    cells: tuple[Cell, ...]

    @property
    def is_blank_line(self) -> bool:
        """True for a line with no delimiter, or a sheet row, with nothing visible in it."""
        first = self.cells[0]
        if first.kind is CellKind.FIELD and (len(self.cells) != 1 or first.quoted):
            return False
        return all(c.kind is not CellKind.FORMULA and clean(c.text)[0] == "" for c in self.cells)


def show(value: str, limit: int = 40) -> str:
    """Quote a value for a message: short, single-line, control characters escaped."""
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    visible = "".join(ch if ch.isprintable() else _escape(ch) for ch in value)
    return f"'{visible}'"


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


class FileRefused(Exception):
    """The path is not a regular file, or is too large; ``message`` says what and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``; a FIFO or device is refused, never read.

    Raises:
        OSError: the file cannot be opened or read.
        FileRefused: not a regular file, or more than ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as stream:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
            raise FileRefused(
                f"the query file is {kind}, not a regular file; save the query as a CSV file "
                "and give its path"
            )
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise FileRefused(
            f"the query file is larger than {limit // 2**20} MiB; split it into several files"
        )
    return raw


def read_records(text: str, known: Iterable[str]) -> list[Record]:
    """Split decoded text into located records, with the delimiter the header line implies.

    An Excel ``sep=;`` hint line sets the delimiter (and the header is then on line 2).
    """
    hint = _SEP_HINT.match(text)
    if hint:
        return split_records(text[hint.end() :], hint.group(1), first_line=2)
    return split_records(text, detect_delimiter(text, known))


def detect_delimiter(text: str, known: Iterable[str] = ()) -> str:
    """The delimiter among ``,``, ``;`` and TAB found outside quotes in the first non-blank line.

    When several occur, the one that yields most ``known`` header names wins (then the most
    frequent one); when none does, the header has one column and ``,`` is as good as any.
    """
    first = next((line for line in _LINE_BREAK.split(text) if clean(line)[0]), "")
    outside = _QUOTED_SPAN.sub("", first)
    found = [d for d in _DELIMITERS if d in outside]
    if len(found) <= 1:
        return (found or [","])[0]
    names = {k.casefold() for k in known}

    def score(delimiter: str) -> tuple[int, int]:
        cells = split_records(first, delimiter)[0].cells
        hits = sum(clean(c.text)[0].casefold() in names for c in cells)
        return hits, outside.count(delimiter)

    return max(found, key=score)


def split_records(text: str, delimiter: str, *, first_line: int = 1) -> list[Record]:
    """Tokenize CSV text (RFC 4180 quoting, any line ending) into located records."""
    quoted = re.compile(r'"((?:[^"]|"")*)"')
    unquoted = re.compile(rf"[^{re.escape(delimiter)}\r\n]*")
    records: list[Record] = []
    pos, line = 0, first_line
    while pos < len(text):
        start_line, cells = line, list[Cell]()
        while True:
            cell_line, match = line, quoted.match(text, pos)
            if match:
                line += len(_LINE_BREAK.findall(match.group(1)))
                tail = unquoted.match(text, match.end())
                assert tail is not None  # the pattern matches the empty string
                value, pos = match.group(1).replace('""', '"') + tail.group(), tail.end()
            else:
                plain = unquoted.match(text, pos)
                assert plain is not None
                value, pos = plain.group(), plain.end()
            cells.append(Cell(value, cell_line, len(cells) + 1, match is not None))
            if not text.startswith(delimiter, pos):
                break
            pos += len(delimiter)
        end = _LINE_BREAK.match(text, pos)
        pos, line = (end.end(), line + 1) if end else (pos, line)
        records.append(Record(start_line, tuple(cells)))
    return records


def clean(text: str) -> tuple[str, str | None]:
    """Remove invisible characters and stray spaces; returns the value and what was changed.

    Edges lose spaces and invisible characters; inside, invisible characters are removed and
    space-like ones (NBSP, tab, ...) become a plain space.  The description is ``None`` when
    nothing changed, else e.g. ``removed a no-break space (U+00A0)``.
    """
    if text.isascii() and text.isprintable() and text == text.strip(" "):
        return text, None
    start, end = 0, len(text)
    while start < end and _is_strippable(text[start]):
        start += 1
    while end > start and _is_strippable(text[end - 1]):
        end -= 1
    removed = Counter(ch for ch in text[:start] + text[end:] if ch != " ")
    edge_spaces = (text[:start] + text[end:]).count(" ")
    replaced: Counter[str] = Counter()
    kept = []
    for ch in text[start:end]:
        if _is_invisible(ch):
            removed[ch] += 1
        elif _is_space(ch) and ch != " ":
            replaced[ch] += 1
            kept.append(" ")
        else:
            kept.append(ch)
    return "".join(kept), _describe(removed, edge_spaces, replaced)


def _is_space(ch: str) -> bool:
    return ch == "\t" or unicodedata.category(ch) == "Zs"


def _is_invisible(ch: str) -> bool:
    return ch != "\t" and unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def _is_strippable(ch: str) -> bool:
    return _is_space(ch) or _is_invisible(ch)


def _describe(removed: Counter[str], edge_spaces: int, replaced: Counter[str]) -> str | None:
    gone = [_count_of(ch, n) for ch, n in removed.items()]
    if edge_spaces:
        gone.append("leading/trailing spaces")
    parts = [f"removed {_join(gone)}"] if gone else []
    if replaced:
        swapped = _join([_count_of(ch, n) for ch, n in replaced.items()])
        parts.append(f"replaced {swapped} with a plain space")
    return "; ".join(parts) or None


def _count_of(ch: str, n: int) -> str:
    name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "").lower() or "control character"
    code = f"(U+{ord(ch):04X})"
    if n > 1:
        return f"{n} {name}s {code}"
    article = "an" if name[0] in "aeiou" else "a"
    return f"{article} {name} {code}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
