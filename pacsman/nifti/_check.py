"""The checks on dcm2niix's outputs: slice count, and PHI in sidecars and NIfTI headers.

A sidecar JSON is checked two ways:

* **the PHI-key check**, always: a key that names an identifying attribute (:data:`PHI_KEYS`)
  may hold only nothing, pacsman's pseudonyms (the subject and session labels, pacsman's
  placeholder ``ANONYMIZED``, dcm2niix's ``None``) or the very value the de-identified DICOM
  holds for that attribute (what the anonymization profile chose to keep, e.g. a retained
  institution or device serial number);
* **the leak check**, when the caller has the originals: every string value, and the NIfTI
  header's text fields (``descrip``, ``aux_file`` -- dcm2niix writes ImageComments there --,
  ``intent_name``, ``db_name``), through pacsman.anonymize's matcher
  (:meth:`Originals.find_in_text`): names in any spelling, IDs, the birth date, institution.

A finding names the file, the key and the kind, never the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel
from nibabel.nifti1 import Nifti1Header, Nifti1Image

from pacsman.anonymize import Originals

__all__ = [
    "PHI_KEYS",
    "Allowed",
    "Finding",
    "allowed_values",
    "header_findings",
    "nifti_slices",
    "sidecar_findings",
]

#: Sidecar keys that name an identifying attribute, and the kind of value each holds.
PHI_KEYS: Mapping[str, str] = {
    "PatientName": "patient name",
    "PatientID": "patient ID",
    "PatientBirthDate": "birth date",
    "AccessionNumber": "accession number",
    "OtherPatientIDs": "patient ID",
    "InstitutionName": "institution",
    "InstitutionAddress": "institution address",
    "InstitutionalDepartmentName": "institution department",
    "ReferringPhysicianName": "physician name",
    "PerformingPhysicianName": "physician name",
    "OperatorsName": "operator name",
    "StationName": "station name",
    "DeviceSerialNumber": "device serial number",
}
#: Values that identify no one: pacsman's placeholder and dcm2niix's for an absent value.
_PLACEHOLDERS = frozenset({"", "anonymized", "none"})
_HEADER_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")
#: Key -> accepted values, normalized; key "" holds what every key accepts.
Allowed = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Finding:
    """One hit: where (file and key) and what kind of value; never the value."""

    file: str
    key: str
    kind: str
    how: str  # "not a pseudonym" or "original found by the leak check"

    def __str__(self) -> str:
        if self.how == "key":
            return (
                f"{self.file} key {self.key}: its {self.kind} is neither pacsman's pseudonym "
                "nor the de-identified DICOM's value"
            )
        return f"{self.file} {self.key}: the leak check found an original {self.kind}"


def nifti_slices(path: Path) -> int:
    """Slices x volumes of the NIfTI at ``path`` (a 2D image counts 1).

    Raises:
        OSError, ValueError: nibabel cannot read it (e.g. a truncated file).
    """
    image = nibabel.load(path)
    if not isinstance(image, Nifti1Image):
        raise ValueError(f"{path.name} is not a NIfTI-1 image")
    shape = image.shape
    if len(shape) < 3:
        return 1
    return int(shape[2]) * math.prod(int(n) for n in shape[3:])


def _normal(value: str) -> str:
    return re.sub(r"[\W_]+", "", value).casefold()


def _values(value: object, key: str) -> Iterator[tuple[str, str | int | float]]:
    """(key, value) of every string or number under ``value``; a list item keeps its
    list's key (a PHI key holding a list is still that key)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _values(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for item in value:
            yield from _values(item, key)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield key, value


def _leak(originals: Originals, text: str) -> str | None:
    """The kind of original in ``text``.  A code-like value (upper case, digits, ``_``, as a
    DICOM CS value: ``HEAD``, ``HFS``) is matched as the anonymizer matches keep-list
    values: a name part that is itself a defined term (a patient named HEAD) does not count."""
    matcher = originals.device_matcher if _CODE.fullmatch(text) else originals.matcher
    hit = matcher.first(text)
    return hit.kind if hit is not None else None


def sidecar_findings(
    path: Path,
    *,
    allowed: Allowed,
    originals: Originals | None,
) -> list[Finding]:
    """Findings in the sidecar JSON at ``path``.

    ``allowed`` maps a :data:`PHI_KEYS` key to the values accepted there besides the
    placeholders; ``""`` stands for every key (the subject and session labels).

    Raises:
        OSError, ValueError: the file cannot be read or is not JSON.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    findings = []
    everywhere = allowed.get("", frozenset())
    for key, value in _values(data, ""):
        kind, text = PHI_KEYS.get(key), str(value)
        accepted = _PLACEHOLDERS | everywhere | allowed.get(key, frozenset())
        if kind is not None:  # the DICOM's own value was judged by the anonymizer already
            if _normal(text) not in accepted:
                findings.append(Finding(path.name, key, kind, "key"))
        elif originals is not None and isinstance(value, str):  # numbers are measurements
            found = _leak(originals, text)
            if found is not None:
                findings.append(Finding(path.name, key, found, "leak"))
    return findings


def header_findings(path: Path, originals: Originals) -> list[Finding]:
    """Leak-check findings in the text fields of the NIfTI header at ``path``.

    Raises:
        OSError, ValueError: nibabel cannot read it.
    """
    header = nibabel.load(path).header
    findings: list[Finding] = []
    if not isinstance(header, Nifti1Header):
        return findings
    for name in _HEADER_FIELDS:
        raw = header[name]
        text = bytes(raw.item()).decode("latin-1").rstrip("\x00").strip()
        found = originals.find_in_text(text) if text else None
        if found is not None:
            findings.append(Finding(path.name, f"header {name}", found, "leak"))
    return findings


def allowed_values(labels: Iterable[str], dicom: Iterable[tuple[str, str]]) -> Allowed:
    """``allowed`` for :func:`sidecar_findings`: the labels for every key, and each
    (keyword, value) the de-identified DICOM holds for its own key."""
    allowed: dict[str, set[str]] = {"": {_normal(label) for label in labels}}
    for keyword, value in dicom:
        allowed.setdefault(keyword, set()).add(_normal(value))
    return {key: frozenset(values) for key, values in allowed.items()}
