"""Bytes -> cells for the query-file validator: decoding, delimiter, tokenizing, cleaning.

Everything here keeps track of where a cell came from: its 1-based physical line and its
1-based field number, so that problems can be reported as ``file:line:column``.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pacsman.errors import Problem, Severity

__all__ = [
    "Cell",
    "DecodeFailure",
    "FileRefused",
    "Record",
    "Report",
    "clean",
    "decode",
    "detect_delimiter",
    "read_bytes",
    "read_records",
    "show",
    "split_records",
]

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
#: Encodings tried, in this order, on a file with many NUL bytes and no BOM.
_WIDE_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("utf-32-le", "UTF-32LE"),
    ("utf-32-be", "UTF-32BE"),
    ("utf-16-le", "UTF-16LE"),
    ("utf-16-be", "UTF-16BE"),
)
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


@dataclass
class Report:
    """Collects every problem of one file, errors and warnings, as they are found."""

    source: str
    problems: list[Problem] = field(default_factory=list)

    def error(self, line: int | None, column: int | None, message: str) -> None:
        """Record an error at ``line:column``."""
        self.problems.append(Problem(self.source, message, line, column, Severity.ERROR))

    def warn(self, line: int | None, column: int | None, message: str) -> None:
        """Record a warning at ``line:column``."""
        self.problems.append(Problem(self.source, message, line, column, Severity.WARNING))

    def in_file_order(self) -> tuple[Problem, ...]:
        """All problems sorted by line, then column (whole-file problems first)."""
        return tuple(sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0)))


@dataclass(frozen=True)
class Cell:
    """One CSV field as written in the file, before cleaning."""

    text: str
    line: int
    column: int
    quoted: bool = False


@dataclass(frozen=True)
class Record:
    """One CSV record; ``line`` is the physical line it starts on."""

    line: int
    cells: tuple[Cell, ...]

    @property
    def is_blank_line(self) -> bool:
        """True for a physical line with no delimiter and nothing visible in it."""
        if len(self.cells) != 1 or self.cells[0].quoted:
            return False
        return clean(self.cells[0].text)[0] == ""


class DecodeFailure(Exception):
    """The bytes are not UTF-8; ``message`` says why, located at ``line:column``."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


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


def decode(raw: bytes, name: str, known: Iterable[str] = ()) -> str:
    """Decode the file's bytes as UTF-8 (a leading BOM is the UTF-8 signature and dropped).

    Raises:
        DecodeFailure: UTF-16, UTF-32, NUL-filled or other non-UTF-8 bytes, with the fix for
            ``name``.
    """
    wide = _wide_encoding(raw)
    if wide is not None:
        family = wide[:6]  # UTF-16 or UTF-32; iconv needs the byte order when no BOM says it
        excel = ' (Excel "Unicode Text")' if family == "UTF-16" else ""
        raise DecodeFailure(
            f'the file is {family}{excel}, not UTF-8; save it as "CSV UTF-8" '
            f"in Excel, or: iconv -f {wide} -t UTF-8 {name} > {_utf8_name(name)}"
        )
    if raw.count(b"\x00") > len(raw) // 4 > 0:
        raise _nul_bytes(raw, name, known)
    raw = raw.removeprefix(_UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(raw, exc.start, name, known) from None


def _wide_encoding(raw: bytes) -> str | None:
    """The iconv name of a UTF-32 or UTF-16 file (by BOM, or decoded text), else None."""
    if raw.startswith(_UTF32_BOMS):
        return "UTF-32"
    if raw.startswith(_UTF16_BOMS):
        return "UTF-16"
    if not raw.count(b"\x00") > len(raw) // 4 > 0:
        return None
    for codec, label in _WIDE_ENCODINGS:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if _looks_like_text(text):
            return label
    return None


def _looks_like_text(text: str) -> bool:
    """True for decoded text with no NUL and hardly any invisible or unassigned characters."""
    if "\x00" in text:
        return False
    odd = sum(1 for ch in text if not ch.isprintable() and ch not in "\r\n\t")
    return odd <= len(text) // 100


def _nul_bytes(raw: bytes, name: str, known: Iterable[str]) -> DecodeFailure:
    """The failure for a file full of NUL bytes that is no UTF-16 or UTF-32 text."""
    start = raw.index(b"\x00")
    line, column = _locate(raw, start, known)
    count = raw.count(b"\x00")
    return DecodeFailure(
        f"the file holds {count} NUL bytes (the first here): it is not CSV text, or it was "
        f"damaged (e.g. padded with zeros); open {name} in a text editor, delete them, "
        'and save it as "CSV UTF-8"',
        line,
        column,
    )


def _utf8_name(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-utf8.{ext}" if dot else f"{name}-utf8"


def _locate(raw: bytes, start: int, known: Iterable[str]) -> tuple[int, int]:
    """The 1-based line and field of byte ``start``, reading what precedes it as UTF-8."""
    prefix = raw[:start].decode("utf-8", errors="replace")
    line = len(_LINE_BREAK.findall(prefix)) + 1
    records = split_records(prefix + "x", detect_delimiter(raw.decode("latin-1"), known))
    return line, records[-1].cells[-1].column


def _not_utf8(raw: bytes, start: int, name: str, known: Iterable[str]) -> DecodeFailure:
    line, column = _locate(raw, start, known)
    byte = raw[start]
    try:
        char = raw[start : start + 1].decode("cp1252")
    except UnicodeDecodeError:
        return DecodeFailure(
            f"byte 0x{byte:02X} is not UTF-8 and the file is not Windows-1252 either; "
            'save it as "CSV UTF-8" in Excel and try again',
            line,
            column,
        )
    return DecodeFailure(
        f"byte 0x{byte:02X} is not UTF-8; the file looks like Windows-1252 (where it is "
        f'{show(char)}); save it as "CSV UTF-8" in Excel, or: '
        f"iconv -f WINDOWS-1252 -t UTF-8 {name} > {_utf8_name(name)}",
        line,
        column,
    )


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
