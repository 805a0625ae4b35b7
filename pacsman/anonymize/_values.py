"""Reading and setting element values without pydicom converting raw elements.

pydicom converts a raw element into a :class:`~pydicom.dataelem.DataElement` the first time
it is accessed, and then encodes it again on writing: both are slow.  The engine only needs
text: these helpers read values from the raw bytes, and write ASCII values straight into raw
elements, which the encoder copies through.  Text in the character-set VRs (names,
descriptions) is decoded with the data set's character set, as pydicom would.
"""

from __future__ import annotations

from functools import cache

from pydicom import Dataset
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from pacsman.anonymize._profile_rules import effective_vr

__all__ = [
    "ASCII_VRS",
    "CHARSET_VRS",
    "Element",
    "ascii_texts",
    "element_texts",
    "encodings_of",
    "peek",
    "put",
    "put_new",
    "raw_of",
    "raw_text",
]

#: VRs limited to the default repertoire (ASCII): their raw bytes are their text.
ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
#: VRs whose text may use the data set's character set.
CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
_DELIMITERS = {0x5C, 0x3D, 0x5E, 0x0D, 0x0A, 0x09, 0x0C}  # reset ISO 2022 state at these
Element = DataElement | RawDataElement


def encodings_of(ds: Dataset, default: list[str] | None = None) -> list[str]:
    """The Python encodings of ``ds``'s SpecificCharacterSet (else ``default`` or ASCII)."""
    element = ds.get_item(0x00080005)
    if element is None:
        return default if default is not None else ["iso8859"]
    charset = element_texts(element, "CS", [])
    return _python_encodings(tuple(charset) if any(charset) else ("ISO_IR 6",))


@cache
def _python_encodings(charset: tuple[str, ...]) -> list[str]:
    try:
        return list(convert_encodings(list(charset)))
    except LookupError:
        return ["iso8859"]


def element_texts(
    element: DataElement | RawDataElement, vr: str, encodings: list[str]
) -> list[str]:
    """The element's values as text; raw bytes are decoded here, without pydicom's checks."""
    value = element.value
    if isinstance(value, bytes):
        if vr not in CHARSET_VRS or (value.isascii() and b"\x1b" not in value):
            text = value.decode("latin-1")  # ASCII is ASCII in every character set
        else:
            text = decode_bytes(value, encodings, _DELIMITERS)
        parts = [text] if vr in _SINGLE_VALUED else text.split("\\")
        return [part.strip("\0 ") for part in parts]
    if value is None or value == "":
        return []
    values = value if isinstance(value, MultiValue | list) else [value]
    return [str(item) for item in values]


@cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def peek(ds: Dataset, keyword: str | int, encodings: list[str]) -> list[str]:
    """The non-empty text values of a top-level element of ``ds``, leaving it raw."""
    tag = keyword if isinstance(keyword, int) else _tag(keyword)
    element = ds.get_item(tag)
    if element is None:
        return []
    texts = element_texts(element, effective_vr(tag, element.VR), encodings)
    return [text for text in texts if text]


def raw_of(element: Element, vr: str) -> RawDataElement | None:
    """The element, if it is still raw and stored with ``vr`` (or implicitly)."""
    if isinstance(element, RawDataElement) and element.VR in (None, vr):
        return element
    return None


def ascii_texts(ds: Dataset, element: Element, vr: str) -> list[str]:
    """The values of ``element`` (in ``ds``); ASCII-VR raw elements are read as they are."""
    raw = raw_of(element, vr) if vr in ASCII_VRS else None
    if raw is None or not (raw.value or b"").isascii():
        return element_texts(ds[element.tag], vr, [])
    text = (raw.value or b"").decode("latin-1").rstrip("\0 ")
    return [part.strip("\0 ") for part in text.split("\\")] if text else []


def _encoded(vr: str, values: list[str]) -> bytes:
    data = "\\".join(values).encode("ascii")
    return data + (b"\0" if vr == "UI" else b" ") if len(data) % 2 else data


def put(ds: Dataset, element: Element, vr: str, values: list[str]) -> None:
    """Set the values of ``element`` (in ``ds``); ASCII values go into its raw bytes."""
    raw = raw_of(element, vr)
    if raw is None or not all(value.isascii() for value in values):
        converted = ds[element.tag]
        converted.value = values if len(values) > 1 else (values[0] if values else None)
        return
    data = _encoded(vr, values)
    ds[raw.tag] = raw._replace(value=data, length=len(data))


def put_new(
    ds: Dataset,
    tag: int,
    vr: str,
    values: list[str],
    *,
    encoding: tuple[bool | None, bool | None] | None = None,
) -> None:
    """Add or replace an element with ASCII ``values``; raw when the encoding is known.

    ``encoding`` is ``(implicit VR, little endian)``; by default ``ds``'s original one.
    """
    implicit, little = encoding or ds.original_encoding
    if implicit is None or not little:
        ds[tag] = DataElement(tag, vr, values if len(values) > 1 else "".join(values))
    else:
        ds[tag] = raw_text(tag, vr, values, implicit=implicit)


def raw_text(tag: int, vr: str, values: list[str], *, implicit: bool) -> RawDataElement:
    """A little-endian raw element holding ASCII ``values``."""
    data = _encoded(vr, values)
    return RawDataElement(Tag(tag), None if implicit else vr, len(data), data, 0, implicit, True)
