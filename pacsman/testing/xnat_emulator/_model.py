"""The archive's records: projects, subjects, experiments, scans, resources, prearchive entries.

Files are not recorded here; the directory tree under the data dir is their only truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Experiment",
    "PrearchiveEntry",
    "PrearchiveStatus",
    "Project",
    "Resource",
    "Scan",
    "Subject",
    "experiment_from_json",
    "prearchive_from_json",
    "project_from_json",
    "subject_from_json",
    "to_json",
]


class PrearchiveStatus:
    """The prearchive statuses the emulator uses (XNAT has more)."""

    RECEIVING = "RECEIVING"
    READY = "READY"
    CONFLICT = "CONFLICT"
    ERROR = "ERROR"


@dataclass
class Resource:
    """A file catalog (``xnat:resourceCatalog``); ``id`` is ``xnat_abstractresource_id``."""

    id: int
    label: str
    format: str = ""
    content: str = ""


@dataclass
class Scan:
    """An image scan; ``id`` is usually the DICOM SeriesNumber, ``pk`` is xnat_imagescandata_id."""

    id: str
    xsi_type: str
    pk: int
    type: str = ""
    series_description: str = ""
    uid: str = ""
    modality: str = ""
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Project:
    """An XNAT project; ``id`` is the project ID."""

    id: str
    name: str
    description: str = ""
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Subject:
    """A subject; ``id`` is the site-wide ``XNAT_S#####``, ``label`` is unique in the project."""

    id: str
    project: str
    label: str
    insert_date: str = ""
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Experiment:
    """An imaging session; ``id`` is the site-wide ``XNAT_E#####``, ``label`` unique in project."""

    id: str
    project: str
    subject_id: str
    label: str
    xsi_type: str
    date: str = ""
    time: str = ""
    uid: str = ""
    modality: str = ""
    insert_date: str = ""
    accession_number: str = ""
    scans: dict[str, Scan] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class PrearchiveEntry:
    """A session in the prearchive: ``/prearchive/projects/<project>/<timestamp>/<name>``."""

    project: str
    timestamp: str
    name: str
    subject: str
    tag: str
    status: str
    uploaded: str
    xsi_type: str
    scan_date: str = ""
    scan_time: str = ""
    modality: str = ""
    message: str = ""
    polls_left: int = 0
    ready_at: float = 0.0
    scans: dict[str, Scan] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The entry's URL as XNAT lists it (without ``/data``)."""
        return f"/prearchive/projects/{self.project}/{self.timestamp}/{self.name}"


def to_json(record: Any) -> dict[str, Any]:
    """Return a JSON-ready dict for any record above."""
    result: dict[str, Any] = asdict(record)
    return result


def _resources(raw: dict[str, Any]) -> dict[str, Resource]:
    return {label: Resource(**value) for label, value in raw.items()}


def _scans(raw: dict[str, Any]) -> dict[str, Scan]:
    return {
        key: Scan(**{**value, "resources": _resources(value.get("resources", {}))})
        for key, value in raw.items()
    }


def project_from_json(raw: dict[str, Any]) -> Project:
    """Rebuild a :class:`Project` from :func:`to_json` output."""
    return Project(**{**raw, "resources": _resources(raw.get("resources", {}))})


def subject_from_json(raw: dict[str, Any]) -> Subject:
    """Rebuild a :class:`Subject` from :func:`to_json` output."""
    return Subject(**{**raw, "resources": _resources(raw.get("resources", {}))})


def experiment_from_json(raw: dict[str, Any]) -> Experiment:
    """Rebuild an :class:`Experiment` from :func:`to_json` output."""
    resources = _resources(raw.get("resources", {}))
    return Experiment(**{**raw, "scans": _scans(raw.get("scans", {})), "resources": resources})


def prearchive_from_json(raw: dict[str, Any]) -> PrearchiveEntry:
    """Rebuild a :class:`PrearchiveEntry` from :func:`to_json` output."""
    return PrearchiveEntry(**{**raw, "scans": _scans(raw.get("scans", {}))})
