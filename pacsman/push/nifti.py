"""A converted series' NIfTI files into its XNAT scan's ``NIFTI`` resource, verified.

Used by ``pacsman --nifti --push xnat`` once the session's DICOM push is verified.  The scan
is the one XNAT built from the series: found by the de-identified SeriesInstanceUID (the
scan's UID), else by its ID, the SeriesNumber as XNAT names scans (``0`` without one).  A
scan that is not there fails the upload: NIfTI files never create a scan of their own.

The files go through the upload-resource code of ``pacsman xnat upload-resource``
(:func:`~pacsman.push._resource.upload_files`, on the resource found by its URI: one read of
the session (shared by the session's series: :class:`ScanIds`), one of the scan's resources,
then the files): in a resource that was there already, files with the same MD5 are skipped,
so a run that resumes sends nothing twice, and files with other content are replaced only
with ``push.nifti_overwrite: true``, otherwise the upload fails and nothing is sent; a
resource created now is not listed before (it holds nothing).  Then the resource is listed:
the upload is DONE only when every file is there with its MD5 (each file is read once for
it), or, where XNAT gives no digest, its size.  About 6 requests a series.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from pacsman.errors import FatalError, PacsmanError
from pacsman.push._resource import RestResource, remote_paths, upload_files
from pacsman.push.xnat import XnatTarget
from pacsman.throttle import RetryPolicy

__all__ = [
    "NIFTI_RESOURCE",
    "NiftiUpload",
    "NiftiUploadOutcome",
    "ScanIds",
    "nifti_files",
    "push_nifti",
]

T = TypeVar("T")
#: The label of the scan resource that holds a series' NIfTI files and sidecars.
NIFTI_RESOURCE = "NIFTI"
_log = structlog.get_logger("pacsman.push.nifti")


def nifti_files(directory: Path) -> tuple[Path, ...]:
    """The files of a series' NIfTI folder, sorted (NIfTI, sidecars, provenance)."""
    return tuple(sorted(p for p in directory.iterdir() if p.is_file()))


@dataclass(frozen=True)
class NiftiUpload:
    """One converted series for its scan's NIFTI resource."""

    project: str
    subject: str
    session: str
    #: The scan ID XNAT gives the series when no scan has its UID: its SeriesNumber.
    series_number: str
    #: The de-identified SeriesInstanceUID (the scan's UID on XNAT); '' when unknown.
    series_instance_uid: str
    directory: Path

    def describe(self) -> str:
        """``P1/SUBJ01/SESS01 series 3``: safe to log (labels are pseudonyms)."""
        return f"{self.project}/{self.subject}/{self.session} series {self.series_number}"


@dataclass(frozen=True)
class NiftiUploadOutcome:
    """DONE (every file verified in the resource) or FAILED, with the reason."""

    upload: NiftiUpload
    state: Literal["DONE", "FAILED"]
    detail: str
    scan: str = ""
    files: int = 0


class ScanIds:
    """The scans of each session, read once (``GET <session>?format=json``: its scans are
    its children) for all of its series; read again when a series' scan is not among them."""

    def __init__(self) -> None:
        self._scans: dict[str, list[dict[str, Any]]] = {}

    def find(self, connection: Any, upload: NiftiUpload) -> str | None:
        """The ID of the scan built from the series: by UID, else by SeriesNumber."""
        uri = (
            f"/data/projects/{upload.project}/subjects/{upload.subject}/experiments/"
            f"{upload.session}"
        )
        known = self._scans.get(uri)
        found = None if known is None else _scan_id(known, upload)
        if found is None:
            self._scans[uri] = known = _scans(connection.get_json(uri))
            found = _scan_id(known, upload)
        return found


def _scans(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        scan.get("data_fields", {})
        for item in session.get("items", [])
        for child in item.get("children", [])
        if child.get("field") == "scans/scan"
        for scan in child.get("items", [])
    ]


def _scan_id(scans: list[dict[str, Any]], upload: NiftiUpload) -> str | None:
    if upload.series_instance_uid:
        for scan in scans:
            if scan.get("UID") == upload.series_instance_uid:
                return str(scan.get("ID"))
    wanted = upload.series_number or "0"
    return wanted if any(str(scan.get("ID")) == wanted for scan in scans) else None


def _resource(connection: Any, upload: NiftiUpload, scan: str) -> tuple[RestResource, bool]:
    """The scan's NIFTI resource, created (format NIFTI) when it is not there; and whether
    it was created now."""
    scan_uri = (
        f"/data/projects/{upload.project}/subjects/{upload.subject}/experiments/"
        f"{upload.session}/scans/{scan}"
    )
    rows = connection.get_json(f"{scan_uri}/resources")["ResultSet"]["Result"]
    uri = f"{scan_uri}/resources/{NIFTI_RESOURCE}"
    created = not any(row.get("label") == NIFTI_RESOURCE for row in rows)
    if created:
        connection.put(uri, query={"format": "NIFTI"})
        _log.info("xnat_resource_created", resource=NIFTI_RESOURCE, scan=scan)
    return RestResource(connection, uri, NIFTI_RESOURCE), created


def _verify(
    connection: Any, resource_uri: str, pairs: list[tuple[Path, str]], digests: dict[str, str]
) -> str:
    """'' when every file is in the resource with its MD5 (``digests``, by remote path) or,
    without one, its size; else what differs."""
    rows = connection.get_json(f"{resource_uri}/files")["ResultSet"]["Result"]
    remote = {row["URI"].split("/files/", 1)[1]: row for row in rows}
    wrong = []
    for path, name in pairs:
        row = remote.get(name)
        if row is None:
            wrong.append(f"{name} missing")
        elif row.get("digest"):
            if row["digest"] != digests[name]:
                wrong.append(f"{name} has another MD5")
        elif str(row.get("Size", "")) != str(path.stat().st_size):
            wrong.append(f"{name} has another size")
    return ", ".join(wrong[:10])


def push_nifti(
    target: XnatTarget,
    upload: NiftiUpload,
    *,
    overwrite: bool,
    retry: RetryPolicy,
    scans: ScanIds | None = None,
) -> NiftiUploadOutcome:
    """Upload a converted series' files to its scan's NIFTI resource and verify them.
    ``scans``: the sessions' scans read so far (one for all the uploads of a run).

    Returns DONE or FAILED with the reason (no scan for the series, files with other content
    already there, XNAT refused or kept failing, a file not verified).

    Raises:
        FatalError: XNAT refuses pacsman for good (login, TLS, permission).
    """
    files = nifti_files(upload.directory)
    what = upload.describe()

    def step(name: str, fn: Callable[[Any], T]) -> T:
        """One step, retried; each attempt on the target's connection of the moment (a
        login session XNAT ended is closed, and the next attempt logs in again)."""

        def attempt() -> T:
            try:
                return fn(target._connected())
            except PacsmanError:
                raise
            except Exception as exc:  # xnat/requests errors: sorted (and the session closed)
                raise target._failure(exc, f"{name} of {what}") from exc

        return retry.call(attempt, operation="xnat_nifti_upload", step=name)

    scan_ids = scans or ScanIds()
    try:
        scan = step("finding the scan", lambda c: scan_ids.find(c, upload))
        if scan is None:
            return NiftiUploadOutcome(
                upload,
                "FAILED",
                f"session {upload.project}/{upload.subject}/{upload.session} has no scan "
                f"with the series' UID or ID {upload.series_number or '0'!r}; push the "
                "session's DICOM first (the next run uploads the NIfTI files then)",
            )
        resource, created = step("finding the NIFTI resource", lambda c: _resource(c, upload, scan))
        pairs = remote_paths(files, upload.directory)
        digests = upload_files(
            target._connected(),
            resource,
            pairs,
            overwrite=overwrite,
            retry=retry,
            fix="set push.nifti_overwrite: true to replace them",
            empty=created,
        )
        wrong = step(
            "verifying the NIFTI resource",
            lambda c: _verify(c, resource.uri, pairs, digests),
        )
    except FatalError:
        raise
    except PacsmanError as exc:  # other content there (InputError), refused, kept failing
        return NiftiUploadOutcome(upload, "FAILED", str(exc))
    except Exception as exc:  # xnat/requests errors outside the retried steps
        return NiftiUploadOutcome(upload, "FAILED", str(target._failure(exc, what)))
    if wrong:
        return NiftiUploadOutcome(
            upload, "FAILED", f"scan {scan} resource NIFTI after the upload: {wrong}", scan
        )
    _log.info("nifti_pushed", series=upload.describe(), scan=scan, files=len(files))
    detail = f"{len(files)} file(s) in scan {scan} resource {NIFTI_RESOURCE}, MD5 verified"
    return NiftiUploadOutcome(upload, "DONE", detail, scan, len(files))
