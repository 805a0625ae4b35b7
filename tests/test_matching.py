"""Local re-check of C-FIND answers (PS3.4 C.2.2.2 matching), table-driven."""

from __future__ import annotations

import pytest

from pacsman.dicom.matching import matches


@pytest.mark.parametrize(
    ("key", "pattern", "value", "expected"),
    [
        ("SeriesDescription", "", "anything", True),
        ("SeriesDescription", "*T1*", "T1 SAG", True),
        ("SeriesDescription", "*T1*", "T2 AX", False),
        ("SeriesDescription", "T?", "T1", True),
        ("SeriesDescription", "t1 sag", "T1  SAG", True),
        ("Modality", "MR", "CT", False),
        ("StudyDate", "20240101-20240131", "20240105", True),
        ("StudyDate", "20240101-20240131", "20240205", False),
        ("StudyDate", "-20240131", "20231231", True),
        ("StudyDate", "20240101-", "20231231", False),
        ("StudyTime", "0800-1200", "101500.000", True),
        ("StudyTime", "0800-1000", "101500", False),
        ("StudyInstanceUID", "1.2\\1.3", "1.3", True),
        ("StudyInstanceUID", "1.2\\1.3", "1.23", False),
        ("SeriesNumber", "3", "003", True),
        ("ImageType", "ORIGINAL\\PRIMARY*", "ORIGINAL\\PRIMARY\\M\\ND", True),
        ("ImageType", "DERIVED*", "ORIGINAL\\PRIMARY", False),
        ("PatientName", "M*", "Müller^Jürgen", True),
    ],
)
def test_matches(key: str, pattern: str, value: str, expected: bool) -> None:
    """Each pattern form matches (or not) as the standard says, leniently on case/spaces."""
    assert matches(key, pattern, value) is expected
