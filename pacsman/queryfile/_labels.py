"""XNAT relabel columns of a query file: label syntax, and the rules that span rows.

XNAT looks subject and session labels up case-insensitively within a project, so labels that
differ only in case name the same thing there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pacsman.layout import is_xnat_label, xnat_label_outsiders
from pacsman.queryfile._text import Cell, Report, show

__all__ = ["Labels", "label_problem"]


def label_problem(value: str) -> str | None:
    """``None`` if ``value`` is a valid XNAT label, else the message (bad characters, fix)."""
    if is_xnat_label(value):
        return None
    bad = xnat_label_outsiders(value)
    if bad:
        chars = ", ".join(show(ch) for ch in bad)
        return f"{show(value)} holds {chars}; XNAT labels take only A-Z, a-z, 0-9, '_' and '-'"
    return f"{show(value)} is {len(value)} characters long; XNAT labels hold at most 64"


@dataclass
class Labels:
    """The Subject and Session labels seen so far, checked row by row in file order."""

    report: Report
    subjects: dict[str, tuple[str, int]] = field(default_factory=dict)
    sessions: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)

    def check(self, good: Mapping[str, tuple[Cell, str]], subject: str | None) -> None:
        """Check one row's valid label cells; ``subject`` is its Subject even if invalid."""
        if "Subject" in good:
            self._check_subject(*good["Subject"])
        if "Session" in good:
            self._check_session(*good["Session"], subject)

    def _check_subject(self, cell: Cell, subject: str) -> None:
        earlier, line = self.subjects.setdefault(subject.casefold(), (subject, cell.line))
        if earlier != subject:
            self.report.error(
                cell.line,
                cell.column,
                f"column 'Subject': {show(subject)} differs only in case from {show(earlier)} "
                f"on line {line}; XNAT matches subject labels case-insensitively: spell them "
                "the same",
            )

    def _check_session(self, cell: Cell, session: str, subject: str | None) -> None:
        problem = None
        if session.casefold() in self.sessions:
            earlier, earlier_subject, line = self.sessions[session.casefold()]
            problem = f"{show(session)} is already the Session of line {line}"
            if earlier != session:
                problem += f" as {show(earlier)} (XNAT ignores case)"
            if earlier_subject and subject and earlier_subject.casefold() != subject.casefold():
                problem += (
                    f", for Subject {show(earlier_subject)}; a session belongs to one subject"
                )
            problem += "; give each session its own label"
        else:
            self.sessions[session.casefold()] = (session, subject, cell.line)
            if subject is None:
                problem = f"{show(session)} has no Subject; fill the Subject column on this row"
        if problem:
            self.report.error(cell.line, cell.column, f"column 'Session': {problem}")
