"""Label rules, checked before anything is transferred (contract §12).

* project, subject and session labels match ``^[A-Za-z0-9_-]{1,64}$``;
* a session label is unique in its project, across subjects and studies;
* two subject labels of a project may not differ only in case (XNAT's archiver matches
  subjects case-insensitively, so they would end up as one subject).

:func:`local_problems` looks at the uploads alone; :func:`archive_problems` compares them
with what the XNAT project already holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pacsman.layout import XNAT_LABEL_RULE, is_xnat_label
from pacsman.push.models import LabelProblem, SessionUpload

__all__ = ["ExistingSession", "archive_problems", "local_problems"]


@dataclass(frozen=True)
class ExistingSession:
    """A session already archived in the project: its subject label and StudyInstanceUID."""

    subject: str
    study_instance_uid: str


def _pattern_problems(upload: SessionUpload) -> list[LabelProblem]:
    problems = []
    for kind, label in zip(("project", "subject", "session"), upload.key, strict=True):
        if not is_xnat_label(label):
            message = f"{kind} label {label!r} is not valid; {XNAT_LABEL_RULE} (XNAT's rule)"
            problems.append(LabelProblem(upload, message))
    return problems


def _session_clashes(uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
    by_session: dict[tuple[str, str], list[SessionUpload]] = defaultdict(list)
    for upload in uploads:
        by_session[(upload.project, upload.session)].append(upload)
    problems = []
    for group in by_session.values():
        owners = {(u.subject, u.study_instance_uid) for u in group}
        if len(owners) < 2:
            continue
        others = ", ".join(sorted(f"subject {s!r} study {uid}" for s, uid in owners))
        for upload in group:
            message = (
                f"session label {upload.session!r} is given to {len(owners)} different "
                f"studies ({others}); a session label must be unique in the project"
            )
            problems.append(LabelProblem(upload, message))
    return problems


def _case_clashes(uploads: Sequence[SessionUpload], known: Iterable[str]) -> list[LabelProblem]:
    """Subjects whose labels differ from another label of the project only in case."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for label in known:
        spellings[label.casefold()].add(label)
    for upload in uploads:
        spellings[upload.subject.casefold()].add(upload.subject)
    problems = []
    for upload in uploads:
        variants = spellings[upload.subject.casefold()]
        if len(variants) > 1:
            listed = ", ".join(repr(s) for s in sorted(variants))
            message = (
                f"subject labels {listed} differ only in case; XNAT would merge them into "
                "one subject: use one spelling"
            )
            problems.append(LabelProblem(upload, message))
    return problems


def local_problems(uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
    """Problems visible in the uploads themselves (no network)."""
    problems = [p for u in uploads for p in _pattern_problems(u)]
    problems += _session_clashes(uploads)
    for project in {u.project for u in uploads}:
        problems += _case_clashes([u for u in uploads if u.project == project], ())
    return problems


def archive_problems(
    uploads: Sequence[SessionUpload],
    sessions: Mapping[str, ExistingSession],
    subjects: Iterable[str],
    *,
    replace: bool,
) -> list[LabelProblem]:
    """Problems against one XNAT project's ``sessions`` (by label) and ``subjects`` labels.

    A session already there under the same subject with the same study is fine (a resumed
    push); with another study it is a problem unless ``replace`` (``overwrite: delete``).
    """
    problems = _case_clashes(uploads, subjects)
    for upload in uploads:
        found = sessions.get(upload.session)
        if found is None:
            continue
        if found.subject != upload.subject:
            message = (
                f"session label {upload.session!r} is already used in project "
                f"{upload.project!r} by subject {found.subject!r}; choose another session label"
            )
            problems.append(LabelProblem(upload, message))
        elif found.study_instance_uid != upload.study_instance_uid and not replace:
            message = (
                f"session {upload.session!r} already exists in project {upload.project!r} "
                f"with another study (StudyInstanceUID {found.study_instance_uid}); choose "
                "another session label, or set xnat.overwrite: delete to replace it"
            )
            problems.append(LabelProblem(upload, message))
    return problems
