"""The emulator's archive: records in a JSON index, files in a directory tree.

Layout under the data dir (labels, not IDs, so tests can find things)::

    .xnat-emulator.json                                   the index
    <project>/<subject>/<session>/scans/<scan>/resources/<label>/files/<path>
    <project>/<subject>/<session>/resources/<label>/files/<path>
    <project>/.project/resources/<label>/files/<path>      project resources
    <project>/<subject>/.subject/resources/<label>/files/  subject resources
    .prearchive/<project>/<timestamp>/<name>/scans/<scan>/resources/DICOM/files/<name>
    .staging/                                             uploads being unpacked

Every public method expects the caller to hold :attr:`Store.lock` (use :meth:`Store.transaction`
for changes, which also saves the index).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pacsman.testing.xnat_emulator._model import (
    Experiment,
    PrearchiveEntry,
    Project,
    Resource,
    Scan,
    Subject,
    experiment_from_json,
    prearchive_from_json,
    project_from_json,
    subject_from_json,
    to_json,
)

__all__ = ["Holder", "Store", "insert_date", "list_files"]

_INDEX = ".xnat-emulator.json"
_SITE = "XNAT"


def insert_date() -> str:
    """Return the current time in XNAT's ``insert_date`` format."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-5]


@dataclass(frozen=True)
class Holder:
    """Anything that holds resources: a project, subject, experiment or scan.

    ``uri`` is the prefix of the file URIs XNAT would build for it; ``zip_prefix`` is the
    folder its resources get in zip downloads; ``category`` is the resource listing's column.
    """

    resources: dict[str, Resource]
    base: Path
    uri: str
    category: str
    zip_prefix: str

    def resource(self, key: str) -> Resource | None:
        """Find a resource by label, else by numeric ``xnat_abstractresource_id``."""
        if key in self.resources:
            return self.resources[key]
        return next((r for r in self.resources.values() if str(r.id) == key), None)

    def files_dir(self, resource: Resource) -> Path:
        """The directory holding the resource's files."""
        return self.base / "resources" / resource.label / "files"


def list_files(directory: Path) -> list[tuple[str, Path]]:
    """Return (relative path, absolute path) for every file below ``directory``, sorted."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob("*") if p.is_file()]
    return sorted((p.relative_to(directory).as_posix(), p) for p in found)


class Store:
    """Records and files of one emulated XNAT site."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock = threading.RLock()
        self.counters: dict[str, int] = {"subject": 0, "experiment": 0, "resource": 0, "scan": 0}
        self.projects: dict[str, Project] = {}
        self.subjects: dict[str, Subject] = {}
        self.experiments: dict[str, Experiment] = {}
        self.prearchive: dict[str, PrearchiveEntry] = {}
        data_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.data_dir / _INDEX
        if not path.exists():
            return
        raw = json.loads(path.read_text(encoding="utf-8"))
        self.counters.update(raw["counters"])
        self.projects = {k: project_from_json(v) for k, v in raw["projects"].items()}
        self.subjects = {k: subject_from_json(v) for k, v in raw["subjects"].items()}
        self.experiments = {k: experiment_from_json(v) for k, v in raw["experiments"].items()}
        self.prearchive = {k: prearchive_from_json(v) for k, v in raw["prearchive"].items()}

    def save(self) -> None:
        """Write the index atomically."""
        raw: dict[str, Any] = {"counters": self.counters}
        for name in ("projects", "subjects", "experiments", "prearchive"):
            raw[name] = {k: to_json(v) for k, v in getattr(self, name).items()}
        path = self.data_dir / _INDEX
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(raw, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the lock for a change and save the index afterwards, whatever happened."""
        with self.lock:
            try:
                yield
            finally:
                self.save()

    def staging_dir(self) -> Path:
        """Return a fresh directory for unpacking one upload (caller removes it)."""
        path = self.data_dir / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    # -- lookups ----------------------------------------------------------------------------

    def subject(self, project: str | None, key: str) -> Subject | None:
        """Find a subject by ID, or by label within ``project``."""
        found = self.subjects.get(key)
        if found is not None and project in (None, found.project):
            return found
        if project is None:
            return None
        return next(
            (s for s in self.subjects.values() if (s.project, s.label) == (project, key)), None
        )

    def subject_ci(self, project: str, label: str) -> Subject | None:
        """Find a subject by label, case-insensitively, as XNAT's archiver does."""
        wanted = label.casefold()
        matches = (s for s in self.subjects.values() if s.project == project)
        return next((s for s in matches if s.label.casefold() == wanted), None)

    def experiment(self, project: str | None, key: str) -> Experiment | None:
        """Find an experiment by ID, or by label within ``project``."""
        found = self.experiments.get(key)
        if found is not None and project in (None, found.project):
            return found
        if project is None:
            return None
        rows = self.experiments.values()
        return next((e for e in rows if (e.project, e.label) == (project, key)), None)

    # -- creation ---------------------------------------------------------------------------

    def _next(self, counter: str) -> int:
        self.counters[counter] += 1
        return self.counters[counter]

    def add_project(self, project_id: str, *, name: str = "", description: str = "") -> Project:
        """Create a project (or return the existing one)."""
        if project_id not in self.projects:
            self.projects[project_id] = Project(project_id, name or project_id, description)
        return self.projects[project_id]

    def new_subject(self, project: str, label: str) -> Subject:
        """Create a subject with the next site-wide ID."""
        subject_id = f"{_SITE}_S{self._next('subject'):05d}"
        subject = Subject(subject_id, project, label, insert_date())
        self.subjects[subject_id] = subject
        return subject

    def new_experiment(self, subject: Subject, label: str, xsi_type: str) -> Experiment:
        """Create an experiment with the next site-wide ID."""
        experiment_id = f"{_SITE}_E{self._next('experiment'):05d}"
        experiment = Experiment(
            experiment_id, subject.project, subject.id, label, xsi_type, insert_date=insert_date()
        )
        self.experiments[experiment_id] = experiment
        return experiment

    def new_scan(self, scan_id: str, xsi_type: str) -> Scan:
        """Create a scan record with the next ``xnat_imagescandata_id``."""
        return Scan(scan_id, xsi_type, self._next("scan"))

    def new_resource(self, label: str, *, format: str = "", content: str = "") -> Resource:
        """Create a resource record with the next ``xnat_abstractresource_id``."""
        return Resource(self._next("resource"), label, format, content)

    # -- directories ------------------------------------------------------------------------

    def subject_dir(self, subject: Subject) -> Path:
        """The subject's directory."""
        return self.data_dir / subject.project / subject.label

    def experiment_dir(self, experiment: Experiment) -> Path:
        """The experiment's directory."""
        return self.subject_dir(self.subjects[experiment.subject_id]) / experiment.label

    def prearchive_dir(self, entry: PrearchiveEntry) -> Path:
        """The prearchive entry's directory."""
        return self.data_dir / ".prearchive" / entry.project / entry.timestamp / entry.name

    # -- holders ----------------------------------------------------------------------------

    def project_holder(self, project: Project) -> Holder:
        """Resources of a project."""
        base = self.data_dir / project.id / ".project"
        uri = f"/data/projects/{project.id}"
        return Holder(project.resources, base, uri, "resources", project.id)

    def subject_holder(self, subject: Subject) -> Holder:
        """Resources of a subject."""
        base = self.subject_dir(subject) / ".subject"
        uri = f"/data/projects/{subject.project}/subjects/{subject.id}"
        return Holder(subject.resources, base, uri, "resources", subject.label)

    def experiment_holder(self, experiment: Experiment, uri: str) -> Holder:
        """Resources of an experiment; ``uri`` is the prefix for its file URIs."""
        base = self.experiment_dir(experiment)
        return Holder(experiment.resources, base, uri, "resources", experiment.label)

    def scan_holder(self, experiment: Experiment, scan: Scan, uri: str) -> Holder:
        """Resources of a scan; ``uri`` is the prefix for its file URIs."""
        base = self.experiment_dir(experiment) / "scans" / scan.id
        kind = "".join(c if c.isalnum() else "_" for c in scan.type)
        zip_prefix = f"{experiment.label}/scans/{scan.id}-{kind}"
        return Holder(scan.resources, base, f"{uri}/scans/{scan.id}", "scans", zip_prefix)

    def prearchive_scan_holder(self, entry: PrearchiveEntry, scan: Scan) -> Holder:
        """Resources of a scan in the prearchive."""
        base = self.prearchive_dir(entry) / "scans" / scan.id
        uri = f"/data{entry.url}/scans/{scan.id}"
        return Holder(scan.resources, base, uri, "scans", f"{entry.name}/scans/{scan.id}")

    # -- removal ----------------------------------------------------------------------------

    def delete_experiment(self, experiment: Experiment) -> None:
        """Remove an experiment and its files."""
        shutil.rmtree(self.experiment_dir(experiment), ignore_errors=True)
        del self.experiments[experiment.id]

    def delete_subject(self, subject: Subject) -> None:
        """Remove a subject, its experiments and their files."""
        for experiment in [e for e in self.experiments.values() if e.subject_id == subject.id]:
            self.delete_experiment(experiment)
        shutil.rmtree(self.subject_dir(subject), ignore_errors=True)
        del self.subjects[subject.id]

    def delete_prearchive(self, entry: PrearchiveEntry) -> None:
        """Remove a prearchive entry and its files."""
        shutil.rmtree(self.prearchive_dir(entry), ignore_errors=True)
        del self.prearchive[entry.url]
