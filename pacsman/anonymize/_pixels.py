"""Payloads inside PixelData: embedded overlay bits and JPEG metadata segments.

The engine does not decode images, but two things inside PixelData carry text:

* **embedded overlays** (the retired form): overlay planes stored in the bits of native
  pixel data above BitsStored.  Once the 60xx groups are gone nothing says what those
  bits are, so every bit outside ``[HighBit - BitsStored + 1, HighBit]`` is cleared (for
  signed pixels: set to the sign, as readers expect); pixel values do not change.
* **JPEG metadata** in encapsulated frames: APPn segments (Exif, XMP, ICC profiles...) and
  COM comments of JPEG and JPEG-LS, COM markers of JPEG 2000 (HTJ2K too).  They are cut
  out without touching the entropy-coded data; only a frame whose markers cannot be
  followed (not a JPEG codestream; a JPEG 2000 tile-part comment with a TLM marker) makes
  the file quarantined.  APP0 JFIF without a thumbnail and APP14 Adobe (16 and 14 bytes,
  no room for text) stay: decoders read the colour transform from them.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

__all__ = ["clean_pixel_payloads"]

_PIXEL_DATA = 0x7FE00010
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)
_JPEG = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 57, 70))
_JPEG |= {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # JPEG-LS
_J2K = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203, 204))
#: (marker, identifier) -> the largest whole segment that holds no more than its header
#: (no room for text): JFIF without thumbnail, Adobe (colour transform), SPIFF (JPEG-LS).
_KEPT_APP = {(0xE0, b"JFIF\0"): 18, (0xEE, b"Adobe"): 16, (0xE8, b"SPIFF"): 34}
#: JP2 boxes kept (signature, file type, header, codestream); others (xml, uuid, uinf,
#: IPR...) can hold any text.
_JP2_KEPT = frozenset({b"jP  ", b"ftyp", b"jp2h", b"jp2c"})


class PayloadError(ValueError):
    """A frame's markers cannot be followed; the message says which and why."""


def _us(ds: Dataset, tag: int) -> int | None:
    element = ds.get_item(tag)
    if element is None or element.value is None or element.value == b"":
        return None
    value = element.value
    if isinstance(value, bytes):
        little = getattr(element, "is_little_endian", True)
        return int.from_bytes(value[:2], "little" if little else "big")
    return int(value)


def _clean_bits(ds: Dataset) -> None:
    """Clear the bits of native pixel data outside BitsStored (embedded overlays)."""
    element = ds.get_item(_PIXEL_DATA)
    allocated, stored = _us(ds, 0x00280100), _us(ds, 0x00280101)
    high, signed = _us(ds, 0x00280102), _us(ds, 0x00280103)
    if element is None or allocated not in (8, 16, 32) or not stored or stored >= allocated:
        return
    data = element.value
    if not isinstance(data, bytes):
        return
    high = stored - 1 if high is None or high >= allocated or high < stored - 1 else high
    little = getattr(element, "is_little_endian", True)
    cleaned = _cleared(data, allocated, stored, high, bool(signed), little)
    if cleaned is not None:
        _replace(ds, cleaned)


def _cleared(
    data: bytes, allocated: int, stored: int, high: int, signed: bool, little: bool
) -> bytes | None:
    dtype = np.dtype(f"{'<' if little else '>'}u{allocated // 8}")
    count = len(data) // dtype.itemsize
    pixels = np.frombuffer(data, dtype, count=count)
    full = (1 << allocated) - 1
    low = high - stored + 1
    used = ((1 << stored) - 1) << low
    above = full ^ ((1 << (high + 1)) - 1)
    unused = np.array(full ^ used, dtype)
    if not signed:
        if not np.bitwise_or.reduce(pixels) & unused:  # one pass, no temporary array
            return None
        cleaned = pixels & np.array(used, dtype)
    else:
        sign = (pixels >> np.array(high, dtype)) & np.array(1, dtype)
        expected = (pixels & np.array(used, dtype)) | (sign * np.array(above, dtype))
        bare = pixels & np.array(used, dtype)  # stored without sign extension: also fine
        if ((pixels == expected) | (pixels == bare)).all():
            return None
        cleaned = expected
    return bytes(cleaned.astype(dtype).tobytes()) + data[count * dtype.itemsize :]


def _segments(frame: bytes, start: int) -> tuple[int, int, int]:
    """The marker at ``start`` and where its segment ends (2-byte length after it)."""
    marker = frame[start + 1]
    if start + 4 > len(frame):
        raise PayloadError("a JPEG marker segment is cut short")
    (length,) = struct.unpack_from(">H", frame, start + 2)
    return marker, start, start + 2 + length


def _entropy_end(frame: bytes, start: int) -> int:
    """Where the entropy-coded data starting at ``start`` ends (the next marker)."""
    index = frame.find(b"\xff", start)
    while index != -1 and index + 1 < len(frame):
        following = frame[index + 1]
        if following >= 0xC0 and not 0xD0 <= following <= 0xD7:
            return index
        index = frame.find(b"\xff", index + 1)
    return len(frame)


def _strip_jpeg(frame: bytes) -> bytes | None:
    """``frame`` without APPn/COM segments; ``None`` when there were none."""
    if frame[:2] != b"\xff\xd8":
        raise PayloadError("a frame does not start with a JPEG SOI marker")
    out, index, dropped = [frame[:2]], 2, False
    while index < len(frame):
        if frame[index] != 0xFF:
            raise PayloadError("a JPEG frame has data where a marker should be")
        marker = frame[index + 1] if index + 1 < len(frame) else 0xD9
        if marker == 0xFF:  # a fill byte: kept, as every byte not cut out
            out.append(b"\xff")
            index += 1
            continue
        if marker == 0xD9 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            out.append(frame[index : index + 2])
            index += 2
            if marker == 0xD9:
                out.append(frame[index:])  # trailing padding after EOI
                break
            continue
        marker, start, end = _segments(frame, index)
        segment = frame[start:end]
        if (0xE0 <= marker <= 0xEF or marker == 0xFE) and not _kept_app(marker, segment):
            dropped = True
        else:
            out.append(segment)
        index = end
        if marker == 0xDA:  # SOS: the entropy-coded data follows, copied as it is
            index = _entropy_end(frame, end)
            out.append(frame[end:index])
    return b"".join(out) if dropped else None


def _kept_app(marker: int, segment: bytes) -> bool:
    return len(segment) <= _KEPT_APP.get((marker, segment[4:9]), 0)


def _strip_j2k(frame: bytes) -> bytes | None:
    """``frame`` (a JPEG 2000 codestream, or one in a JP2 file) without COM markers and
    text boxes; ``None`` when there were none."""
    if frame[4:8] == b"jP  ":
        return _strip_jp2(frame)
    if frame[:2] != b"\xff\x4f":
        raise PayloadError("a frame does not start with a JPEG 2000 SOC marker")
    out, index, dropped, tlm = [frame[:2]], 2, 0, False
    while index + 4 <= len(frame) and frame[index : index + 2] != b"\xff\x90":
        marker, start, end = _segments(frame, index)
        tlm = tlm or marker == 0x55
        if marker == 0x64:
            dropped += end - start
        else:
            out.append(frame[start:end])
        index = end
    while index + 12 <= len(frame) and frame[index : index + 2] == b"\xff\x90":
        part, cut = _tile_part(frame, index)
        if cut and tlm:
            raise PayloadError("a JPEG 2000 tile-part comment cannot be cut (TLM marker)")
        dropped += cut
        out.append(part)
        (psot,) = struct.unpack_from(">I", frame, index + 6)
        index = index + psot if psot else len(frame)
    out.append(frame[index:])
    return b"".join(out) if dropped else None


def _strip_jp2(frame: bytes) -> bytes | None:
    """A JP2 file (which DICOM does not allow, but encoders write): text boxes dropped,
    COM markers stripped from its codestream box."""
    out, index, changed = [], 0, False
    while index + 8 <= len(frame):
        length, kind = struct.unpack_from(">I4s", frame, index)
        header = 16 if length == 1 else 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", frame, index + 8)
        end = len(frame) if length == 0 else index + length
        if end > len(frame) or end < index + header:
            raise PayloadError("a JP2 box runs past the end of its frame")
        if kind not in _JP2_KEPT:
            changed = True
        elif kind == b"jp2c" and (codestream := _strip_j2k(frame[index + header : end])):
            changed = True
            size = len(codestream) + 8
            out.append(struct.pack(">I4s", size, kind) + codestream)
        else:
            out.append(frame[index:end])
        index = end
    return b"".join(out) + frame[index:] if changed else None


def _tile_part(frame: bytes, start: int) -> tuple[bytes, int]:
    """One tile-part without COM markers in its header, Psot adjusted; bytes cut."""
    (psot,) = struct.unpack_from(">I", frame, start + 6)
    end = start + psot if psot else len(frame)
    header, index, cut = [frame[start : start + 12]], start + 12, 0
    while index + 2 <= end and frame[index : index + 2] != b"\xff\x93":
        marker, seg_start, seg_end = _segments(frame, index)
        if marker == 0x64:
            cut += seg_end - seg_start
        else:
            header.append(frame[seg_start:seg_end])
        index = seg_end
    body = b"".join(header) + frame[index:end]
    if cut and psot:
        body = body[:6] + struct.pack(">I", psot - cut) + body[10:]
    return body, cut


def _strip_frames(ds: Dataset, syntax: str) -> None:
    element = ds.get_item(_PIXEL_DATA)
    value = element.value if element is not None else None
    if not isinstance(value, bytes) or not value:
        return
    strip = _strip_jpeg if syntax in _JPEG else _strip_j2k
    count = _us_text(ds, 0x00280008) or 1
    frames = list(generate_frames(value, number_of_frames=count))
    stripped = [strip(frame) for frame in frames]
    if all(frame is None for frame in stripped):
        return
    new = [s if s is not None else f for s, f in zip(stripped, frames, strict=True)]
    has_bot = value[4:8] != b"\0\0\0\0"
    _replace(ds, encapsulate(new, has_bot=has_bot), undefined=True)
    for tag in _EXTENDED_OFFSETS:  # they described the old fragments
        if tag in ds:
            del ds[tag]


def _replace(ds: Dataset, data: bytes, *, undefined: bool = False) -> None:
    """Put ``data`` into PixelData, raw when it was raw (encapsulated: undefined length)."""
    element = ds.get_item(_PIXEL_DATA)
    if isinstance(element, RawDataElement):
        length = 0xFFFFFFFF if undefined else len(data)
        ds[_PIXEL_DATA] = element._replace(value=data, length=length)
    else:
        ds[_PIXEL_DATA].value = data


def _us_text(ds: Dataset, tag: int) -> int | None:
    element = ds.get_item(tag)
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        value = value.decode("latin-1").strip("\0 ")
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


@lru_cache(maxsize=64)
def _compressed(syntax: str) -> bool:
    return bool(UID(syntax).is_compressed)


def clean_pixel_payloads(ds: Dataset, syntax: str) -> str | None:
    """Clear embedded overlay bits and strip JPEG metadata in place; why not, or ``None``."""
    if _PIXEL_DATA not in ds.keys():  # noqa: SIM118 (the view: no Tag() conversion)
        return None
    if not _compressed(syntax):
        _clean_bits(ds)
        return None
    if syntax not in _JPEG and syntax not in _J2K:
        return None
    try:
        _strip_frames(ds, syntax)
    except (PayloadError, ValueError, struct.error) as exc:
        return f"pixel data: JPEG metadata cannot be stripped ({exc}); review the frames"
    return None
