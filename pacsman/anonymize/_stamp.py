"""What pacsman writes into every instance: labels, de-identification flags, file meta.

Values are ASCII, so they are put in as raw elements (see :mod:`._values`); the flags and
the code sequence items are encoded once per engine and shared, being immutable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsman import __version__
from pacsman.anonymize._values import peek, put_new, raw_text
from pacsman.anonymize.profile import DateMode, Profile, Relabel
from pacsman.dicom.meta import IMPLEMENTATION_CLASS_UID, file_meta_elements, padded

__all__ = ["IMPLEMENTATION_CLASS_UID", "Stamp", "first_uid", "transfer_syntax"]

_LONGITUDINAL = {DateMode.SHIFT: "MODIFIED", DateMode.KEEP: "UNMODIFIED"}
_log = structlog.get_logger("pacsman.anonymize.engine")


def _method(profile: Profile) -> list[str]:
    """DeidentificationMethod: the table revision, pacsman's version, the profile."""
    return [
        f"DICOM PS3.15 Table E.1-1 {profile.revision}",
        f"pacsman {__version__}",
        f"profile {profile.name} {profile.digest}",
    ]


def first_uid(ds: Dataset, tag: int) -> str:
    """The first value of a UID element, without padding."""
    values = peek(ds, tag, [])
    return values[0] if values else ""


@dataclass(frozen=True)
class _Constants:
    """The flag elements, encoded once per engine and VR encoding; shared (immutable)."""

    elements: tuple[tuple[int, RawDataElement], ...]
    items: tuple[dict[BaseTag, RawDataElement], ...]
    #: DeidentificationMethodCodeSequence, built once: written and read, never changed
    sequence: DataElement

    @classmethod
    def build(
        cls,
        flags: Sequence[tuple[int, str, list[str]]],
        codes: Sequence[tuple[str, str]],
        *,
        implicit: bool,
    ) -> _Constants:
        """Encode the flags and the code sequence items."""
        elements = tuple(
            (tag, raw_text(tag, vr, values, implicit=implicit)) for tag, vr, values in flags
        )
        items = []
        for code_value, meaning in codes:
            item = (
                raw_text(0x00080100, "SH", [code_value], implicit=implicit),  # CodeValue
                raw_text(0x00080102, "SH", ["DCM"], implicit=implicit),  # CodingSchemeDesignator
                raw_text(0x00080104, "LO", [meaning], implicit=implicit),  # CodeMeaning
            )
            items.append({element.tag: element for element in item})
        sequence = DataElement(0x00120064, "SQ", [Dataset(dict(item)) for item in items])
        return cls(elements, tuple(items), sequence)


def transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = "".join(peek(meta, 0x00020010, [])) if meta is not None else ""
    if uid:
        return uid
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


class Stamp:
    """The labels, flags and file meta of one engine's profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._flag_values = (
            (0x00120062, "CS", ["YES"]),  # PatientIdentityRemoved
            (0x00120063, "LO", _method(profile)),  # DeidentificationMethod
            (0x00280303, "CS", [_LONGITUDINAL.get(profile.date_mode, "REMOVED")]),
        )
        self._codes = [("113100", "Basic Application Confidentiality Profile")]
        self._codes += sorted(option.code for option in profile.options)
        self._constants: dict[bool, _Constants] = {}

    def relabel(self, ds: Dataset, subject: str, session: str) -> None:
        put_new(ds, 0x00100010, "PN", [subject])  # PatientName
        put_new(ds, 0x00100020, "LO", [subject])  # PatientID
        fits = len(session) <= 16  # StudyID and AccessionNumber are SH
        for tag, keyword, choice in (
            (0x00200010, "StudyID", self.profile.study_id),
            (0x00080050, "AccessionNumber", self.profile.accession_number),
        ):
            if choice is Relabel.SESSION and not fits:
                _log.warning("anonymize_session_label_too_long", attribute=keyword, limit=16)
            put_new(ds, tag, "SH", [session] if choice is Relabel.SESSION and fits else [])

    def flags(self, ds: Dataset) -> None:
        implicit, little = ds.original_encoding
        if implicit is None or not little:
            self._flags_converted(ds)
            return
        constants = self._constants.get(implicit) or self._constants.setdefault(
            implicit, _Constants.build(self._flag_values, self._codes, implicit=implicit)
        )
        for tag, element in constants.elements:
            ds[tag] = element
        ds[0x00120064] = constants.sequence  # ...MethodCodeSequence, shared

    def _flags_converted(self, ds: Dataset) -> None:
        """The flags as pydicom elements, for data sets not read as little endian."""
        for tag, vr, values in self._flag_values:
            put_new(ds, tag, vr, values)
        items = []
        for code_value, meaning in self._codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
                code_value,
                "DCM",
                meaning,
            )
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items

    def file_meta(self, ds: Dataset, syntax: str) -> None:
        """Replace ``ds``'s file meta with pacsman's (:mod:`pacsman.dicom.meta`), as raw
        explicit VR little endian elements, and its preamble with zeros."""
        elements = file_meta_elements(
            first_uid(ds, 0x00080016),  # SOPClassUID
            first_uid(ds, 0x00080018),  # SOPInstanceUID
            syntax,
        )
        meta: dict[BaseTag, DataElement | RawDataElement] = {}
        for tag, vr, value in elements:
            data = padded(vr, value)
            meta[Tag(tag)] = RawDataElement(Tag(tag), vr, len(data), data, 0, False, True)
        ds.file_meta = FileMetaDataset(meta)
        ds.preamble = b"\0" * 128  # a preamble can carry anything (TIFF headers, text)
