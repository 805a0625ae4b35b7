"""The XNAT target: one zip per session through ``connection.services.import_``, no duplicates,
verified on arrival.

Every attempt starts by asking XNAT what it already holds for the session (contract §16):

* archived with the same subject, study and every file -> DONE, nothing is sent (a timed-out
  or reset import that actually succeeded is never sent twice);
* archived under another subject, or with another study -> the item fails, nothing is sent
  (unless ``xnat.overwrite: delete`` for another study);
* archived with fewer files (a "success" with 0 files, a partial import) -> sent again, and
  XNAT merges the missing files in;
* absent -> sent.

After the import the session is read back: it is DONE only when every expected scan holds its
files.  Prearchive leftovers of this study (CONFLICT/ERROR entries from a clash) are deleted.

:func:`check_xnat` is the pre-flight a run makes before it retrieves anything: the login, the
project, and the labels known that early (those a query file gives), with the same rules as
the push.  It does not wait for XNAT: whatever fails there ends the run at once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from xnat import exceptions as xnat_errors

from pacsman.closing import Closing
from pacsman.config.push import XnatConfig
from pacsman.errors import FatalError, ItemFailed, PacsmanError, TransientError
from pacsman.push import _xnat_state as state
from pacsman.push._xnat_connection import (
    ANSWER_TIMEOUT,
    Rest,
    SessionExpired,
    classify,
    connect,
    disconnect,
    http_status,
    logged_in,
    xnat_message,
)
from pacsman.push.credentials import Credentials
from pacsman.push.labels import archive_problems, local_problems
from pacsman.push.models import (
    LabelProblem,
    PushOutcome,
    SessionUpload,
    describe_counts,
    dicom_files,
)
from pacsman.push.zipper import session_zip

__all__ = ["PlannedSession", "XnatTarget", "check_xnat", "complete"]

_log = structlog.get_logger("pacsman.push.xnat")
_HANDLER = "DICOM-zip"
_CONNECT_TIMEOUT = 30.0
_LEFTOVERS = frozenset({"CONFLICT", "ERROR"})


def complete(upload: SessionUpload, scans: Mapping[str, int]) -> bool:
    """True when ``scans`` holds exactly the files the upload sends."""
    if sum(scans.values()) != upload.expected_files:
        return False
    return all(scans.get(scan, 0) == n for scan, n in upload.expected_scans.items())


@dataclass(frozen=True)
class PlannedSession:
    """A session a run will push, as far as it is known before anything is retrieved: its
    labels, and ``where`` they come from (``q.csv:7``).

    Which study it holds is not known yet: XNAT holds de-identified StudyInstanceUIDs, made
    only when the study is de-identified.
    """

    where: str
    subject: str
    session: str


def check_xnat(
    config: XnatConfig,
    credentials: Credentials,
    project: str,
    planned: Sequence[PlannedSession] = (),
    *,
    timeout: float = ANSWER_TIMEOUT,
) -> list[str]:
    """The pre-flight: log in, find ``project``, and check the ``planned`` labels against it.

    Returns the label problems (``"q.csv:7: session label ..."``), empty when all are free.
    Nothing is retried: each request waits at most ``timeout`` seconds (announced after 5 s),
    and whatever fails ends the pre-flight with the fix.

    Raises:
        FatalError: no connection, no answer, a refused login (401), no permission (403), no
            XNAT REST API at the URL (404), or the project missing or hidden from the user.
    """
    try:
        with logged_in(config, credentials, timeout=timeout) as rest:
            _require_project(rest, project, credentials)
            if not planned:
                return []
            return _planned_problems(rest, project, planned)
    except TransientError as exc:
        raise FatalError(str(exc)) from None


def _require_project(rest: Rest, project: str, credentials: Credentials) -> None:
    status = rest.project_status(project)
    if status == 200:
        return
    if status in (403, 404):
        raise FatalError(
            f"project {project!r} does not exist on {rest.url}, or user {credentials.user!r} "
            f"may not see it (XNAT answered {status}); create it in XNAT, give the user access "
            "to it, or fix xnat.project"
        )
    raise FatalError(f"{rest.what}: GET /data/projects/{project} answered {status}")


def _planned_problems(rest: Rest, project: str, planned: Sequence[PlannedSession]) -> list[str]:
    """The push's label rules (:mod:`pacsman.push.labels`) that do not need the study.

    A session label already used by another subject, subject labels that differ only in
    case, and one session label given to two subjects; whether an existing session holds
    another study is checked by the push, before anything is sent.  Rows with the same
    labels count as one study (they may well be).
    """
    placeholder = "(found by C-FIND)"
    uploads = {
        SessionUpload(project, p.subject, p.session, Path(), placeholder, 0): p for p in planned
    }
    sessions = state.project_sessions(rest, project)
    subjects = state.project_subjects(rest, project)
    problems = local_problems(list(uploads))
    problems += archive_problems(list(uploads), sessions, subjects, replace=True)
    found = {f"{uploads[p.upload].where}: {p.message}": None for p in problems}
    return list(found)


class XnatTarget(Closing):
    """Pushes sessions to one XNAT through one reused ``xnat`` session (thread-safe)."""

    name = "xnat"

    def __init__(
        self, config: XnatConfig, credentials: Credentials, *, work_dir: Path | None = None
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._work_dir = work_dir
        self._lock = threading.Lock()
        self._connection: Any = None

    # -- connection -------------------------------------------------------------------------

    def _connected(self) -> Any:
        with self._lock:
            if self._connection is None:
                self._connection = connect(self.config, self._credentials)
                _log.info("xnat_connected", url=self.config.url, via=self._credentials.source)
            return self._connection

    def close(self) -> None:
        """Log out and close the connection (safe to call twice)."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            problem = disconnect(connection)
            if problem is not None:
                _log.warning("xnat_logout_failed", url=self.config.url, reason=problem)

    def _failure(self, exc: Exception, what: str) -> PacsmanError:
        error = classify(exc, what)
        if isinstance(error, SessionExpired):
            self.close()
        return error

    # -- labels -----------------------------------------------------------------------------

    def check_labels(self, uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
        """Local label rules, then each project against what XNAT holds (GETs only).

        Raises:
            TransientError: XNAT did not answer.
            FatalError: the login was refused.
        """
        problems = local_problems(uploads)
        connection = self._connected()
        replace = self.config.overwrite == "delete"
        for project in sorted({u.project for u in uploads}):
            mine = [u for u in uploads if u.project == project]
            try:
                problems += self._project_problems(connection, project, mine, replace)
            except PacsmanError:
                raise
            except Exception as exc:  # xnat/requests errors: sorted by classify
                raise self._failure(exc, f"checking labels of project {project!r}") from exc
        return problems

    def _project_problems(
        self, connection: Any, project: str, uploads: list[SessionUpload], replace: bool
    ) -> list[LabelProblem]:
        if not state.project_exists(connection, project):
            message = (
                f"project {project!r} does not exist on {self.config.url}, or user "
                f"{self._credentials.user!r} may not see it; create it or fix the project ID"
            )
            return [LabelProblem(u, message) for u in uploads]
        sessions = state.project_sessions(connection, project)
        subjects = state.project_subjects(connection, project)
        return archive_problems(uploads, sessions, subjects, replace=replace)

    # -- push -------------------------------------------------------------------------------

    def push(self, upload: SessionUpload) -> PushOutcome:
        """One attempt: check what XNAT holds, import if needed, read it back.

        Raises:
            TransientError: XNAT did not answer, answered 5xx, or holds too few files.
            ItemFailed: the label clashes, XNAT refused the upload, or the files are wrong.
            FatalError: the login was refused, or permission is missing.
        """
        connection = self._connected()
        try:
            if self.config.destination == "/prearchive":
                return self._attempt_prearchive(connection, upload)
            return self._attempt(connection, upload)
        except PacsmanError:
            raise
        except Exception as exc:  # xnat/requests errors: sorted by classify
            raise self._failure(exc, f"pushing {upload.describe()}") from exc

    def _attempt(self, connection: Any, upload: SessionUpload) -> PushOutcome:
        found = state.find_archived(connection, upload.project, upload.session)
        if found is None or not self._settled(connection, upload, found):
            self._send(connection, upload)
            found = state.find_archived(connection, upload.project, upload.session)
            if found is None or not self._arrived(upload, found.study_instance_uid, found.scans):
                raise _short_of(upload, found.scans if found else None)
            detail = f"pushed {upload.expected_files} file(s), verified on XNAT"
        else:  # an earlier attempt or run got it there: clear what a clash may have left
            self._clean_leftovers(connection, upload)
            detail = f"already on XNAT with all {upload.expected_files} file(s); nothing sent"
        return PushOutcome(upload, "DONE", found.uri, found.files, detail)

    def _settled(
        self, connection: Any, upload: SessionUpload, found: state.ArchivedSession
    ) -> bool:
        """True if ``found`` already is the upload, complete; raise if it clashes."""
        where = f"session {upload.session!r} in project {upload.project!r}"
        if found.subject != upload.subject:
            raise ItemFailed(
                f"{where} already belongs to subject {found.subject!r}, not "
                f"{upload.subject!r}; nothing was sent: choose another session label"
            )
        replace = self.config.overwrite == "delete"
        if found.study_instance_uid != upload.study_instance_uid and not replace:
            raise ItemFailed(
                f"{where} already holds another study (StudyInstanceUID "
                f"{found.study_instance_uid}); nothing was sent: choose another session label, "
                "or set xnat.overwrite: delete to replace it"
            )
        if self._arrived(upload, found.study_instance_uid, found.scans):
            return True
        if found.files > upload.expected_files and not replace:
            raise ItemFailed(
                f"{where} holds {found.files} file(s), more than the {upload.expected_files} "
                "this push sends; set xnat.overwrite: delete to replace it"
            )
        _log.info("xnat_session_incomplete", session=upload.describe(), files=found.files)
        return False

    @staticmethod
    def _arrived(upload: SessionUpload, uid: str, scans: Mapping[str, int]) -> bool:
        return uid == upload.study_instance_uid and complete(upload, scans)

    def _send(self, connection: Any, upload: SessionUpload) -> None:
        files = dicom_files(upload.directory)
        if len(files) != upload.expected_files:
            raise ItemFailed(
                f"{upload.directory} holds {len(files)} *.dcm file(s) but "
                f"{upload.expected_files} are expected; de-identify the session again"
            )
        with session_zip(upload.directory, files, work_dir=self._work_dir) as stream:
            _log.info("xnat_import", session=upload.describe(), files=len(files))
            try:
                connection.services.import_(
                    data=stream,  # a stream, not a path: xnatpy draws no progress bar
                    project=upload.project,
                    subject=upload.subject,
                    experiment=upload.session,
                    import_handler=_HANDLER,
                    destination=self.config.destination,
                    overwrite=self.config.overwrite,
                    content_type="application/zip",
                    timeout=(_CONNECT_TIMEOUT, self.config.import_timeout),
                )
            except (xnat_errors.XNATUploadError, xnat_errors.XNATResponseError) as exc:
                if http_status(exc) not in (400, 409):
                    raise
                self._clash(connection, upload, exc)

    def _clash(self, connection: Any, upload: SessionUpload, exc: Exception) -> None:
        """XNAT refused the import (400/409): fine if the session is complete after all."""
        self._clean_leftovers(connection, upload)
        found = state.find_archived(connection, upload.project, upload.session)
        if found is not None and self._arrived(upload, found.study_instance_uid, found.scans):
            return
        if found is not None:
            self._settled(connection, upload, found)  # raises the clear message if it clashes
        raise ItemFailed(
            f"XNAT refused the import of {upload.describe()} ({http_status(exc)}: "
            f"{xnat_message(exc)}); its prearchive leftovers were deleted"
        )

    def _clean_leftovers(self, connection: Any, upload: SessionUpload) -> None:
        entries = state.find_prearchived(connection, upload.project, upload.study_instance_uid)
        for entry in entries:
            if entry.status.upper() in _LEFTOVERS:
                state.delete_prearchive(connection, entry)
                _log.info("xnat_prearchive_cleaned", session=upload.describe(), url=entry.url)

    # -- destination /prearchive ------------------------------------------------------------

    def _attempt_prearchive(self, connection: Any, upload: SessionUpload) -> PushOutcome:
        archived = state.find_archived(connection, upload.project, upload.session)
        if archived is not None and self._settled(connection, upload, archived):
            detail = "already archived (someone archived it from the prearchive); nothing sent"
            return PushOutcome(upload, "DONE", archived.uri, archived.files, detail)
        found = self._in_prearchive(connection, upload)
        detail = f"already in the prearchive with all {upload.expected_files} file(s)"
        if found is None:
            self._send(connection, upload)
            found = self._in_prearchive(connection, upload, after_send=True)
            detail = f"pushed {upload.expected_files} file(s) to the prearchive, verified"
        return PushOutcome(upload, "DONE", found, upload.expected_files, detail)

    def _in_prearchive(
        self, connection: Any, upload: SessionUpload, *, after_send: bool = False
    ) -> str | None:
        """The URI of a complete READY prearchive entry; stale copies are deleted first."""
        entries = state.find_prearchived(connection, upload.project, upload.study_instance_uid)
        if any(e.busy for e in entries):
            raise TransientError(f"XNAT is still building {upload.describe()} in its prearchive")
        best: dict[str, int] | None = None
        for entry in entries:
            counts = state.scan_counts(connection, f"/data{entry.url}")
            if entry.status.upper() == "READY" and complete(upload, counts):
                return f"/data{entry.url}"
            if best is None or sum(counts.values()) > sum(best.values()):
                best = counts
            if not after_send:
                state.delete_prearchive(connection, entry)
        if after_send:
            raise _short_of(upload, best)
        return None


def _short_of(upload: SessionUpload, scans: Mapping[str, int] | None) -> TransientError:
    """The error for a session that is missing (``scans`` None) or short of files."""
    have = sum(scans.values()) if scans else 0
    if scans is None:
        differs = "the session is not there"
    else:
        differs = describe_counts(upload.expected_scans, scans) or "other scans"
    return TransientError(
        f"XNAT accepted {upload.describe()} but holds {have} of {upload.expected_files} "
        f"file(s) ({differs}); sending it again"
    )
