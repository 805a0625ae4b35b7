"""``pacsman xnat upload-resource``: derived files (NIfTI, segmentations, CSV) into a resource.

The files go to project/subject/experiment[/scan]/resource; the scan and the resource are
created when missing.  Each file's remote path is its path below ``--base``; a file outside
``--base`` is refused before anything is sent.  A file already on XNAT with the same content
(MD5) is skipped, so re-running after a failure is safe; one with different content is only
replaced with ``--overwrite``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from pacsman.errors import InputError, PacsmanError
from pacsman.push._xnat_connection import classify
from pacsman.push._xnat_state import exists
from pacsman.throttle import RetryPolicy

__all__ = ["ResourceRequest", "RestResource", "remote_paths", "upload_files", "upload_resource"]

T = TypeVar("T")
_log = structlog.get_logger("pacsman.push.resource")
_OTHER_SCAN = "xnat:otherDicomScanData"


@dataclass(frozen=True)
class ResourceRequest:
    """Where the files go and how: labels, optional scan, resource label and format."""

    project: str
    subject: str
    experiment: str
    resource: str
    files: tuple[Path, ...]
    base: Path
    scan: str | None = None
    scan_type: str | None = None
    format: str | None = None
    overwrite: bool = False


def remote_paths(files: Sequence[Path], base: Path) -> list[tuple[Path, str]]:
    """Pair each file with its remote path (below ``base``, POSIX form).

    Raises:
        InputError: a file is missing, is not a regular file, lies outside ``base`` (also
            through ``..`` or a symbolic link), or two files map to the same remote path.
    """
    root = base.resolve()
    pairs: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for file in files:
        resolved = file.resolve()
        if not resolved.is_relative_to(root):
            raise InputError(
                f"{file}: lies outside the base directory {base}; give files below --base "
                "(their path below it becomes the path on XNAT)"
            )
        if not resolved.is_file():
            raise InputError(f"{file}: not a file; give regular files")
        remote = resolved.relative_to(root).as_posix()
        if remote in seen:
            raise InputError(f"{file}: given twice (remote path {remote!r})")
        seen.add(remote)
        pairs.append((resolved, remote))
    if not pairs:
        raise InputError("no files given; name the files to upload")
    return pairs


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _call(retry: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """``fn`` with ``xnat``/``requests`` errors sorted into pacsman's kinds, retried."""

    def attempt() -> T:
        try:
            return fn()
        except PacsmanError:
            raise
        except Exception as exc:  # xnat/requests errors: sorted by classify
            raise classify(exc, what) from exc

    return retry.call(attempt, operation="xnat_upload_resource", step=what)


def _experiment(connection: Any, request: ResourceRequest) -> Any:
    uri = f"/data/projects/{request.project}/subjects/{request.subject}/experiments"
    if not exists(connection, f"{uri}/{request.experiment}"):
        raise InputError(
            f"no experiment {request.experiment!r} under subject {request.subject!r} in "
            f"project {request.project!r}; check the labels (they are case-sensitive)"
        )
    return connection.create_object(f"{uri}/{request.experiment}")


def _holder(connection: Any, experiment: Any, request: ResourceRequest) -> Any:
    if request.scan is None:
        return experiment
    if request.scan in experiment.scans:
        return experiment.scans[request.scan]
    session_type = str(experiment.__xsi_type__)
    scan_type = session_type.replace("SessionData", "ScanData")
    cls = connection.XNAT_CLASS_LOOKUP.get(scan_type) or connection.XNAT_CLASS_LOOKUP[_OTHER_SCAN]
    _log.info("xnat_scan_created", experiment=request.experiment, scan=request.scan)
    scan = cls(parent=experiment, id=request.scan, type=request.scan_type or request.resource)
    experiment.scans.clearcache()
    return scan


def _resource(holder: Any, request: ResourceRequest) -> Any:
    for resource in holder.resources.values():
        if resource.label == request.resource:
            return resource
    _log.info("xnat_resource_created", resource=request.resource)
    return holder.create_resource(request.resource, format=request.format)


def _remote_digests(connection: Any, resource: Any) -> dict[str, str]:
    rows = connection.get_json(f"{resource.uri}/files")["ResultSet"]["Result"]
    return {row["URI"].split("/files/", 1)[1]: row.get("digest", "") for row in rows}


def upload_resource(
    connection: Any, request: ResourceRequest, *, retry: RetryPolicy, url: str
) -> list[str]:
    """Upload the files; return the URL of every file now in the resource (sent or skipped).

    Raises:
        InputError: a path escapes ``base``, the experiment does not exist, or files with
            other content are already there and ``overwrite`` is false (nothing is sent).
        TransientError: XNAT kept failing for every attempt.
        ItemFailed, FatalError: XNAT refused a request.
    """
    pairs = remote_paths(request.files, request.base)
    experiment = _call(retry, "finding the experiment", lambda: _experiment(connection, request))
    holder = _call(
        retry, "finding or creating the scan", lambda: _holder(connection, experiment, request)
    )
    resource = _call(retry, "finding or creating the resource", lambda: _resource(holder, request))
    upload_files(connection, resource, pairs, overwrite=request.overwrite, retry=retry)
    return [f"{url}{resource.uri}/files/{name}" for _, name in pairs]


class RestResource:
    """A resource known by its URI (``.../resources/LABEL``), uploaded to with the session's
    own calls: no object navigation, for callers that found the resource already."""

    def __init__(self, connection: Any, uri: str, label: str) -> None:
        self._connection, self.uri, self.label = connection, uri, label

    def upload(self, path: Path, name: str, *, overwrite: bool, verbose: bool) -> None:
        """PUT one file (as ``xnat``'s resource objects do)."""
        uri = f"{self.uri}/files/{name}"
        self._connection.upload_file(uri, path=path, overwrite=overwrite, verbose=verbose)


def upload_files(
    connection: Any,
    resource: Any,
    pairs: Sequence[tuple[Path, str]],
    *,
    overwrite: bool,
    retry: RetryPolicy,
    fix: str = "add --overwrite to replace them",
    empty: bool = False,
) -> dict[str, str]:
    """Send each (file, remote path) not already in ``resource`` with the same MD5; return
    each remote path's MD5 (as read once, here).  ``empty``: the caller created the
    resource just now, so it is not listed first (it holds nothing to skip or replace).

    Raises:
        InputError: files with other content are there and ``overwrite`` is false (nothing
            is sent; the message ends with ``fix``).
        TransientError, ItemFailed, FatalError: as :func:`upload_resource`.
    """
    remote: dict[str, str] = {}
    if not empty:
        remote = _call(retry, "listing the resource", lambda: _remote_digests(connection, resource))
    local = {name: _md5(path) for path, name in pairs}
    clashes = [n for n in local if n in remote and remote[n] != local[n]]
    if clashes and not overwrite:
        listed = ", ".join(clashes[:10])
        raise InputError(
            f"{len(clashes)} file(s) already on XNAT with other content ({listed}); "
            f"nothing was sent: {fix}"
        )
    for path, name in pairs:
        if remote.get(name) != local[name]:
            send = _sender(connection, resource, path, name, local[name], overwrite=name in remote)
            _call(retry, f"uploading {name}", send)
    return local


def _sender(
    connection: Any, resource: Any, path: Path, name: str, digest: str, *, overwrite: bool
) -> Callable[[], None]:
    """One file upload that first checks whether a previous attempt already got through."""
    tried = False

    def send() -> None:
        nonlocal tried
        if tried and _remote_digests(connection, resource).get(name) == digest:
            return
        tried = True
        resource.upload(path, name, overwrite=overwrite, verbose=False)
        _log.info("xnat_file_uploaded", resource=resource.label, file=name)

    return send
