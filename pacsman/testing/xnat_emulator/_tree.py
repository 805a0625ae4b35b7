"""Archive paths: parse ``/data/projects/P/subjects/S/experiments/E/scans/1/resources/R/files/x``
(and every shorter or site-level form) and find what they name, by ID or label.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._model import Experiment, Project, Resource, Scan, Subject
from pacsman.testing.xnat_emulator._store import Holder, Store

__all__ = ["Target", "Tree", "parse_target"]

#: collection -> the collections it may follow (None = the start of the path)
_AFTER: MappingProxyType[str, frozenset[str | None]] = MappingProxyType(
    {
        "projects": frozenset({None}),
        "subjects": frozenset({None, "projects"}),
        "experiments": frozenset({None, "projects", "subjects"}),
        "scans": frozenset({"experiments"}),
        "resources": frozenset({"projects", "subjects", "experiments", "scans"}),
        "files": frozenset({"scans", "resources"}),
    }
)


@dataclass(frozen=True)
class Target:
    """A parsed archive path: the last ``collection`` named, whether it ends on an identifier
    (``leaf``), and the identifier given for each level (scan and resource may be lists).
    """

    collection: str
    leaf: bool
    project: str | None = None
    subject: str | None = None
    experiment: str | None = None
    scan: str | None = None
    resource: str | None = None
    file: str | None = None


def parse_target(segments: tuple[str, ...]) -> Target | None:
    """Parse the segments after ``/data``; None if they are not an archive path."""
    values: dict[str, str] = {}
    previous: str | None = None
    leaf, index = False, 0
    while index < len(segments):
        name = segments[index]
        if name not in _AFTER or previous not in _AFTER[name]:
            return None
        previous = name
        if name == "files":
            rest = "/".join(segments[index + 1 :])
            if rest:
                values["file"] = rest
            leaf = bool(rest)
            break
        leaf = index + 1 < len(segments)
        if leaf:
            values[name[:-1]] = segments[index + 1]
        index += 2
    if previous is None:
        return None
    return Target(previous, leaf, **values)


class Tree:
    """Finds the records a :class:`Target` names; every miss is XNAT's 404."""

    def __init__(self, store: Store, target: Target) -> None:
        self.store = store
        self.target = target

    def project(self) -> Project | None:
        """The project named in the path, if any."""
        if self.target.project is None:
            return None
        found = self.store.projects.get(self.target.project)
        if found is None:
            raise XnatHttpError(404, "Unable to find the specified project.")
        return found

    def subject(self) -> Subject | None:
        """The subject named in the path (ID or label within the project), if any."""
        project = self.project()
        if self.target.subject is None:
            return None
        found = self.store.subject(project.id if project else None, self.target.subject)
        if found is None:
            raise XnatHttpError(404, "Unable to find the specified subject.")
        return found

    def experiment(self) -> Experiment | None:
        """The experiment named in the path (ID or label within the project), if any."""
        subject, project = self.subject(), self.project()
        if self.target.experiment is None:
            return None
        found = self.store.experiment(project.id if project else None, self.target.experiment)
        if found is None or (subject is not None and found.subject_id != subject.id):
            raise XnatHttpError(404, "Unable to find the specified experiment.")
        return found

    def experiment_uri(self, experiment: Experiment) -> str:
        """The prefix XNAT uses for file URIs below this experiment (contract §8.4)."""
        if self.target.project is not None and self.target.subject is not None:
            return (
                f"/data/projects/{experiment.project}/subjects/{experiment.subject_id}"
                f"/experiments/{experiment.id}"
            )
        return f"/data/experiments/{experiment.id}"

    def scans(self) -> list[Scan]:
        """The scans the path names: one ID, a comma list, or ``ALL``."""
        experiment = self._need_experiment()
        wanted = self.target.scan or "ALL"
        if wanted == "ALL":
            return list(experiment.scans.values())
        found = [experiment.scans[s] for s in wanted.split(",") if s in experiment.scans]
        if not found:
            raise XnatHttpError(404, "Unable to find the specified scan.")
        return found

    def _need_experiment(self) -> Experiment:
        experiment = self.experiment()
        if experiment is None:
            raise XnatHttpError(404, "Unable to find the specified experiment.")
        return experiment

    def holders(self) -> list[Holder]:
        """Whatever holds the resources the path addresses (several for ``scans/ALL``)."""
        experiment = self.experiment()
        if experiment is not None:
            uri = self.experiment_uri(experiment)
            if self.target.scan is not None:
                return [self.store.scan_holder(experiment, s, uri) for s in self.scans()]
            return [self.store.experiment_holder(experiment, uri)]
        subject = self.subject()
        if subject is not None:
            return [self.store.subject_holder(subject)]
        project = self.project()
        if project is None:
            raise XnatHttpError(404, "Unable to find the specified resource owner.")
        return [self.store.project_holder(project)]

    def holder(self) -> Holder:
        """The single holder of the path (a single scan, experiment, subject or project)."""
        found = self.holders()
        if len(found) != 1:
            raise XnatHttpError(404, "Unable to find the specified scan.")
        return found[0]

    def resources(self, holder: Holder, *, missing_ok: bool = False) -> list[Resource]:
        """The resources the path names in ``holder``: one label/ID, a comma list, or all."""
        if self.target.resource is None:
            return list(holder.resources.values())
        found = [r for key in self.target.resource.split(",") if (r := holder.resource(key))]
        if not found and not missing_ok:
            raise XnatHttpError(404, "Unable to find the specified resource.")
        return found
