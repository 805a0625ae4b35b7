"""The import service and the prearchive: staged uploads become prearchive entries, and
prearchive entries become archived sessions under XNAT's conflict rules (contract §10-§12).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from pacsman.testing.xnat_emulator._dicomzip import StagedSession
from pacsman.testing.xnat_emulator._errors import ArchiveConflict, XnatHttpError
from pacsman.testing.xnat_emulator._model import Experiment, PrearchiveEntry, PrearchiveStatus
from pacsman.testing.xnat_emulator._schema import session_type_for
from pacsman.testing.xnat_emulator._store import Store, list_files

__all__ = [
    "UNASSIGNED",
    "ArchiveTarget",
    "Labels",
    "archive_entry",
    "check_label",
    "dicom_labels",
    "poll_prearchive",
    "to_prearchive",
]

UNASSIGNED = "Unassigned"
_VALID_LABEL = re.compile(r"^[A-Za-z0-9_-]+$")
_CLEAN = re.compile(r"[ `~@#$%^&*()+=\[\]{}|\\/?:;\"',.<>]")


@dataclass(frozen=True)
class Labels:
    """Where a session goes: project ID, subject label, session label (any may be unknown)."""

    project: str | None
    subject: str | None
    session: str | None


@dataclass(frozen=True)
class ArchiveTarget:
    """How to archive a prearchive entry: ``overwrite`` is None, none, append or delete."""

    overwrite: str | None
    project: str | None = None
    subject: str | None = None
    session: str | None = None


def check_label(value: str, kind: str, *, strict: bool) -> str:
    """Return the label XNAT would store: 417 in strict mode, else XNAT's ``cleanValue``.

    Raises:
        XnatHttpError: 417 "Invalid character in <kind> label." (strict mode only).
    """
    if strict and not _VALID_LABEL.match(value):
        raise XnatHttpError(417, f"Invalid character in {kind} label.")
    return _CLEAN.sub("_", value)


def _assignment(header: dict[str, str], key: str) -> str | None:
    for keyword in ("PatientComments", "StudyComments"):
        match = re.search(rf"{key}:\s*(\S+)", header.get(keyword, ""))
        if match:
            return match.group(1)
    return None


def dicom_labels(header: dict[str, str], store: Store) -> Labels:
    """Derive labels as XNAT's default DICOM object identifier does (contract §10.2)."""
    project = _assignment(header, "Project")
    if project is None:
        candidates = (header.get("StudyDescription", ""), header.get("AccessionNumber", ""))
        project = next((c for c in candidates if c in store.projects), None)
    subject = _assignment(header, "Subject") or header.get("PatientName") or None
    session = _assignment(header, "Session") or header.get("PatientID") or "dicom_upload"
    return Labels(project, subject, session)


def _timestamp(store: Store, project: str) -> str:
    moment = datetime.now()
    taken = {e.timestamp for e in store.prearchive.values() if e.project == project}
    while (stamp := moment.strftime("%Y%m%d_%H%M%S%f")[:-3]) in taken:
        moment += timedelta(milliseconds=1)
    return stamp


def _unique_id(wanted: str, taken: set[str]) -> str:
    scan_id, suffix = wanted or "0", 2
    while scan_id in taken:
        scan_id, suffix = f"{wanted or '0'}-{suffix}", suffix + 1
    taken.add(scan_id)
    return scan_id


def _fill_scans(store: Store, entry: PrearchiveEntry, staged: StagedSession) -> None:
    """Move staged files into the entry's directory as scans with a DICOM resource."""
    taken: set[str] = set()
    for series in sorted(staged.series.values(), key=lambda s: (s.number.zfill(8), s.uid)):
        scan = store.new_scan(
            _unique_id(series.number, taken), session_type_for(series.modality)[1]
        )
        scan.type = scan.series_description = series.description
        scan.uid, scan.modality = series.uid, series.modality
        scan.resources["DICOM"] = store.new_resource("DICOM", format="DICOM", content="RAW")
        entry.scans[scan.id] = scan
        files = store.prearchive_scan_holder(entry, scan).files_dir(scan.resources["DICOM"])
        files.mkdir(parents=True, exist_ok=True)
        for name, path in series.files.items():
            os.replace(path, files / name)


def to_prearchive(
    store: Store, staged: StagedSession, labels: Labels, *, polls: int, seconds: float
) -> PrearchiveEntry:
    """Create a prearchive entry from a staged upload (RECEIVING while a delay is set)."""
    project = labels.project if labels.project in store.projects else UNASSIGNED
    header = staged.header
    modality = header.get("Modality", "")
    entry = PrearchiveEntry(
        project=project,
        timestamp=_timestamp(store, project),
        name=labels.session or "dicom_upload",
        subject=labels.subject or "",
        tag=next(iter(staged.study_uids), ""),
        status=PrearchiveStatus.RECEIVING if polls or seconds else PrearchiveStatus.READY,
        uploaded=datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        xsi_type=session_type_for(modality)[0],
        scan_date=_iso_date(header.get("StudyDate", "")),
        scan_time=_iso_time(header.get("StudyTime", "")),
        modality=modality,
        polls_left=polls,
        ready_at=time.time() + seconds,
    )
    _fill_scans(store, entry, staged)
    store.prearchive[entry.url] = entry
    return entry


def _iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 else ""


def _iso_time(value: str) -> str:
    digits = value.split(".")[0]
    return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}" if len(digits) >= 6 else ""


def poll_prearchive(store: Store, entries: list[PrearchiveEntry]) -> None:
    """Count one listing of ``entries``; RECEIVING ones become READY once their delay is over."""
    now = time.time()
    for entry in entries:
        if entry.status != PrearchiveStatus.RECEIVING:
            continue
        entry.polls_left = max(0, entry.polls_left - 1)
        if entry.polls_left == 0 and now >= entry.ready_at:
            entry.status = PrearchiveStatus.READY


# -- archiving ------------------------------------------------------------------------------


def _scan_conflicts(existing: Experiment, entry: PrearchiveEntry) -> None:
    """Raise XNAT's merge conflict for overwrite none/append, if any."""
    by_uid = {s.uid: s for s in existing.scans.values()}
    for scan in entry.scans.values():
        old = existing.scans.get(scan.id)
        if old is not None and old.uid != scan.uid:
            raise ArchiveConflict(
                f"Session already contains a scan ({scan.id}) with the same number,"
                " but a different UID."
            )
        twin = by_uid.get(scan.uid)
        if old is None and twin is not None:
            raise ArchiveConflict(
                f"Session already contains a scan ({twin.id}) with the same UID,"
                f" but a different number ({scan.id})."
            )


def _check_existing(
    existing: Experiment, entry: PrearchiveEntry, subject: str, target: ArchiveTarget, store: Store
) -> None:
    if store.subjects[existing.subject_id].label.casefold() != subject.casefold():
        raise ArchiveConflict(
            "Invalid modification of session subject via archive process.:"
            f" {existing.label} Already Exists for another Subject"
        )
    if target.overwrite is None:
        raise ArchiveConflict("Session already exists, retry with overwrite enabled")
    if target.overwrite == "delete":
        return
    if existing.uid and entry.tag and existing.uid != entry.tag:
        raise ArchiveConflict("Invalid modification of session UID via archive process.")
    _scan_conflicts(existing, entry)


def _matching_files(store: Store, existing: Experiment, entry: PrearchiveEntry) -> bool:
    """True if the upload has files and every one is already in the session."""
    seen_any = False
    for scan in entry.scans.values():
        incoming = store.prearchive_scan_holder(entry, scan)
        names = {n for n, _ in list_files(incoming.files_dir(scan.resources["DICOM"]))}
        old = existing.scans.get(scan.id)
        if not names:
            continue
        if old is None or "DICOM" not in old.resources:
            return False
        holder = store.scan_holder(existing, old, "")
        have = {n for n, _ in list_files(holder.files_dir(old.resources["DICOM"]))}
        if not names <= have:
            return False
        seen_any = True
    return seen_any


def _new_experiment(
    store: Store, entry: PrearchiveEntry, subject_label: str, project: str, session: str
) -> Experiment:
    subject = store.subject_ci(project, subject_label) or store.new_subject(project, subject_label)
    experiment = store.new_experiment(subject, session, entry.xsi_type)
    experiment.uid, experiment.modality = entry.tag, entry.modality
    experiment.date, experiment.time = entry.scan_date, entry.scan_time
    return experiment


def _move_scans(
    store: Store, entry: PrearchiveEntry, experiment: Experiment, replace: bool
) -> None:
    for scan in entry.scans.values():
        old = experiment.scans.get(scan.id)
        target = scan if old is None or replace else old
        holder = store.scan_holder(experiment, target, "")
        if replace and old is not None:
            shutil.rmtree(holder.base, ignore_errors=True)
        resource = target.resources.setdefault("DICOM", scan.resources["DICOM"])
        files_dir = holder.files_dir(resource)
        files_dir.mkdir(parents=True, exist_ok=True)
        source = store.prearchive_scan_holder(entry, scan).files_dir(scan.resources["DICOM"])
        for name, path in list_files(source):
            if replace or not (files_dir / name).exists():  # a merge keeps what is there
                os.replace(path, files_dir / name)
        experiment.scans[target.id] = target


def archive_entry(store: Store, entry: PrearchiveEntry, target: ArchiveTarget) -> str:
    """Archive a prearchive entry and return its archive URI (the entry is then removed).

    Raises:
        ArchiveConflict: the session clashes with the archive; the entry is marked CONFLICT.
    """
    project = target.project or entry.project
    subject_label = target.subject or entry.subject
    session = target.session or entry.name
    try:
        if project not in store.projects:
            raise ArchiveConflict(f"Invalid project: {project}")
        if not subject_label:
            raise ArchiveConflict("No subject specified for the session.")
        existing = store.experiment(project, session)
        if existing is not None:
            _check_existing(existing, entry, subject_label, target, store)
            if target.overwrite != "delete" and _matching_files(store, existing, entry):
                raise ArchiveConflict("Session already exists with matching files.")
    except ArchiveConflict as conflict:
        entry.status, entry.message = PrearchiveStatus.CONFLICT, conflict.message
        raise
    experiment = existing or _new_experiment(store, entry, subject_label, project, session)
    if target.overwrite == "delete":
        experiment.uid = entry.tag or experiment.uid
    _move_scans(store, entry, experiment, replace=target.overwrite == "delete")
    store.delete_prearchive(entry)
    subject = store.subjects[experiment.subject_id]
    return (
        f"/data/archive/projects/{project}/subjects/{subject.label}/experiments/{experiment.label}"
    )
