"""Bytes -> text for CSV query files: BOMs, UTF-16/32 and NUL bytes first, then UTF-8, then
Windows-1252 with a warning; ``--encoding`` overrides the detection.

Every failure and the Windows-1252 warning are located as ``line:column`` of the byte at fault.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from pacsman.queryfile._text import detect_delimiter, show, split_records

__all__ = ["DecodeFailure", "Decoded", "decode"]

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
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SAVE_UTF8 = 'save it as "CSV UTF-8" in Excel'
_NAME_IT = "or name its encoding with --encoding NAME (e.g. --encoding cp1250)"


class DecodeFailure(Exception):
    """The bytes are not text pacsman reads; ``message`` says why, located at ``line:column``."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


@dataclass(frozen=True)
class Decoded:
    """The text of a CSV file, and the warning (located) when its encoding was assumed."""

    text: str
    warning: str | None = None
    line: int | None = None
    column: int | None = None


def decode(
    raw: bytes, name: str, known: Iterable[str] = (), *, encoding: str | None = None
) -> Decoded:
    """Decode the file's bytes: UTF-8 (a leading BOM is its signature and dropped), else
    Windows-1252 with a warning; with ``encoding``, that codec and no detection at all.

    Raises:
        DecodeFailure: UTF-16, UTF-32, NUL-filled or other bytes that are neither UTF-8 nor
            Windows-1252 text, or not ``encoding``; with the fix for ``name``.
    """
    if encoding is not None:
        return _decode_as(raw, encoding, known)
    wide = _wide_encoding(raw)
    if wide is not None:
        family = wide[:6]  # UTF-16 or UTF-32; iconv needs the byte order when no BOM says it
        excel = ' (Excel "Unicode Text")' if family == "UTF-16" else ""
        raise DecodeFailure(
            f"the file is {family}{excel}, not UTF-8; {_SAVE_UTF8}, "
            f"or: iconv -f {wide} -t UTF-8 {name} > {_utf8_name(name)}"
        )
    if raw.count(b"\x00") > len(raw) // 4 > 0:
        raise _nul_bytes(raw, name, known)
    raw = raw.removeprefix(_UTF8_BOM)
    try:
        return Decoded(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return _windows_1252(raw, exc.start, known)


def _decode_as(raw: bytes, encoding: str, known: Iterable[str]) -> Decoded:
    """``raw`` in the codec the user named (a leading BOM is dropped)."""
    try:
        codec = codecs.lookup(encoding).name
        text = raw.decode(codec)
    except LookupError:
        raise DecodeFailure(
            f"--encoding {show(encoding)} is not a text encoding pacsman knows; use a name "
            "such as utf-8, cp1252, cp1250, latin-1 or utf-16, or leave --encoding out"
        ) from None
    except UnicodeDecodeError as exc:
        line, column = _locate(raw, exc.start, known, codec)
        raise DecodeFailure(
            f"byte 0x{raw[exc.start]:02X} is not {codec} (--encoding {encoding}); give the "
            f"file's real encoding, or leave --encoding out to let pacsman detect it",
            line,
            column,
        ) from None
    return Decoded(text.removeprefix("\ufeff"))


def _windows_1252(raw: bytes, start: int, known: Iterable[str]) -> Decoded:
    """The file as Windows-1252, if it decodes to text without control characters.

    Raises:
        DecodeFailure: a byte Windows-1252 does not define, or a control character other
            than TAB, CR and LF (the file is not text in that encoding either).
    """
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError as exc:
        line, column = _locate(raw, exc.start, known, "cp1252")
        raise DecodeFailure(
            f"byte 0x{raw[exc.start]:02X} is not UTF-8 and the file is not Windows-1252 "
            f"either; {_SAVE_UTF8} and try again, {_NAME_IT}",
            line,
            column,
        ) from None
    control = next((i for i, ch in enumerate(text) if _is_control(ch)), None)
    if control is not None:  # one byte per character in cp1252: the index is the offset
        line, column = _locate(raw, control, known, "cp1252")
        raise DecodeFailure(
            f"byte 0x{raw[control]:02X} is a control character: the file is neither UTF-8 nor "
            f"Windows-1252 text; {_SAVE_UTF8} and try again, {_NAME_IT}",
            line,
            column,
        )
    line, column = _locate(raw, start, known)
    return Decoded(
        text,
        f"the file is not UTF-8 (byte 0x{raw[start]:02X} here); read it as Windows-1252 "
        '(cp1252), which Excel\'s "CSV (Comma delimited)" writes on Windows; if accented '
        "letters come out wrong, name the encoding with --encoding NAME; to avoid this "
        'warning, save the file in Excel as "CSV UTF-8 (Comma delimited)"',
        line,
        column,
    )


def _is_control(ch: str) -> bool:
    return ch not in "\t\r\n" and unicodedata.category(ch) == "Cc"


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


def _locate(raw: bytes, start: int, known: Iterable[str], codec: str = "utf-8") -> tuple[int, int]:
    """The 1-based line and field of byte ``start``, reading what precedes it as ``codec``."""
    prefix = raw[:start].decode(codec, errors="replace")
    line = len(_LINE_BREAK.findall(prefix)) + 1
    whole = raw.decode("latin-1" if codec == "utf-8" else codec, errors="replace")
    records = split_records(prefix + "x", detect_delimiter(whole, known))
    return line, records[-1].cells[-1].column
