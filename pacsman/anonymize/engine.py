"""The de-identification engine: one :class:`Deidentifier` per project.

For each file: read (tolerant), note the burned-in risk, collect the originals, walk the
dataset with the resolved profile, relabel, set the de-identification flags, rewrite the
file meta, encode, leak-check the exact bytes, then write them atomically (temporary file
+ rename) either to ``dst_dir`` or, with a reason, to the sibling quarantine folder
``<dst_dir>.quarantine``.  Output files are named ``<new SOPInstanceUID>.dcm``: source file
names may carry PHI and are never logged.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsman import __version__
from pacsman.anonymize._walk import Walk
from pacsman.anonymize.burnedin import burned_in_risk
from pacsman.anonymize.dates import date_shift_days
from pacsman.anonymize.leakcheck import Originals, leak_check_bytes
from pacsman.anonymize.mapping import MappingTable
from pacsman.anonymize.profile import DateMode, Option, Profile, Relabel
from pacsman.anonymize.uids import remap_uid
from pacsman.errors import InputError, ItemFailed

__all__ = ["IMPLEMENTATION_CLASS_UID", "AnonymizeResult", "Deidentifier"]

#: pacsman's Implementation Class UID (a fixed 2.25 UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.229348925104640523125455290358931536617"
_IMPLEMENTATION_VERSION = f"PACSMAN_{__version__}".replace(".", "_")[:16]
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_LONGITUDINAL = {DateMode.SHIFT: "MODIFIED", DateMode.KEEP: "UNMODIFIED"}
_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AnonymizeResult:
    """One de-identified instance: where it is and whether it may be pushed.

    A quarantined file is never pushable; ``reason`` says why, without any PHI.
    """

    path: Path
    sop_instance_uid: str
    quarantined: bool
    reason: str | None = None


@dataclass(frozen=True)
class _Source:
    """What the mapping table needs from the source, kept in memory only."""

    patient_id: str
    study_instance_uid: str
    accession_number: str


def _check_label(kind: str, label: str) -> None:
    if not _LABEL.fullmatch(label):
        raise InputError(
            f"{kind} label {label!r} is not valid; use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit (XNAT's rule)"
        )


def _read(src: Path) -> Dataset:
    try:
        ds = dcmread(src, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ItemFailed(f"{src}: cannot read it as DICOM ({type(exc).__name__})") from exc
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise ItemFailed(
            f"{src}: not a composite instance (no SOP Class/Instance UID); "
            "DICOMDIR and other non-instance files are not de-identified: remove it"
        )
    return ds


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return str(uid)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


class Deidentifier:
    """De-identifies instances for one project with one key; build it once per project."""

    def __init__(
        self,
        profile: Profile,
        *,
        key: bytes,
        project: str,
        mapping: MappingTable | None = None,
    ) -> None:
        _check_label("project", project)
        self.profile = profile
        self.project = project
        self._key = key
        self._mapping = mapping
        self._recorded: set[tuple[str, str]] = set()

    def remap_uid(self, uid: str) -> str:
        """The project's keyed pseudonym for ``uid``."""
        return remap_uid(self._key, self.project, uid)

    def date_shift(self, subject: str) -> int:
        """The subject's keyed date shift in days."""
        return date_shift_days(self._key, self.project, subject)

    def deidentify_dataset(self, ds: Dataset, *, subject: str, session: str) -> Originals:
        """De-identify ``ds`` in place; return the originals the leak check looks for.

        Raises:
            InputError: ``subject`` or ``session`` is not a valid XNAT label.
        """
        _check_label("subject", subject)
        _check_label("session", session)
        keep_institution = Option.RETAIN_INSTITUTION_IDENTITY in self.profile.options
        originals = Originals.from_dataset(ds, keep_institution=keep_institution)
        meta_uid = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPInstanceUID", ""))
        walk = Walk(self.profile, self.remap_uid, self.date_shift(subject), originals)
        walk.dataset(ds)
        self._relabel(ds, subject, session)
        self._flags(ds)
        self._file_meta(ds)
        uids = walk.remapped | ({meta_uid} if meta_uid and meta_uid != ds.SOPInstanceUID else set())
        return originals.with_uids(uids)

    def _relabel(self, ds: Dataset, subject: str, session: str) -> None:
        ds.PatientName = subject
        ds.PatientID = subject
        for keyword, choice in (
            ("StudyID", self.profile.study_id),
            ("AccessionNumber", self.profile.accession_number),
        ):
            fits = len(session) <= 16  # both are SH
            if choice is Relabel.SESSION and not fits:
                _log.warning("anonymize_session_label_too_long", attribute=keyword, limit=16)
            setattr(ds, keyword, session if choice is Relabel.SESSION and fits else "")

    def _flags(self, ds: Dataset) -> None:
        profile = self.profile
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [
            f"DICOM PS3.15 Table E.1-1 {profile.revision}",
            f"pacsman {__version__}",
            f"profile {profile.name} {profile.digest}",
        ]
        codes = [("113100", "Basic Application Confidentiality Profile")]
        codes += sorted(option.code for option in profile.options)
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        mode = profile.date_mode
        ds.LongitudinalTemporalInformationModified = _LONGITUDINAL.get(mode, "REMOVED")

    def _file_meta(self, ds: Dataset) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID(_transfer_syntax(ds))
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
        ds.file_meta = meta
        ds.preamble = b"\0" * 128  # a preamble can carry anything (TIFF headers, text)

    def deidentify_file(
        self, src: Path, dst_dir: Path, *, subject: str, session: str
    ) -> AnonymizeResult:
        """De-identify ``src`` into ``dst_dir`` (or its quarantine folder) and leak-check it.

        Raises:
            InputError: ``subject`` or ``session`` is not a valid XNAT label.
            ItemFailed: ``src`` is not a readable composite instance, cannot be encoded,
                or its labels clash with the mapping table.
        """
        ds = _read(src)
        risk = burned_in_risk(ds, self.profile.accept_burned_in)
        source = _Source(
            str(ds.get("PatientID") or ""),
            str(ds.get("StudyInstanceUID") or ""),
            str(ds.get("AccessionNumber") or ""),
        )
        originals = self.deidentify_dataset(ds, subject=subject, session=session)
        data = _encode(ds, src)
        try:
            findings = leak_check_bytes(data, originals)
        except (InvalidDicomError, ValueError, EOFError) as exc:  # unparsable: never push it
            findings = [f"the output cannot be parsed back ({type(exc).__name__})"]
        reason = "leak check: " + "; ".join(findings[:5]) if findings else risk
        uid = str(ds.SOPInstanceUID)
        path = _store(data, dst_dir, f"{uid}.dcm", reason)
        self._record(subject, session, source)
        if reason is None:
            _log.info("anonymize_written", sop_instance_uid=uid, session=session)
        else:
            _log.warning("anonymize_quarantined", sop_instance_uid=uid, reason=reason)
        return AnonymizeResult(path, uid, reason is not None, reason)

    def _record(self, subject: str, session: str, source: _Source) -> None:
        if self._mapping is None or (subject, session) in self._recorded:
            return
        self._mapping.record(
            project=self.project,
            subject=subject,
            session=session,
            patient_id=source.patient_id,
            date_shift_days=self.date_shift(subject),
            study_instance_uid=source.study_instance_uid,
            accession_number=source.accession_number,
        )
        self._recorded.add((subject, session))


def _match_encoding(ds: Dataset) -> None:
    """Decode raw elements read in another encoding than the transfer syntax declares."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_transfer_syntax:
        return
    raws = (ds.get_item(tag) for tag in ds.keys())  # noqa: SIM118 (tags, not elements)
    if any(
        isinstance(raw, RawDataElement) and raw.is_implicit_VR != syntax.is_implicit_VR
        for raw in raws
    ):
        for _ in ds.iterall():  # converted elements are re-encoded; raw ones cannot be
            pass


def _encode(ds: Dataset, src: Path) -> bytes:
    _match_encoding(ds)
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, NotImplementedError) as exc:
        # The message may quote a value: name only the exception type.
        raise ItemFailed(
            f"{src}: cannot encode the de-identified instance ({type(exc).__name__})"
        ) from exc
    return buffer.getvalue()


def quarantine_dir(dst_dir: Path) -> Path:
    """The quarantine folder beside ``dst_dir``: ``<dst_dir>.quarantine``."""
    return dst_dir.with_name(dst_dir.name + ".quarantine")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _store(data: bytes, dst_dir: Path, name: str, reason: str | None) -> Path:
    """Write to ``dst_dir`` or, with a reason file, to its quarantine; drop stale copies."""
    held = quarantine_dir(dst_dir) / name
    note = held.with_name(name + ".reason.txt")
    if reason is None:
        _write_atomic(dst_dir / name, data)
        held.unlink(missing_ok=True)
        note.unlink(missing_ok=True)
        return dst_dir / name
    (dst_dir / name).unlink(missing_ok=True)
    _write_atomic(held, data)
    _write_atomic(note, (reason + "\n").encode())
    return held
