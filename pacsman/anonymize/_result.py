"""The result of de-identifying one file, and what the mapping table needs from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

from pacsman.anonymize._values import encodings_of, peek

__all__ = ["AnonymizeResult", "Source"]


@dataclass(frozen=True)
class Source:
    """What the mapping table records about the original study.  PHI: memory only."""

    patient_id: str = field(repr=False)
    study_instance_uid: str = field(repr=False)
    accession_number: str = field(repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Source:
        """PatientID, StudyInstanceUID and AccessionNumber of the source ``ds``."""
        encodings = encodings_of(ds)
        patient_id, study, accession = (
            "\\".join(peek(ds, keyword, encodings))
            for keyword in ("PatientID", "StudyInstanceUID", "AccessionNumber")
        )
        return cls(patient_id, study, accession)


@dataclass(frozen=True)
class AnonymizeResult:
    """One de-identified instance: where it is and whether it may be pushed.

    A quarantined file is never pushable; ``reason`` says why, without any PHI.  ``source``
    is what the mapping table needs (PHI, never printed or logged).  A ``left_out`` instance
    (an encapsulated document, by default) was not written at all: ``path`` is where it
    would have gone, and ``reason`` says why it was left out.
    """

    path: Path
    sop_instance_uid: str
    quarantined: bool
    reason: str | None = None
    source: Source | None = field(default=None, repr=False, compare=False)
    left_out: bool = False
