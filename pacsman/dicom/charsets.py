"""DICOM character sets (Specific Character Set defined terms) and their Python codecs.

The table is pydicom's ``pydicom.charset.python_encoding`` (pydicom 3.0.2, the version
:mod:`pacsman.dicom.hooks` was checked against), kept here so that the commands that only read
a config or a query file (``validate``, ``submit``, ``jobs``) start without loading pydicom;
``tests/test_hooks.py`` checks that the two stay equal.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["PYTHON_ENCODINGS"]

#: Defined term of (0008,0005) Specific Character Set -> Python codec name.
PYTHON_ENCODINGS = MappingProxyType(
    {
        "": "iso8859",
        "ISO_IR 6": "iso8859",
        "ISO_IR 13": "shift_jis",
        "ISO_IR 100": "latin_1",
        "ISO_IR 101": "iso8859_2",
        "ISO_IR 109": "iso8859_3",
        "ISO_IR 110": "iso8859_4",
        "ISO_IR 126": "iso_ir_126",
        "ISO_IR 127": "iso_ir_127",
        "ISO_IR 138": "iso_ir_138",
        "ISO_IR 144": "iso_ir_144",
        "ISO_IR 148": "iso_ir_148",
        "ISO_IR 166": "iso_ir_166",
        "ISO 2022 IR 6": "iso8859",
        "ISO 2022 IR 13": "shift_jis",
        "ISO 2022 IR 87": "iso2022_jp",
        "ISO 2022 IR 100": "latin_1",
        "ISO 2022 IR 101": "iso8859_2",
        "ISO 2022 IR 109": "iso8859_3",
        "ISO 2022 IR 110": "iso8859_4",
        "ISO 2022 IR 126": "iso_ir_126",
        "ISO 2022 IR 127": "iso_ir_127",
        "ISO 2022 IR 138": "iso_ir_138",
        "ISO 2022 IR 144": "iso_ir_144",
        "ISO 2022 IR 148": "iso_ir_148",
        "ISO 2022 IR 149": "euc_kr",
        "ISO 2022 IR 159": "iso2022_jp_2",
        "ISO 2022 IR 166": "iso_ir_166",
        "ISO 2022 IR 58": "iso_ir_58",
        "ISO_IR 192": "UTF8",
        "GB18030": "GB18030",
        "ISO 2022 GBK": "GBK",
        "ISO 2022 58": "GB2312",
        "GBK": "GBK",
    }
)
