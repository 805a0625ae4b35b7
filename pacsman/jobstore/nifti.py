"""Each series' NIfTI conversion and its upload to XNAT, in the job store (``--nifti``).

A de-identified series is converted once: its outcome (``converted``, ``skipped``,
``failed``, ``quarantined``), the reason, the folder, the dcm2niix version and the files
written are kept in its ``series`` row (schema version 10).  Converted and skipped series are
settled; a failed or quarantined one is tried again by the next run.  After the session's
DICOM push is DONE on XNAT, a converted series' files go to its scan's ``NIFTI`` resource:
``nifti_push`` is DONE (verified) or FAILED with the reason; a FAILED one is tried again by
the next run.  Every change is one transaction, appended to the transition log too (kinds
``nifti`` and ``nifti_push``), and refused when the run's lease no longer holds the study.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pacsman.jobstore import JobStore, Run, RunRecord
from pacsman.jobstore.claims import fence
from pacsman.models import ItemState

__all__ = [
    "NIFTI_SETTLED",
    "NiftiCounts",
    "NiftiProblem",
    "NiftiSeries",
    "RowNifti",
    "SeriesNifti",
    "converted_series",
    "nifti_by_line",
    "nifti_by_series",
    "nifti_counts",
    "nifti_to_push",
    "record_nifti",
    "record_nifti_push",
    "series_for_nifti",
]

#: Outcomes a later run does not convert again (the values of pacsman.nifti.NiftiOutcome).
NIFTI_SETTLED = ("converted", "skipped")
_CONVERTED = "converted"

_COLUMNS = (
    "se.pacs, se.line, se.study_instance_uid, se.series_instance_uid, se.series_number, "
    "se.series_description, se.xnat_subject, se.xnat_session, se.anonymized_directory, "
    "se.raw_directory, se.anonymized_instances, se.nifti_directory"
)


@dataclass(frozen=True)
class NiftiSeries:
    """One de-identified series to convert, or converted and to upload."""

    pacs: str
    line: int
    study_instance_uid: str
    series_instance_uid: str
    series_number: str
    series_description: str
    xnat_subject: str
    xnat_session: str
    anonymized_directory: Path | None
    raw_directory: Path | None
    anonymized_instances: int | None
    nifti_directory: Path | None = None


def _path(value: object) -> Path | None:
    return None if value is None or value == "" else Path(str(value))


def _series(row: tuple[object, ...]) -> NiftiSeries:
    count = row[10]
    return NiftiSeries(
        pacs=str(row[0]),
        line=int(str(row[1])),
        study_instance_uid=str(row[2]),
        series_instance_uid=str(row[3]),
        series_number=str(row[4]),
        series_description=str(row[5]),
        xnat_subject=str(row[6]),
        xnat_session=str(row[7]),
        anonymized_directory=_path(row[8]),
        raw_directory=_path(row[9]),
        anonymized_instances=None if count is None else int(str(count)),
        nifti_directory=_path(row[11]),
    )


def series_for_nifti(store: JobStore, run: Run) -> list[NiftiSeries]:
    """The ANONYMIZED series of ``run`` not converted (nor skipped) yet, in query-file order."""
    rows = store._series(
        run,
        _COLUMNS,
        "AND se.anonymization = ? AND se.nifti NOT IN (?, ?)",
        (ItemState.ANONYMIZED.value, *NIFTI_SETTLED),
    )
    return [_series(r) for r in rows]


def converted_series(store: JobStore, run: Run) -> list[NiftiSeries]:
    """Every converted series of ``run`` (for the BIDS folder), in query-file order."""
    return [_series(r) for r in store._series(run, _COLUMNS, "AND se.nifti = ?", (_CONVERTED,))]


def nifti_to_push(store: JobStore, run: Run, target: str) -> list[NiftiSeries]:
    """Converted series whose NIfTI upload is not DONE, of sessions whose DICOM push to
    ``target`` is DONE (verified)."""
    rows = store._series(
        run,
        _COLUMNS,
        "AND se.nifti = ? AND se.nifti_push != ? AND EXISTS (SELECT 1 FROM pushes pu "
        "WHERE pu.run_id = se.run_id AND pu.target = ? AND pu.subject = se.xnat_subject "
        "AND pu.session = se.xnat_session AND pu.state = ?)",
        (_CONVERTED, ItemState.DONE.value, target, ItemState.DONE.value),
    )
    return [_series(r) for r in rows]


def record_nifti(
    store: JobStore,
    run: Run,
    series: NiftiSeries,
    outcome: str,
    *,
    detail: str,
    directory: Path,
    tool: str,
    files: int,
) -> None:
    """Record one series' conversion: outcome, reason, folder, dcm2niix version, files.

    A new conversion clears an earlier upload's state: its files are uploaded again.

    Raises:
        LeaseLost: the run's lease no longer holds the series' study.
    """
    with store._tx() as db:
        fence(db, run, series.study_instance_uid, series.pacs)
        db.execute(
            "UPDATE series SET nifti = ?, nifti_detail = ?, nifti_directory = ?, "
            "nifti_tool = ?, nifti_files = ?, nifti_push = '', nifti_push_detail = '' "
            "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
            (
                outcome,
                detail,
                str(directory),
                tool,
                files,
                run.id,
                series.pacs,
                series.series_instance_uid,
            ),
        )
        store._transition(db, run.id, "nifti", series.series_instance_uid, outcome, detail)


def record_nifti_push(
    store: JobStore, run: Run, series: NiftiSeries, state: ItemState, *, detail: str
) -> None:
    """Record one converted series' upload to its scan's NIFTI resource (DONE or FAILED).

    Raises:
        LeaseLost: the run's lease no longer holds the series' study.
    """
    with store._tx() as db:
        fence(db, run, series.study_instance_uid, series.pacs)
        db.execute(
            "UPDATE series SET nifti_push = ?, nifti_push_detail = ? "
            "WHERE run_id = ? AND pacs = ? AND series_instance_uid = ?",
            (state.value, detail, run.id, series.pacs, series.series_instance_uid),
        )
        store._transition(db, run.id, "nifti_push", series.series_instance_uid, state.value, detail)


@dataclass(frozen=True)
class NiftiProblem:
    """A series whose conversion or upload failed (for status and report): no UID shown."""

    line: int
    series_number: str
    outcome: str
    detail: str
    push: str = ""
    push_detail: str = ""


@dataclass(frozen=True)
class NiftiCounts:
    """A run's NIfTI outcomes: series per outcome and per upload state, the dcm2niix
    versions used, and the series that need attention."""

    outcomes: Counter[str] = field(default_factory=Counter)
    pushes: Counter[str] = field(default_factory=Counter)
    tools: tuple[str, ...] = ()
    problems: tuple[NiftiProblem, ...] = ()

    @property
    def any(self) -> bool:
        """Whether any series of the run was converted (or tried)."""
        return bool(self.outcomes)

    def lines(self) -> list[str]:
        """``nifti        3 converted, 1 skipped, 1 failed (dcm2niix v1.0.20260724)`` and
        ``  to XNAT     3 DONE``, then one line per problem; none when nothing was tried."""
        if not self.outcomes:
            return []
        order = ("converted", "skipped", "failed", "quarantined")
        tally = ", ".join(f"{self.outcomes[o]} {o}" for o in order if self.outcomes[o])
        tool = f" (dcm2niix {', '.join(self.tools)})" if self.tools else ""
        lines = [f"  nifti        {tally}{tool}"]
        if self.pushes:
            pushed = ", ".join(f"{n} {state}" for state, n in sorted(self.pushes.items()))
            lines.append(f"    to XNAT    {pushed} (scan resource NIFTI)")
        for p in self.problems:
            if p.outcome in ("failed", "quarantined"):
                lines.append(f"    line {p.line} series {p.series_number}: {p.outcome}: {p.detail}")
            if p.push == ItemState.FAILED.value:
                lines.append(
                    f"    line {p.line} series {p.series_number}: NIFTI upload failed: "
                    f"{p.push_detail}"
                )
        return lines

    def to_json(self) -> dict[str, object]:
        """``status --json``'s ``nifti``: counts, versions and problems."""
        return {
            "outcomes": dict(self.outcomes),
            "pushes": dict(self.pushes),
            "dcm2niix": list(self.tools),
            "problems": [p.__dict__ for p in self.problems],
        }


def nifti_counts(store: JobStore, run: Run | RunRecord) -> NiftiCounts:
    """How the run's series stand for NIfTI (read-only: safe for ``pacsman status``)."""
    rows = store._read(
        "SELECT line, series_number, nifti, nifti_detail, nifti_tool, nifti_push, "
        "nifti_push_detail FROM series WHERE run_id = ? AND nifti != '' "
        "ORDER BY line, CAST(series_number AS INTEGER), series_instance_uid",
        (run.id,),
    )
    outcomes: Counter[str] = Counter()
    pushes: Counter[str] = Counter()
    tools: dict[str, None] = {}
    problems = []
    for line, number, outcome, detail, tool, push, push_detail in rows:
        outcomes[str(outcome)] += 1
        if push:
            pushes[str(push)] += 1
        if tool:
            tools[str(tool)] = None
        if outcome in ("failed", "quarantined") or push == ItemState.FAILED.value:
            problems.append(
                NiftiProblem(
                    int(line), str(number), str(outcome), str(detail), str(push), str(push_detail)
                )
            )
    return NiftiCounts(outcomes, pushes, tuple(tools), tuple(problems))


# -- per series and per row, for the info CSV and ``pacsman report`` ---------------------------

#: A row's ``nifti`` cell: the first of its series' outcomes in this order ("pending": a
#: de-identified series not converted yet).
_ROW_ORDER = ("quarantined", "failed", "pending", "converted", "skipped")
#: A row's ``nifti_push`` cell: the first of its converted series' upload states.
_ROW_PUSH_ORDER = (ItemState.FAILED.value, ItemState.PENDING.value, ItemState.DONE.value)


@dataclass(frozen=True)
class SeriesNifti:
    """One series' NIfTI conversion and upload, as the info CSV shows them."""

    line: int
    series_number: str
    outcome: str  # "" until converted (or tried)
    detail: str
    push: str  # "" until uploaded (or tried)
    push_detail: str

    @property
    def reason(self) -> str:
        """Why the series needs a look: its conversion's reason (skipped ones too) and a
        failed upload's (``NIFTI upload: ...``); "" when converted and uploaded."""
        parts = [self.detail] if self.outcome != _CONVERTED else []
        if self.push == ItemState.FAILED.value:
            parts.append(f"series {self.series_number}: NIFTI upload: {self.push_detail}")
        return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class RowNifti:
    """A query row's NIfTI cells in ``pacsman report``: the worst outcome of its series, the
    reasons, and the worst upload state of its converted series."""

    outcome: str
    detail: str
    push: str


def nifti_by_series(store: JobStore, run: Run | RunRecord) -> dict[tuple[str, str], SeriesNifti]:
    """Every series of ``run`` by (PACS node, SeriesInstanceUID), read-only."""
    rows = store._read(
        "SELECT pacs, series_instance_uid, line, series_number, nifti, nifti_detail, "
        "nifti_push, nifti_push_detail FROM series WHERE run_id = ?",
        (run.id,),
    )
    return {
        (str(pacs), str(uid)): SeriesNifti(
            int(line), str(number), str(outcome), str(detail), str(push), str(push_detail)
        )
        for pacs, uid, line, number, outcome, detail, push, push_detail in rows
    }


def nifti_by_line(store: JobStore, run: Run | RunRecord, *, uploads: bool) -> dict[int, RowNifti]:
    """Each query row's :class:`RowNifti` (rows with no de-identified series have none);
    ``uploads``: the run pushes to XNAT, so a converted series not uploaded is PENDING."""
    rows = store._read(
        "SELECT line, series_number, nifti, nifti_detail, nifti_push, nifti_push_detail "
        "FROM series WHERE run_id = ? AND (anonymization = ? OR nifti != '') "
        "ORDER BY line, CAST(series_number AS INTEGER), series_instance_uid",
        (run.id, ItemState.ANONYMIZED.value),
    )
    by_line: dict[int, list[SeriesNifti]] = {}
    for line, number, outcome, detail, push, push_detail in rows:
        one = SeriesNifti(
            int(line), str(number), str(outcome), str(detail), str(push), str(push_detail)
        )
        by_line.setdefault(one.line, []).append(one)
    return {line: _row(series, uploads=uploads) for line, series in by_line.items()}


def _row(series: list[SeriesNifti], *, uploads: bool) -> RowNifti:
    outcomes = {s.outcome or "pending" for s in series}
    outcome = next(o for o in (*_ROW_ORDER, *sorted(outcomes)) if o in outcomes)
    pushes = {s.push or ItemState.PENDING.value for s in series if s.outcome == _CONVERTED}
    push = next((p for p in _ROW_PUSH_ORDER if p in pushes), "") if uploads else ""
    detail = "; ".join(s.reason for s in series if s.reason)
    return RowNifti(outcome, detail, push)
