"""What ``pacsman dqr`` was asked for, and what it says at the end (private to the package).

:class:`DqrSummary` counts the studies per state and lists every row that needs attention
with its reason; sessions whose counts could not be verified (DQR's own query returns no
counts) are listed apart, never as verified.  :func:`write_dqr_info_csv` is the ``--info``
CSV: one line per study (or per row that resolved none), mode 0600, atomically.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsman.dqr._model import DqrState
from pacsman.layout import write_private_csv

if TYPE_CHECKING:
    from pacsman.jobstore.dqr import DqrRow

__all__ = [
    "DQR_INFO_COLUMNS",
    "DqrOptions",
    "DqrSummary",
    "resume_command",
    "summarize",
    "write_dqr_info_csv",
]

#: The ``--info`` CSV's columns; new ones are only ever appended.
DQR_INFO_COLUMNS: tuple[str, ...] = (
    "row",
    "subject",
    "session",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "expected_series",
    "expected_instances",
    "counts_verified",
    "state",
    "xnat_request",
    "attempts",
    "files_in_xnat",
    "detail",
)
#: Rows listed on screen; ``pacsman report --run N`` has them all.
_SHOWN = 20


@dataclass(frozen=True)
class DqrOptions:
    """What the user asked for on the command line."""

    queryfile: Path
    #: The PACS by XNAT's id or AE title (overrides ``dqr.pacs_id`` / ``dqr.pacs_ae_title``).
    pacs_id: int | None = None
    pacs_ae: str | None = None
    #: Write the info CSV (``<store_root>/<query file stem>_dqr_info.csv``).
    info: bool = False
    #: Retire the job store's run of these rows and start again.
    new_run: bool = False
    sheet: str | None = None
    encoding: str | None = None


@dataclass(frozen=True)
class DqrSummary:
    """The end of a dqr run: studies per state, what needs attention and why."""

    run_id: int
    resumed: bool
    project: str
    pacs: str
    rows: int
    #: Studies per :class:`~pacsman.dqr.DqrState` value.
    states: Mapping[str, int]
    #: (line, reason) of every row that needs attention.
    attention: tuple[tuple[int, str], ...] = ()
    #: Lines whose sessions are there with counts unverified.
    unverified: tuple[int, ...] = ()
    #: Rows that name a study another row already names.
    duplicates: int = 0
    imports: int = 0
    elapsed_s: float = 0.0
    info_csv: Path | None = None
    resume: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when every row is done (counts unverified count as done)."""
        return not self.attention

    @property
    def studies(self) -> int:
        """Studies resolved."""
        return sum(self.states.values())

    def lines(self) -> list[str]:
        """What the command prints."""
        again = " (resumed)" if self.resumed else ""
        lines = [
            f"pacsman dqr: run {self.run_id}{again}, project {self.project}, PACS {self.pacs}",
            f"  studies      {self.studies}: {_states(self.states)}",
            f"  rows         {self.rows}"
            + (f", {self.duplicates} naming a study another row names" if self.duplicates else ""),
            f"  imports      {self.imports} call(s) to XNAT in {self.elapsed_s:.0f} s",
        ]
        if self.unverified:
            lines.append(
                f"  counts unverified: {len(self.unverified)} session(s) (lines "
                f"{_lines(self.unverified)}): DQR's query gives no counts; set dqr.query: pacs "
                "to verify them"
            )
        if self.info_csv is not None:
            lines.append(f"  info CSV     {self.info_csv}")
        lines += [f"  warning: {warning}" for warning in self.warnings]
        lines += self._attention_lines()
        return lines

    def _attention_lines(self) -> list[str]:
        if not self.attention:
            return ["every row done (exit 0)"]
        lines = [f"attention: {len(self.attention)} row(s) (exit 1)"]
        lines += [f"  line {line}: {reason}" for line, reason in self.attention[:_SHOWN]]
        if len(self.attention) > _SHOWN:
            lines.append(
                f"  ... and {len(self.attention) - _SHOWN} more: pacsman report --run {self.run_id}"
            )
        if self.resume:
            lines.append(f"try again what failed: {self.resume}")
        return lines

    def event(self) -> dict[str, Any]:
        """The ``dqr_finished`` event's fields (no labels, no identifiers)."""
        return {
            "run": self.run_id,
            "rows": self.rows,
            "studies": self.studies,
            **{state: n for state, n in self.states.items() if n},
            "attention": len(self.attention),
            "imports": self.imports,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _states(states: Mapping[str, int]) -> str:
    words = {DqrState.UNVERIFIED.value: "done, counts unverified"}
    parts = [f"{states[s.value]} {words.get(s.value, s.value)}" for s in DqrState if states.get(s)]
    return ", ".join(parts) or "none"


def _lines(lines: Sequence[int], shown: int = 10) -> str:
    text = ", ".join(str(line) for line in lines[:shown])
    return text + (f" and {len(lines) - shown} more" if len(lines) > shown else "")


@dataclass(frozen=True)
class SummaryFacts:
    """What the run itself knows beyond the job store."""

    run_id: int
    resumed: bool
    project: str
    pacs: str
    imports: int
    elapsed_s: float
    info_csv: Path | None
    resume: str
    #: The project has no enabled anonymization script (allowed by xnat.allow_identified).
    identified: bool = False


def summarize(rows: Sequence[DqrRow], facts: SummaryFacts) -> DqrSummary:
    """The summary of a run whose rows (with their studies) are ``rows``."""
    studies = [study for row in rows for study in row.studies]
    states = Counter(study.state.value for study in studies)
    attention = tuple((row.query.line, "; ".join(row.reasons())) for row in rows if row.reasons())
    unverified = tuple(s.line for s in studies if s.state is DqrState.UNVERIFIED)
    duplicates = sum(1 for row in rows if row.query.state.value == "DUPLICATE")
    return DqrSummary(
        run_id=facts.run_id,
        resumed=facts.resumed,
        project=facts.project,
        pacs=facts.pacs,
        rows=len(rows),
        states=dict(states),
        attention=attention,
        unverified=unverified,
        duplicates=duplicates,
        imports=facts.imports,
        elapsed_s=facts.elapsed_s,
        info_csv=facts.info_csv,
        resume=facts.resume if attention else "",
        warnings=_identified(facts),
    )


def _identified(facts: SummaryFacts) -> tuple[str, ...]:
    if not facts.identified:
        return ()
    return (
        f"project {facts.project} has no enabled anonymization script: its sessions hold the "
        "PACS's identified data (xnat.allow_identified: true)",
    )


def info_csv_path(store_root: Path, queryfile: Path) -> Path:
    """``<store_root>/<query file stem>_dqr_info.csv``."""
    return store_root / f"{queryfile.stem}_dqr_info.csv"


def write_dqr_info_csv(path: Path, rows: Sequence[DqrRow]) -> Path:
    """Write the ``--info`` CSV (mode 0600, atomically); returns ``path``.

    Raises:
        OSError: it cannot be written.
    """
    cells: list[list[str | int | None]] = []
    for row in rows:
        if not row.studies:
            state = row.query.state.value
            cells.append(
                [
                    row.query.line,
                    row.query.subject,
                    row.query.session,
                    *[""] * 6,
                    state,
                    "",
                    "",
                    "",
                    row.query.detail,
                ]
            )
        for record in row.studies:
            study = record.study
            cells.append(
                [
                    study.line,
                    study.subject,
                    study.session,
                    study.study_instance_uid,
                    study.accession_number,
                    study.study_date,
                    len(study.expected) if study.counts_verified else "",
                    study.expected_instances,
                    "yes" if study.counts_verified else "no",
                    record.state.name,
                    record.request_id,
                    record.attempts,
                    record.files,
                    record.detail,
                ]
            )
    write_private_csv(path, DQR_INFO_COLUMNS, cells)
    return path


def resume_command(options: Mapping[str, object]) -> str:
    """The ``pacsman dqr`` command that resumes a run with these recorded options."""
    words = ["pacsman", "dqr", "--queryfile", str(options.get("queryfile") or "QUERYFILE")]
    if options.get("pacs_id"):
        words += ["--pacs-id", str(options["pacs_id"])]
    if options.get("pacs_ae"):
        words += ["--pacs-ae", str(options["pacs_ae"])]
    for flag in ("sheet", "encoding", "config"):
        if options.get(flag):
            words += [f"--{flag}", str(options[flag])]
    words += ["--info"] if options.get("info") else []
    command = shlex.join(words)
    cwd = str(options.get("cwd") or "")
    return f"cd {shlex.quote(cwd)} && {command}" if cwd and Path(cwd) != Path.cwd() else command
