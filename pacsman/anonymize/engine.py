"""The de-identification engine: one :class:`Deidentifier` per project.

For each file: read (tolerant), note the burned-in risk, collect the originals, walk the
dataset with the resolved profile, relabel, set the de-identification flags, rewrite the
file meta, encode once, leak-check the exact bytes, then write them atomically (temporary
file + rename) either to ``dst_dir`` or, with a reason, to the sibling quarantine folder
``<dst_dir>.quarantine``.  Output files are named ``<new SOPInstanceUID>.dcm``: source file
names may carry PHI and are never logged.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache, partial
from pathlib import Path

import structlog
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pacsman.anonymize._encode import Encoded, MismatchedEncoding, encode_fast, encode_pydicom
from pacsman.anonymize._output import discard, hold, quarantine_dir, store
from pacsman.anonymize._pixels import clean_pixel_payloads
from pacsman.anonymize._read import read_instance
from pacsman.anonymize._result import AnonymizeResult, Source
from pacsman.anonymize._stamp import Stamp, first_uid, transfer_syntax
from pacsman.anonymize._values import peek
from pacsman.anonymize._walk import Plan, Walk
from pacsman.anonymize.burnedin import burned_in_risk
from pacsman.anonymize.dates import date_shift_days
from pacsman.anonymize.leakcheck import Originals, leak_check_bytes, leak_check_dataset
from pacsman.anonymize.mapping import MappingTable
from pacsman.anonymize.profile import Option, Profile
from pacsman.anonymize.uids import remap_uid
from pacsman.dicom.meta import IMPLEMENTATION_CLASS_UID
from pacsman.errors import InputError, ItemFailed
from pacsman.layout import XNAT_LABEL_RULE, is_xnat_label

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "AnonymizeResult",
    "Deidentifier",
    "Encapsulated",
    "InstanceFailed",
    "NotAnInstance",
    "Source",
    "check_label",
    "hold",
    "quarantine_dir",
]

_UID = re.compile(r"[0-9][0-9.]{0,63}")
_READ_ERRORS = (InvalidDicomError, ValueError, EOFError, struct.error, KeyError, TypeError)
_ENCODE_ERRORS = (ValueError, TypeError, NotImplementedError, struct.error, OverflowError)
_ENCAPSULATED_DOCUMENT = 0x00420011
_log = structlog.get_logger(__name__)


class Encapsulated(StrEnum):
    """What happens to encapsulated documents (PDF, CDA, STL, ...), whose content cannot
    be proved free of PHI: ``anonymization.encapsulated`` in the config."""

    OMIT = "omit"  # left out of the output, with a recorded reason; the rest goes on
    QUARANTINE = "quarantine"  # de-identified around the document and held for review


class InstanceFailed(ItemFailed):
    """One file could not be de-identified; ``reason`` says why, without path or values."""

    def __init__(self, src: Path, reason: str) -> None:
        super().__init__(f"{src}: {reason}")
        self.reason = reason


class NotAnInstance(InstanceFailed):
    """The file is not a DICOM composite instance (not DICOM, a DICOMDIR, ...): skip it."""


def check_label(kind: str, label: str) -> None:
    """Check an XNAT project, subject or session label.

    Raises:
        InputError: ``label`` is not 1-64 letters, digits, ``_`` or ``-``.
    """
    if not is_xnat_label(label):
        raise InputError(f"{kind} label {label!r} is not valid; {XNAT_LABEL_RULE} (XNAT's rule)")


def _read(src: Path) -> Dataset:
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise InstanceFailed(src, f"cannot read the file ({type(exc).__name__})") from exc
    try:
        ds = read_instance(data)
    except _READ_ERRORS as exc:
        raise NotAnInstance(src, f"not DICOM ({type(exc).__name__})") from exc
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        if data[128:132] != b"DICM":
            raise NotAnInstance(src, "not DICOM: not a composite instance and no DICM marker")
        raise NotAnInstance(
            src,
            "not a composite instance (no SOP Class/Instance UID); "
            "DICOMDIR and other non-instance files are not de-identified",
        )
    return ds


class Deidentifier:
    """De-identifies instances for one project with one key; build it once per project."""

    def __init__(
        self,
        profile: Profile,
        *,
        key: bytes,
        project: str,
        mapping: MappingTable | None = None,
        encapsulated: Encapsulated = Encapsulated.OMIT,
    ) -> None:
        check_label("project", project)
        self.profile = profile
        self.project = project
        self.encapsulated = Encapsulated(encapsulated)
        self._key = key
        self._mapping = mapping
        self._recorded: set[tuple[str, str, Source]] = set()
        self._plans: dict[tuple[int, str | None], Plan] = {}
        self._remap = lru_cache(maxsize=1 << 16)(partial(remap_uid, key, project))
        self._shift = lru_cache(maxsize=1 << 12)(partial(date_shift_days, key, project))
        self._stamp = Stamp(profile)

    def remap_uid(self, uid: str) -> str:
        """The project's keyed pseudonym for ``uid``."""
        return self._remap(uid)

    def date_shift(self, subject: str) -> int:
        """The subject's keyed date shift in days."""
        return self._shift(subject)

    def deidentify_dataset(self, ds: Dataset, *, subject: str, session: str) -> Originals:
        """De-identify ``ds`` in place; return the originals the leak check looks for.

        An encapsulated document gets the table's D (a dummy, its length attribute to
        match), and JPEG metadata that cannot be stripped stays (``deidentify_file``
        leaves such documents out or quarantines such files).

        Raises:
            InputError: ``subject`` or ``session`` is not a valid XNAT label.
        """
        return self._deidentify(ds, subject, session)[0]

    def _deidentify(
        self, ds: Dataset, subject: str, session: str, *, keep_document: bool = False
    ) -> tuple[Originals, str | None]:
        """De-identify ``ds``; the originals, and why its pixel payload is not clean.

        ``keep_document``: an encapsulated document stays whole (held for review).
        """
        check_label("subject", subject)
        check_label("session", session)
        keep_institution = Option.RETAIN_INSTITUTION_IDENTITY in self.profile.options
        originals = Originals.from_dataset(ds, keep_institution=keep_institution)
        meta = getattr(ds, "file_meta", None)
        meta_uid = "".join(peek(meta, 0x00020003, [])) if meta is not None else ""
        syntax = transfer_syntax(ds)
        walk = Walk(self.profile, self._remap, self.date_shift(subject), originals, self._plans)
        walk.keep_encapsulated = keep_document
        walk.dataset(ds)
        payload = clean_pixel_payloads(ds, syntax)
        self._stamp.relabel(ds, subject, session)
        self._stamp.flags(ds)
        self._stamp.file_meta(ds, syntax)
        new_uid = first_uid(ds, 0x00080018)
        uids = walk.remapped | ({meta_uid} if meta_uid and meta_uid != new_uid else set())
        return originals.with_uids(uids), payload

    def deidentify_file(
        self, src: Path, dst_dir: Path, *, subject: str, session: str
    ) -> AnonymizeResult:
        """De-identify ``src`` into ``dst_dir`` (or its quarantine folder) and leak-check it.

        With a mapping table, the subject and session are recorded first; a label that
        already belongs to another patient or study quarantines the file.

        An encapsulated document (PDF, CDA, ...) is left out (``left_out``, nothing
        written) or, with ``encapsulated=QUARANTINE``, quarantined for review.

        Raises:
            InputError: ``subject`` or ``session`` is not a valid XNAT label.
            NotAnInstance: ``src`` is not DICOM, or not a composite instance.
            InstanceFailed: ``src`` cannot be read, its result cannot be encoded, or its
                SOPInstanceUID (kept by ``retain_uids``) is not a valid UID.
        """
        ds = _read(src)
        source = Source.from_dataset(ds)
        document = _document(ds)
        if document is not None and self.encapsulated is Encapsulated.OMIT:
            return self._left_out(src, ds, dst_dir, document, source)
        risk = burned_in_risk(ds, self.profile.accept_burned_in)
        originals, payload = self._deidentify(ds, subject, session, keep_document=True)
        findings = _leaks(ds, _encode(ds, src), originals)
        clash = self.record(subject, session, source) if self._mapping is not None else None
        leak = "leak check: " + "; ".join(findings.reasons[:5]) if findings.reasons else None
        held = f"{document} held for review: {_UNCHECKABLE}" if document else None
        reason = "; ".join(r for r in (leak, risk, payload, held, clash) if r) or None
        uid = _checked_uid(src, first_uid(ds, 0x00080018))
        path = store(findings.data, dst_dir, f"{uid}.dcm", reason)
        event = "anonymize_written" if reason is None else "anonymize_quarantined"
        _log.debug(event, sop_instance_uid=uid, session=session, reason=reason)
        return AnonymizeResult(path, uid, reason is not None, reason, source)

    def _left_out(
        self, src: Path, ds: Dataset, dst_dir: Path, document: str, source: Source
    ) -> AnonymizeResult:
        """An encapsulated document, left out: nothing written, earlier copies removed."""
        original = first_uid(ds, 0x00080018)
        kept = Option.RETAIN_UIDS in self.profile.options
        uid = _checked_uid(src, original if kept else self._remap(original))
        discard(dst_dir, f"{uid}.dcm")
        reason = (
            f"{document} left out: {_UNCHECKABLE}; set anonymization.encapsulated: "
            "quarantine to hold the session for review instead"
        )
        _log.debug("anonymize_left_out", sop_instance_uid=uid, reason=reason)
        return AnonymizeResult(dst_dir / f"{uid}.dcm", uid, False, reason, source, left_out=True)

    def record(self, subject: str, session: str, source: Source) -> str | None:
        """Record subject and session in the mapping table; why they clash, or ``None``.

        Each (subject, session, source) is recorded once per engine.
        """
        if self._mapping is None or (subject, session, source) in self._recorded:
            return None
        try:
            self._mapping.record(
                project=self.project,
                subject=subject,
                session=session,
                patient_id=source.patient_id,
                date_shift_days=self.date_shift(subject),
                study_instance_uid=source.study_instance_uid,
                accession_number=source.accession_number,
            )
        except ItemFailed as exc:
            return str(exc)
        self._recorded.add((subject, session, source))
        return None


_UNCHECKABLE = "its content cannot be checked for PHI"


def _document(ds: Dataset) -> str | None:
    """What kind of encapsulated document ``ds`` holds (a SOP class name), or ``None``."""
    if _ENCAPSULATED_DOCUMENT not in ds:
        return None
    sop_class = UID(first_uid(ds, 0x00080016))
    known = sop_class.is_valid and sop_class.name != str(sop_class)
    return f"encapsulated document ({sop_class.name})" if known else "encapsulated document"


def _checked_uid(src: Path, uid: str) -> str:
    """``uid``, which names the output file: digits and dots only (no path tricks).

    Raises:
        InstanceFailed: it is not.
    """
    if not _UID.fullmatch(uid):
        raise InstanceFailed(src, "its SOPInstanceUID is not a valid UID (digits and dots)")
    return uid


@dataclass(frozen=True)
class _Checked:
    data: bytes
    reasons: list[str]


def _encode(ds: Dataset, src: Path) -> Encoded:
    try:
        try:
            return encode_fast(ds, transfer_syntax(ds))
        except MismatchedEncoding:
            return encode_pydicom(ds)
    except _ENCODE_ERRORS as exc:  # the message may quote a value: name only its type
        raise InstanceFailed(
            src, f"cannot encode the de-identified instance ({type(exc).__name__})"
        ) from exc


def _leaks(ds: Dataset, encoded: Encoded, originals: Originals) -> _Checked:
    if encoded.binary is not None:
        reasons = leak_check_dataset(ds, encoded.data, encoded.binary, originals)
        return _Checked(encoded.data, reasons)
    try:
        return _Checked(encoded.data, leak_check_bytes(encoded.data, originals))
    except (InvalidDicomError, ValueError, EOFError) as exc:  # unparsable: never push it
        return _Checked(encoded.data, [f"the output cannot be parsed back ({type(exc).__name__})"])
