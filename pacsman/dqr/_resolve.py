"""Query-file rows -> the studies ``pacsman dqr`` asks XNAT's DQR to import.

Each row is found at the PACS either by DQR's own study query (``dqr.query: xnat``, the
row's keys become ``PacsSearchCriteria``; no counts, so sessions end "counts unverified")
or by pacsman's own C-FIND (``dqr.query: pacs``: series and instance counts, verified on
arrival).  The pipeline's rules hold:

* every answer is re-checked against every key of the row with the pipeline's matching rule
  (:func:`pacsman.dicom.matching.matches`): only exact matches are kept, and a key the
  answers carry no value for is refused rather than ignored;
* a study selected by an earlier row is taken once (first line wins; the later line is
  noted); a row naming a Session must select exactly one study;
* labels are the row's Subject/Session, else the project's mapping table (the same stable
  pseudonyms as the pipeline: subject by PatientID, session by StudyInstanceUID);
* labels follow the push's rules (XNAT's pattern, one study per session label, subject
  labels that differ only in case).

DQR imports whole studies, so series- and image-level keys other than ``Modality`` cannot
be honoured; ``Modality`` selects studies holding a series of that modality.  Patient names
and IDs are never logged or put in a message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pacsman.config import Config
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.matching import matches
from pacsman.dqr._model import DqrStudy, ExpectedSeries, PacsEntry, RowProblem, RowProblemKind
from pacsman.dqr._shapes import study_value
from pacsman.dqr._xapi import DqrApi
from pacsman.errors import ItemFailed
from pacsman.models import IMAGE_LEVEL_KEYS, SERIES_LEVEL_KEYS, QueryRow, StudyMatch
from pacsman.push.labels import local_problems
from pacsman.push.models import SessionUpload
from pacsman.query import FindAssociation, query_row
from pacsman.queryfile import sendable_problem
from pacsman.throttle import RetryPolicy

if TYPE_CHECKING:
    from pacsman.anonymize import MappingTable

__all__ = ["Resolved", "dqr_criteria", "resolve_studies"]

_log = structlog.get_logger("pacsman.dqr")

#: Query-file column -> DQR's PacsSearchCriteria field.
_CRITERIA = {
    "StudyInstanceUID": "studyInstanceUid",
    "AccessionNumber": "accessionNumber",
    "PatientID": "patientId",
    "PatientName": "patientName",
    "Modality": "modality",
}
#: Columns DQR's answers carry, checked on them but not sent (PacsSearchCriteria has none).
_CHECKED_ONLY = ("StudyDescription", "PatientBirthDate")
#: Keys that select series or instances: DQR imports whole studies.
_NOT_FOR_DQR = tuple(k for k in (*SERIES_LEVEL_KEYS, *IMAGE_LEVEL_KEYS) if k != "Modality")
_DQR_ATTEMPTS = 3


@dataclass(frozen=True)
class Resolved:
    """The studies to import, in query-file order, and the rows that gave none (or gave
    some twice), each with its kind and reason, by line."""

    studies: tuple[DqrStudy, ...]
    row_problems: tuple[RowProblem, ...]


@dataclass(frozen=True)
class _Found:
    """One exact match at the PACS, before it has labels."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    accession_number: str
    expected: tuple[ExpectedSeries, ...] = ()
    counts_verified: bool = False


def resolve_studies(
    config: Config,
    queryfile_rows: Sequence[QueryRow],
    api: DqrApi,
    pacs: PacsEntry,
    *,
    mapping: MappingTable,
) -> Resolved:
    """Find each row's studies at ``pacs`` (``dqr.query``), label them, de-duplicate them.

    Raises:
        TransientError: DQR's query (after 3 attempts) or the PACS (after its
            ``max_attempts``) still fails; nothing is imported yet, so the run can stop.
        FatalError: XNAT or the PACS refuses pacsman for good.
        InputError: an anonymization label template is invalid.
    """
    problems: list[RowProblem] = []
    owners: dict[str, int] = {}
    claimed: list[_Claimed] = []
    with _Finder(config, api, pacs) as finder:
        for row in queryfile_rows:
            try:
                found = finder.find(row)
            except ItemFailed as exc:
                problems.append(RowProblem(row.line, RowProblemKind.REFUSED, str(exc)))
                continue
            if not found:
                problems.append(RowProblem(row.line, RowProblemKind.NO_MATCH, finder.none(row)))
                continue
            claimed += _claim(row, found, owners, problems)
    labelled = [_labelled(config, api.project, c.row, c.found, mapping) for c in claimed]
    kept = _label_rules(api.project, labelled, problems)
    _log.info(
        "dqr_resolved",
        rows=len(queryfile_rows),
        studies=len(kept),
        row_problems=len(problems),
        query=config.dqr.query,
    )
    return Resolved(tuple(kept), tuple(sorted(problems, key=lambda p: (p.line, p.reason))))


# -- finding ----------------------------------------------------------------------------------


class _Finder:
    """Finds one row's exact matches, through DQR or pacsman's C-FIND (one association per
    PACS node, reused for every row)."""

    def __init__(self, config: Config, api: DqrApi, pacs: PacsEntry) -> None:
        self._config = config
        self._api = api
        self._pacs = pacs
        self._stack = ExitStack()
        self._associations: dict[str, FindAssociation] = {}

    def __enter__(self) -> _Finder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def find(self, row: QueryRow) -> list[_Found]:
        """The row's exact matches (none: :meth:`none` says why).

        Raises:
            ItemFailed: the row cannot be asked for this way, or it names a Session and
                matches several studies.
        """
        refused = [k for k in row.keys if k in _NOT_FOR_DQR]
        if refused:
            raise ItemFailed(
                f"column {', '.join(refused)} selects series or instances, but XNAT's DQR "
                "imports whole studies; drop the column (Modality may stay: it selects studies "
                "holding such a series), or use 'pacsman run', which retrieves series"
            )
        found = self._by_cfind(row) if self._config.dqr.query == "pacs" else self._by_dqr(row)
        if row.session and len(found) > 1:
            dates = ", ".join(sorted({f.study_date or "no date" for f in found}))
            raise ItemFailed(
                f"the row names Session {row.session!r} but matches {len(found)} studies "
                f"(dates {dates}); narrow it with StudyDate, AccessionNumber or "
                "StudyInstanceUID, or leave Session empty to get one session per study"
            )
        return found

    def none(self, row: QueryRow) -> str:
        """The reason of a row nothing matches."""
        if self._config.dqr.query == "pacs":
            where = f"PACS node {row.pacs or self._config.default_pacs!r}"
        else:
            where = f"PACS {self._pacs.id} ({self._pacs.ae_title}) through XNAT's DQR"
        return f"no study at {where} matches this row exactly"

    # -- dqr.query: xnat ----------------------------------------------------------------------

    def _by_dqr(self, row: QueryRow) -> list[_Found]:
        criteria = dqr_criteria(row)
        retry = RetryPolicy(max_attempts=_DQR_ATTEMPTS, cap=10.0)
        answers = retry.call(
            lambda: self._api.query_studies(self._pacs.id, criteria),
            operation="dqr_query",
            row=row.line,
        )
        _require_checkable(row, answers)
        kept = [a for a in answers if _dqr_match(row, a)]
        return list(_unique(_found_from_dqr(a) for a in kept))

    # -- dqr.query: pacs ----------------------------------------------------------------------

    def _by_cfind(self, row: QueryRow) -> list[_Found]:
        association = self._association(row.pacs or self._config.default_pacs)
        node = association.peer.node
        problem = sendable_problem(row, node=node.name, character_set=node.character_set)
        if problem is not None:
            raise ItemFailed(problem[1])
        modality = row.keys.get("Modality")
        keys = {k: v for k, v in row.keys.items() if k != "Modality"}
        plain = QueryRow(line=row.line, keys=keys, subject=row.subject, session=row.session)
        studies = query_row(association, plain)
        kept = [s for s in studies if modality is None or _has_modality(s, modality)]
        return list(_unique(_found_from_cfind(s) for s in kept))

    def _association(self, name: str) -> FindAssociation:
        if name not in self._associations:
            node = self._config.node(name)
            if node.called_ae_title.strip() != self._pacs.ae_title.strip():
                _log.warning(
                    "dqr_pacs_differs",
                    pacs_node=name,
                    called_ae_title=node.called_ae_title,
                    xnat_pacs_ae_title=self._pacs.ae_title,
                    reason="pacsman counts at one PACS what XNAT pulls from another",
                )
            peer = DicomPeer(node, self._config.local.ae_title, self._config.local.port)
            association = FindAssociation(peer, retry=RetryPolicy(max_attempts=node.max_attempts))
            self._associations[name] = self._stack.enter_context(association)
        return self._associations[name]


def dqr_criteria(row: QueryRow) -> dict[str, str]:
    """The row's keys as DQR's ``PacsSearchCriteria`` (StudyDate as a start/end range).

    Raises:
        ItemFailed: the row gives DQR nothing it can search by, or a key (StudyTime) DQR
            answers cannot be checked against.
    """
    criteria = {_CRITERIA[k]: v for k, v in row.keys.items() if k in _CRITERIA}
    date = row.keys.get("StudyDate")
    if date:
        start, dash, end = date.partition("-")
        criteria["studyDateStart"], criteria["studyDateEnd"] = start, end if dash else start
    if "StudyTime" in row.keys:
        raise ItemFailed(
            "column StudyTime cannot be checked: XNAT's DQR answers carry no study time; drop "
            "the column, or set dqr.query: pacs (pacsman's own C-FIND)"
        )
    if not criteria:
        raise ItemFailed(
            "the row gives XNAT's DQR nothing to search by; give at least one of "
            "StudyInstanceUID, AccessionNumber, PatientID, PatientName, StudyDate, Modality"
        )
    return criteria


def _dqr_match(row: QueryRow, answer: Mapping[str, Any]) -> bool:
    checked = (*_CRITERIA, "StudyDate", *_CHECKED_ONLY)
    for key, pattern in row.keys.items():
        if key not in checked:
            continue
        values = study_value(answer, key)
        if not any(matches(key, pattern, value) for value in values):
            return False
    return True


def _require_checkable(row: QueryRow, answers: Sequence[Mapping[str, Any]]) -> None:
    """Refuse keys no answer carries a value for (the pipeline's rule): pacsman cannot
    check them, so they would select everything.

    Raises:
        ItemFailed: naming the keys and the fix.
    """
    blind = [
        key
        for key, pattern in row.keys.items()
        if answers
        and not matches(key, pattern, "")
        and not any(v for a in answers for v in study_value(a, key))
    ]
    if blind:
        raise ItemFailed(
            f"XNAT's DQR returned no {', '.join(blind)} for any of the {len(answers)} "
            f"studies it found, so pacsman cannot check the row's {', '.join(blind)}; drop "
            "that column, select by keys DQR returns (StudyInstanceUID, AccessionNumber, "
            "StudyDate), or set dqr.query: pacs"
        )


def _found_from_dqr(answer: Mapping[str, Any]) -> _Found:
    return _Found(
        study_instance_uid=study_value(answer, "StudyInstanceUID")[0],
        patient_id=study_value(answer, "PatientID")[0],
        study_date=study_value(answer, "StudyDate")[0],
        accession_number=study_value(answer, "AccessionNumber")[0],
    )


def _has_modality(study: StudyMatch, modality: str) -> bool:
    return any(matches("Modality", modality, s.modality) for s in study.series)


def _found_from_cfind(study: StudyMatch) -> _Found:
    expected = tuple(
        ExpectedSeries(
            series_instance_uid=s.series_instance_uid,
            series_number=s.series_number,
            modality=s.modality,
            instances=s.expected_instances or 0,
        )
        for s in study.series
    )
    return _Found(
        study_instance_uid=study.study_instance_uid,
        patient_id=study.patient_id,
        study_date=study.study_date,
        accession_number=study.accession_number,
        expected=expected,
        counts_verified=all(s.expected_instances is not None for s in study.series),
    )


def _unique(found: Iterator[_Found] | Sequence[_Found]) -> Iterator[_Found]:
    """Each StudyInstanceUID once (a PACS may answer a study twice); none without a UID."""
    seen: set[str] = set()
    for one in found:
        if one.study_instance_uid and one.study_instance_uid not in seen:
            seen.add(one.study_instance_uid)
            yield one


# -- de-duplicating and labelling --------------------------------------------------------------


@dataclass(frozen=True)
class _Claimed:
    row: QueryRow
    found: _Found


def _claim(
    row: QueryRow, found: Sequence[_Found], owners: dict[str, int], problems: list[RowProblem]
) -> list[_Claimed]:
    """The row's studies no earlier row selected; the others are noted (first line wins)."""
    claimed = []
    for one in found:
        uid = one.study_instance_uid
        owner = owners.setdefault(uid, row.line)
        if owner == row.line:
            claimed.append(_Claimed(row, one))
        else:
            reason = f"StudyInstanceUID {uid} is already selected by line {owner}"
            problems.append(RowProblem(row.line, RowProblemKind.DUPLICATE, reason))
            _log.warning("study_duplicate", row=row.line, first_row=owner, study_uid=uid)
    return claimed


def _labelled(
    config: Config, project: str, row: QueryRow, found: _Found, mapping: MappingTable
) -> DqrStudy | RowProblem:
    """The study with its labels, or the row's problem when no subject label can be made."""
    templates = config.anonymization
    if not row.subject and not found.patient_id:
        return RowProblem(
            row.line,
            RowProblemKind.REFUSED,
            f"the PACS returned no PatientID for study {found.study_instance_uid}, so the "
            "mapping table cannot give it a subject label; give the row a Subject",
        )
    subject = row.subject or mapping.label_for(
        "subject", found.patient_id, project=project, template=templates.subject_template
    )
    session = row.session or mapping.label_for(
        "session", found.study_instance_uid, project=project, template=templates.session_template
    )
    return DqrStudy(
        line=row.line,
        study_instance_uid=found.study_instance_uid,
        subject=subject,
        session=session,
        accession_number=found.accession_number,
        study_date=found.study_date,
        expected=found.expected,
        counts_verified=found.counts_verified,
    )


def _label_rules(
    project: str, labelled: Sequence[DqrStudy | RowProblem], problems: list[RowProblem]
) -> list[DqrStudy]:
    """The studies whose labels break none of the push's rules; the others become problems."""
    studies = [s for s in labelled if isinstance(s, DqrStudy)]
    problems += [p for p in labelled if isinstance(p, RowProblem)]
    uploads = {
        SessionUpload(project, s.subject, s.session, Path(), s.study_instance_uid, 0): s
        for s in studies
    }
    broken: dict[DqrStudy, list[str]] = {}
    for problem in local_problems(list(uploads)):
        broken.setdefault(uploads[problem.upload], []).append(problem.message)
    for study, messages in broken.items():
        problems += [
            RowProblem(study.line, RowProblemKind.REFUSED, m) for m in dict.fromkeys(messages)
        ]
    return [s for s in studies if s not in broken]
