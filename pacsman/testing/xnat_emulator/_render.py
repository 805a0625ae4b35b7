"""XNAT's JSON shapes: ResultSet listings (all values strings) and single-object ``items``.

Also the listing query language the emulator honours (``columns``, ``xsiType``, shortcut
filters with ``*`` and commas, ``date`` ranges) and the resource catalog XML quirk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pacsman.testing.xnat_emulator._http import Response
from pacsman.testing.xnat_emulator._model import Experiment, Project, Resource, Scan, Subject
from pacsman.testing.xnat_emulator._store import Holder, Store, list_files

__all__ = [
    "catalog_xml",
    "experiment_item",
    "experiment_row",
    "file_rows",
    "item",
    "json_response",
    "project_item",
    "project_row",
    "resource_row",
    "result_set",
    "scan_item",
    "scan_row",
    "select_rows",
    "subject_item",
    "subject_row",
]

Row = dict[str, str]
_NOT_FILTERS = {"format", "columns", "xsiType", "sortBy", "sortOrder", "limit", "offset"}
_START = "Mon Jan 01 10:00:00 UTC 2024"


def json_response(payload: Any, status: int = 200) -> Response:
    """Answer with a JSON document."""
    return Response(status, json.dumps(payload).encode(), "application/json;charset=UTF-8")


def result_set(rows: list[Row], title: str) -> Response:
    """Answer with XNAT's listing envelope."""
    body = {"ResultSet": {"Result": rows, "totalRecords": str(len(rows)), "title": title}}
    return json_response(body)


def item(xsi_type: str, data_fields: dict[str, str], children: list[Any] | None = None) -> Any:
    """One ``items`` entry as in ``GET <object>?format=json``."""
    meta = {"create_event_id": 1, "xsi:type": xsi_type, "isHistory": False, "start_date": _START}
    return {"children": children or [], "meta": meta, "data_fields": data_fields}


# -- listing query language -----------------------------------------------------------------


def _parse_us_date(text: str) -> date | None:
    for pattern in ("%m/%d/%Y", "%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text.strip(), pattern).date()
        except ValueError:
            continue
    return None


def _date_matches(value: str, wanted: str) -> bool:
    found = _parse_us_date(value) if value else None
    if found is None:
        return False
    if "/" in wanted and "-" in wanted:  # XNAT splits a range at the first '-'
        first, _, last = wanted.partition("-")
        low, high = _parse_us_date(first), _parse_us_date(last)
        return (low is None or found >= low) and (high is None or found <= high)
    return found == _parse_us_date(wanted)


def _matches(value: str, wanted: str) -> bool:
    options = [w.strip() for w in wanted.split(",")]
    return any(fnmatch.fnmatchcase(value, o.replace("%", "*")) for o in options)


def select_rows(rows: list[Row], query: dict[str, str]) -> list[Row]:
    """Apply ``xsiType``, shortcut filters and ``columns`` as XNAT's listings do."""
    if "xsiType" in query:
        rows = [r for r in rows if r.get("xsiType") == query["xsiType"]]
    for key, wanted in query.items():
        if key in _NOT_FILTERS or "/" in key or not rows or key not in rows[0]:
            continue
        test = _date_matches if key == "date" else _matches
        rows = [r for r in rows if test(r[key], wanted)]
    if query.get("columns"):
        names = [c.strip() for c in query["columns"].split(",") if c.strip()]
        rows = [{n: r.get(n, "") for n in dict.fromkeys([*names, "URI"])} for r in rows]
    return rows


# -- rows and items -------------------------------------------------------------------------


def project_row(project: Project) -> Row:
    """A row of ``/data/projects``."""
    return {
        "ID": project.id,
        "secondary_ID": project.id,
        "name": project.name,
        "description": project.description,
        "pi_firstname": "",
        "pi_lastname": "",
        "URI": f"/data/projects/{project.id}",
    }


def project_item(project: Project) -> Any:
    """``GET /data/projects/<P>?format=json``."""
    fields = {k: v for k, v in project_row(project).items() if k != "URI"}
    return {"items": [item("xnat:projectData", fields)]}


def subject_row(subject: Subject) -> Row:
    """A row of a subject listing."""
    return {
        "ID": subject.id,
        "project": subject.project,
        "label": subject.label,
        "insert_date": subject.insert_date,
        "insert_user": "admin",
        "URI": f"/data/subjects/{subject.id}",
    }


def subject_item(subject: Subject) -> Any:
    """``GET .../subjects/<S>?format=json``."""
    fields = {"ID": subject.id, "project": subject.project, "label": subject.label}
    return {"items": [item("xnat:subjectData", fields)]}


def experiment_row(store: Store, experiment: Experiment) -> Row:
    """A row of an experiment listing (XNAT's default columns plus the searchable ones)."""
    subject = store.subjects[experiment.subject_id]
    return {
        "ID": experiment.id,
        "project": experiment.project,
        "label": experiment.label,
        "xsiType": experiment.xsi_type,
        "date": experiment.date,
        "time": experiment.time,
        "insert_date": experiment.insert_date,
        "subject_ID": subject.id,
        "subject_label": subject.label,
        "UID": experiment.uid,
        "modality": experiment.modality,
        "dcmAccessionNumber": experiment.accession_number,
        "URI": f"/data/experiments/{experiment.id}",
    }


def scan_row(experiment: Experiment, scan: Scan) -> Row:
    """A row of a scan listing."""
    return {
        "xnat_imagescandata_id": str(scan.pk),
        "ID": scan.id,
        "type": scan.type,
        "quality": "usable",
        "xsiType": scan.xsi_type,
        "note": "",
        "series_description": scan.series_description,
        "URI": f"/data/experiments/{experiment.id}/scans/{scan.id}",
    }


def scan_item(experiment: Experiment, scan: Scan) -> Any:
    """``GET .../scans/<id>?format=json`` (and the ``scans/scan`` children of a session)."""
    fields = {
        "ID": scan.id,
        "type": scan.type,
        "UID": scan.uid,
        "modality": scan.modality,
        "series_description": scan.series_description,
        "image_session_ID": experiment.id,
        "xnat_imagescandata_id": str(scan.pk),
    }
    return item(scan.xsi_type, fields)


def experiment_item(store: Store, experiment: Experiment) -> Any:
    """``GET .../experiments/<E>?format=json``."""
    row = experiment_row(store, experiment)
    fields = {k: row[k] for k in ("ID", "project", "label", "date", "UID", "modality")}
    fields["subject_ID"] = experiment.subject_id
    if experiment.time:
        fields["time"] = experiment.time
    scans = [scan_item(experiment, s) for s in experiment.scans.values()]
    children = [{"field": "scans/scan", "items": scans}] if scans else []
    return {"items": [item(experiment.xsi_type, fields, children)]}


def resource_row(holder: Holder, resource: Resource) -> Row:
    """A row of a resource listing (no ID/URI: xnatpy derives them)."""
    files = list_files(holder.files_dir(resource))
    return {
        "xnat_abstractresource_id": str(resource.id),
        "label": resource.label,
        "element_name": "xnat:resourceCatalog",
        "category": holder.category,
        "cat_id": str(resource.id),
        "format": resource.format,
        "content": resource.content,
        "tags": "",
        "file_count": str(len(files)),
        "file_size": str(sum(p.stat().st_size for _, p in files)),
        "cat_desc": "",
    }


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def file_rows(holder: Holder, resource: Resource) -> list[Row]:
    """Rows of ``.../resources/<r>/files`` (URIs use the numeric resource id, as XNAT does)."""
    return [
        {
            "Name": name.rsplit("/", 1)[-1],
            "Size": str(path.stat().st_size),
            "URI": f"{holder.uri}/resources/{resource.id}/files/{name}",
            "collection": resource.label,
            "file_tags": "",
            "file_format": resource.format,
            "file_content": resource.content,
            "cat_ID": str(resource.id),
            "digest": _md5(path),
        }
        for name, path in list_files(holder.files_dir(resource))
    ]


def catalog_xml(resource: Resource, holder: Holder) -> str:
    """A resource GET answers the catalog XML (xnatpy matches this exact prefix)."""
    entries = "".join(
        f"\n  <cat:entry URI={quoteattr(name)} ID={quoteattr(name)}"
        f" name={quoteattr(name.rsplit('/', 1)[-1])}/>"
        for name, _ in list_files(holder.files_dir(resource))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<cat:Catalog '
        'xmlns:cat="http://nrg.wustl.edu/catalog" '
        f'ID="{resource.id}" label={quoteattr(resource.label)}>\n<cat:entries>{entries}\n'
        "</cat:entries>\n</cat:Catalog>\n"
    )
