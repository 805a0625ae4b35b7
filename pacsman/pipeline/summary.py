"""The summary of a run, over every stage it was asked for: found; retrieved (complete,
incomplete); de-identified (quarantined); pushed (DONE on the target, with counts); where the
files are; each row that needs attention, with its reason; and the next step.

The CLI prints it (:meth:`RunSummary.lines`), and it is the ``run_finished`` event
(:meth:`RunSummary.event`: JSON lines and ``log.file``; the human console leaves the event out,
since the command prints the summary itself).  The rows and their reasons are the ones
``pacsman status`` shows (:func:`pacsman.pipeline._runview.row_views`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsman.config import Config
from pacsman.jobstore import InfoRecord, JobStore, Run
from pacsman.layout import ANONYMIZED_DIRECTORY
from pacsman.models import ItemState
from pacsman.pipeline._runview import RowView, Stages, row_views

if TYPE_CHECKING:
    from pacsman.push.targets import TargetKind

__all__ = ["Attention", "RunSummary", "StageFigures", "summarize"]

#: Rows that need attention listed on screen, and in the ``run_finished`` event.
SHOWN_ON_SCREEN = 20
SHOWN_IN_EVENT = 100
#: Row states that make the run exit with "some rows failed".
_FAILED_ROWS = frozenset({ItemState.FAILED, ItemState.NO_MATCH, ItemState.PENDING})


@dataclass(frozen=True)
class Attention:
    """A row that needs attention, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class StageFigures:
    """What a run was asked for, and the bytes each stage moved in this command."""

    retrieve: bool = False
    deidentify: bool = False
    push: TargetKind | None = None
    #: --nifti: each de-identified series converted (and uploaded with --push xnat).
    nifti: bool = False
    #: MB (10^6 bytes) moved by this command: retrieved, de-identified, pushed.
    moved_mb: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the CLI's last lines, the ``run_finished`` event and the exit code."""

    run_id: int
    resumed: bool
    rows: int
    states: dict[str, int] = field(default_factory=dict)
    studies: int = 0
    series: int = 0
    expected_instances: int = 0
    info_csv: Path | None = None
    queried_now: int = 0
    #: Series retrieved or de-identified, plus experiments pushed, by this run.
    worked_now: int = 0
    series_states: dict[str, int] = field(default_factory=dict)
    received_instances: int = 0
    failed_lines: tuple[int, ...] = ()
    #: Series found complete on disk and recorded without retrieving them, by this run.
    adopted: int = 0
    figures: StageFigures = field(default_factory=StageFigures)
    deidentify_states: dict[str, int] = field(default_factory=dict)
    anonymized_instances: int = 0
    #: Sessions (one per study) by push state, and the files verified on the target.
    push_states: dict[str, int] = field(default_factory=dict)
    files_on_target: int = 0
    #: Where things are: name -> path or URL.
    places: dict[str, str] = field(default_factory=dict)
    attention: tuple[Attention, ...] = ()
    next_step: str = ""
    #: --nifti: series per conversion outcome, and per upload state of their NIFTI resource.
    nifti_states: dict[str, int] = field(default_factory=dict)
    nifti_pushes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every row is settled and selected something."""
        return not self.failed_lines

    @property
    def nothing_done(self) -> bool:
        """True when this command found everything settled already."""
        return self.queried_now == 0 and self.worked_now == 0 and not self.adopted

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        how = "resumed" if self.resumed else "new"
        verdict = f"{len(self.attention)} need attention" if self.attention else "all done"
        lines = [
            f"run {self.run_id} ({how}) finished in {_clock(self.figures.elapsed_s)}: "
            f"{self.rows} row(s), {verdict}"
        ]
        lines += [f"  {name:<15}{text}" for name, text in self._stage_texts()]
        lines += self._place_lines() + self._attention_lines()
        steps = self.next_step.split("; then ")
        lines.append(f"  {'next':<15}{steps[0]}")
        lines += [f"  {'':<15}then {step}" for step in steps[1:]]
        return lines

    def _stage_texts(self) -> list[tuple[str, str]]:
        states = _states(self.states)
        texts = [
            (
                "found",
                f"{self.rows} row(s): {states}; {self.studies} study(ies), {self.series} "
                f"series, {self.expected_instances} instance(s) expected",
            )
        ]
        figures, moved = self.figures, self.figures.moved_mb
        if figures.retrieve:
            adopted = f"; {self.adopted} series adopted from disk" if self.adopted else ""
            texts.append(
                (
                    "retrieved",
                    f"{self.series} series: {_states(self.series_states)}; "
                    f"{self.received_instances} instance(s) received"
                    f"{_mb(moved.get('retrieve'))}{adopted}",
                )
            )
        if figures.deidentify:
            outcomes = _states(self.deidentify_states) or "none yet"
            texts.append(
                (
                    "de-identified",
                    f"{self.series} series: {outcomes}; {self.anonymized_instances} instance(s) "
                    f"written{_mb(moved.get('deidentify'))}",
                )
            )
        if figures.push is not None:
            done = self.push_states.get("DONE", 0)
            failed = self.push_states.get("FAILED", 0)
            texts.append(
                (
                    "pushed",
                    f"{done} of {self.studies} session(s) DONE on {figures.push}"
                    + (f", {failed} FAILED" if failed else "")
                    + f"; {self.files_on_target} file(s) verified there"
                    + _mb(moved.get("push")),
                )
            )
        if figures.nifti:
            uploaded = self.nifti_pushes.get("DONE", 0)
            texts.append(
                (
                    "NIfTI",
                    f"{self.series} series: {_states(self.nifti_states) or 'none yet'}"
                    + (f"; {uploaded} in their scan's NIFTI resource" if uploaded else ""),
                )
            )
        return texts

    def _place_lines(self) -> list[str]:
        lines = []
        for index, (name, place) in enumerate(self.places.items()):
            lines.append(f"  {'files' if index == 0 else '':<15}{name}: {place}")
        return lines

    def _attention_lines(self) -> list[str]:
        if not self.attention:
            return []
        lines = [f"  {'attention':<15}{len(self.attention)} row(s):"]
        lines += [f"    line {a.line}: {a.reason}" for a in self.attention[:SHOWN_ON_SCREEN]]
        if len(self.attention) > SHOWN_ON_SCREEN:
            more = len(self.attention) - SHOWN_ON_SCREEN
            lines.append(f"    ... and {more} more (the info CSV's 'detail' column has them all)")
        return lines

    def event(self) -> dict[str, Any]:
        """The summary as the fields of the ``run_finished`` event."""
        figures, moved = self.figures, self.figures.moved_mb
        found: dict[str, Any] = {"rows": self.rows, "states": self.states}
        found.update(studies=self.studies, series=self.series, instances=self.expected_instances)
        retrieved: dict[str, Any] | None = None
        deidentified: dict[str, Any] | None = None
        pushed: dict[str, Any] | None = None
        if figures.retrieve:
            retrieved = {"series": self.series_states, "instances": self.received_instances}
            retrieved.update(adopted=self.adopted, mb_now=round(moved.get("retrieve", 0.0), 1))
        if figures.deidentify:
            deidentified = {"series": self.deidentify_states}
            deidentified.update(instances=self.anonymized_instances)
            deidentified.update(mb_now=round(moved.get("deidentify", 0.0), 1))
        if figures.push is not None:
            pushed = {"target": figures.push, "sessions": self.studies}
            pushed.update(states=self.push_states, files_on_target=self.files_on_target)
            pushed.update(mb_now=round(moved.get("push", 0.0), 1))
        return {
            "resumed": self.resumed,
            "ok": self.ok,
            "elapsed_s": round(figures.elapsed_s, 1),
            "found": found,
            "retrieved": retrieved,
            "deidentified": deidentified,
            "pushed": pushed,
            "nifti": {"series": self.nifti_states, "uploads": self.nifti_pushes}
            if figures.nifti
            else None,
            "queried_now": self.queried_now,
            "worked_now": self.worked_now,
            "files": self.places,
            "attention_rows": len(self.attention),
            "attention": [
                {"line": a.line, "reason": a.reason} for a in self.attention[:SHOWN_IN_EVENT]
            ],
            "next": self.next_step,
        }


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))


def _mb(value: float | None) -> str:
    return f" ({value:.1f} MB now)" if value else ""


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def summarize(
    store: JobStore,
    run: Run,
    config: Config,
    *,
    records: Sequence[InfoRecord],
    out_directory: Path,
    info_csv: Path,
    figures: StageFigures,
    done_now: tuple[int, int, int],
) -> RunSummary:
    """The summary of ``run`` as the job store has it now (``records``: its info records),
    for a command that asked for ``figures``' stages and queried, worked on and adopted
    ``done_now`` items."""
    states = store.row_states(run)
    series = [r for r in records if r.series_state is not None]
    failed = _failed_lines(states, series, figures)
    stages = Stages(figures.retrieve, figures.deidentify, figures.push or "")
    views = row_views(store, store.run_record(run.id), stages, running=False)
    pushes = store.push_states(run, figures.push) if figures.push is not None else {}
    summary = RunSummary(
        run_id=run.id,
        resumed=run.resumed,
        rows=len(states),
        states=dict(Counter(state.value for state in states.values())),
        studies=len({(r.pacs, r.study.study_instance_uid, r.line) for r in series if r.study}),
        series=len(series),
        expected_instances=sum(r.expected_instances or 0 for r in series),
        info_csv=info_csv,
        queried_now=done_now[0],
        worked_now=done_now[1],
        series_states=_count(r.series_state for r in series),
        received_instances=sum(r.received_instances or 0 for r in series),
        failed_lines=tuple(sorted(failed)),
        adopted=done_now[2],
        figures=figures,
        deidentify_states=_count(r.anonymization for r in series),
        anonymized_instances=sum(r.anonymized_instances or 0 for r in series),
        push_states=_count(record.state for record in pushes.values()),
        files_on_target=sum(p.files_on_target for p in pushes.values() if p.state.value == "DONE"),
        places=_places(config, figures, out_directory, info_csv, series),
        attention=_attention(views, failed),
    )
    if figures.nifti:
        from pacsman.jobstore.nifti import nifti_counts

        nifti = nifti_counts(store, run)
        summary = replace(
            summary, nifti_states=dict(nifti.outcomes), nifti_pushes=dict(nifti.pushes)
        )
    return replace(summary, next_step=_next_step(summary, views))


def _count(states: Any) -> dict[str, int]:
    return dict(Counter(state.value for state in states if state is not None))


def _failed_lines(
    states: dict[int, ItemState], series: Sequence[InfoRecord], figures: StageFigures
) -> set[int]:
    """The lines whose row, or a series of it, is not done as far as this command asked."""
    failed = {line for line, state in states.items() if state in _FAILED_ROWS}
    if figures.retrieve:
        failed |= {r.line for r in series if r.series_state is not ItemState.COMPLETE}
    if figures.deidentify:
        failed |= {r.line for r in series if r.anonymization is not ItemState.ANONYMIZED}
    if figures.push is not None:
        failed |= {r.line for r in series if r.push is not ItemState.DONE}
    return failed


def _attention(views: Sequence[RowView], failed: set[int]) -> tuple[Attention, ...]:
    """Each failed line with its reasons (the info CSV's, when the view has none)."""
    reasons = {view.query.line: view.reason for view in views if view.reason}
    return tuple(
        Attention(line, reasons.get(line) or "not done: see the info CSV's 'detail' column")
        for line in sorted(failed)
    )


def _places(
    config: Config,
    figures: StageFigures,
    out: Path,
    info_csv: Path,
    series: Sequence[InfoRecord],
) -> dict[str, str]:
    places = {}
    if figures.retrieve:
        places["retrieved"] = str(out)
    if figures.deidentify:
        places["de-identified"] = str(out / ANONYMIZED_DIRECTORY)
        if figures.nifti:
            places["NIfTI"] = str(out / "nifti")
        quarantined = sum(1 for r in series if r.anonymization is ItemState.QUARANTINED)
        if quarantined:
            places["quarantined"] = (
                f"{quarantined} series, each in <its de-identified folder>.quarantine "
                f"under {out / ANONYMIZED_DIRECTORY}"
            )
    if figures.push == "xnat":
        places["XNAT"] = f"{config.xnat.url} project {config.xnat.project or 'pacsman'}"
    elif figures.push == "folder" and config.push.folder is not None:
        places["pushed to"] = str(config.push.folder)
    elif figures.push == "dicom" and config.push.dicom is not None:
        target = config.push.dicom
        places["pushed to"] = f"{target.called_ae_title}@{target.host}:{target.port}"
    places["info CSV"] = str(info_csv)
    if config.log.file is not None:
        places["log"] = str(config.log.file)
    return places


def _next_step(summary: RunSummary, views: Sequence[RowView]) -> str:
    """What to do now: nothing, or what to look at and then the same command again."""
    figures = summary.figures
    if summary.ok:
        if summary.nothing_done:
            return "nothing to do: every row and series was already settled in the job store"
        if not figures.retrieve:
            return "to retrieve these series, run the same command with --save (or --push)"
        return "nothing: every row is done"
    reasons = " ".join(view.reason for view in views if view.reason)
    advice = []
    if "NO_MATCH" in reasons:
        advice.append("correct the query values of the NO_MATCH rows")
    if "QUARANTINED" in reasons:
        advice.append("review the quarantined files (their reasons are above)")
    if "FAILED" in reasons or "INCOMPLETE" in reasons:
        advice.append(
            "fix what the FAILED/INCOMPLETE reasons name (a peer that was down needs no fix)"
        )
    advice.append(
        "run the same command again: it redoes only what is not done "
        f"('pacsman report --run {summary.run_id} --format csv --failed-only' writes these "
        "rows as a query file)"
    )
    return "; then ".join(advice)
