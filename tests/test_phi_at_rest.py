"""PHI at rest (issue 10, items 6 and 7): modes and spreadsheet-safe CSVs after a real run.

``pacsman --queryfile q.csv --save --anonymize --info`` runs against Orthanc with umask 022,
on a study whose PACS values are spreadsheet formulas.  Every file it leaves is 0600 and every
folder it makes 0700; no CSV cell it writes can run as a formula.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pacsman.cli import main
from pacsman.layout import csv_cell, uncsv_cell, write_private_csv
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from tests.helpers import write_config, write_queryfile

#: PACS values that Excel would run as formulas if written as they arrive.
PATIENT_ID = "=cmd|' /C calc'!A0"
STUDY_DESCRIPTION = '=HYPERLINK("http://evil.invalid","click")'


def _series(number: int, description: str, instances: int) -> SeriesSpec:
    return SeriesSpec(
        series_number=number,
        series_description=description,
        n_instances=instances,
        rows=8,
        columns=8,
    )


HOSTILE = StudySpec(
    patient_id=PATIENT_ID,
    patient_name="EVIL^EVE",
    study_date="20240202",
    accession_number="-2+3",
    study_description=STUDY_DESCRIPTION,
    series=(_series(1, "+SUM(1,2)", 2), _series(2, "@SUM(1)", 3)),
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which files are 0644 and folders 0755 unless set explicitly."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # main() configures logging for the process
    yield
    structlog.configure(**saved)


def _modes(root: Path) -> dict[str, set[str]]:
    """Everything under ``root`` (and ``root``) whose mode is not 0700 (folder) / 0600 (file)."""
    wrong: dict[str, set[str]] = {"folders": set(), "files": set()}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir() and mode != 0o700:
            wrong["folders"].add(f"{path.relative_to(root.parent)} {mode:o}")
        elif path.is_file() and mode != 0o600:
            wrong["files"].add(f"{path.relative_to(root.parent)} {mode:o}")
    return wrong


def _run(tmp_path: Path, orthanc: OrthancServer) -> tuple[int, Path]:
    orthanc.upload_datasets(iter_datasets(HOSTILE))
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        extra=f"log:\n  file: {tmp_path}/logs/pacsman.jsonl\n",
    )
    text = config.read_text().replace(f"{tmp_path}/jobs.sqlite", f"{tmp_path}/state/jobs.sqlite")
    config.write_text(text)
    queryfile = write_queryfile(tmp_path, "PatientName\nEVIL*\n")
    argv = ["-q", str(queryfile), "--save", "--anonymize", "--info", "--config", str(config)]
    return main(argv), config


def test_a_real_run_leaves_private_files_and_formula_free_csvs(
    tmp_path: Path,
    orthanc: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    umask_022: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Under umask 022: DICOM, PatientID folders, info CSV, de-identified output, log, job
    store (with its WAL files) and the mapping export are 0600 in 0700 folders; the info CSV
    and the mapping export quote the PACS's formulas, and pacsman's counts stay numbers."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    status, config = _run(tmp_path, orthanc)
    export = tmp_path / "export" / "mapping.csv"
    exported = main(["mapping", "export", str(export), "--config", str(config)])
    capfd.readouterr()
    data = tmp_path / "data"
    assert (status, exported) == (0, 0)
    assert len(list((data / "anonymized").rglob("*.dcm"))) == 5
    assert len(list(data.rglob("*.dcm"))) == 10
    assert list((tmp_path / "state").glob("jobs.sqlite*"))
    assert (tmp_path / "logs" / "pacsman.jsonl").stat().st_size > 0
    for root in (data, tmp_path / "state", tmp_path / "logs", tmp_path / "export"):
        assert {"folders": set(), "files": set()} == _modes(root)
    info, mapping = _rows(data / "q_info.csv"), _rows(export)
    assert {r["PatientID"] for r in info} == {"'" + PATIENT_ID}
    assert {r["StudyDescription"] for r in info} == {"'" + STUDY_DESCRIPTION}
    assert {r["AccessionNumber"] for r in info} == {"'-2+3"}
    assert [r["SeriesDescription"] for r in info] == ["'+SUM(1,2)", "'@SUM(1)"]
    assert [r["expected_instances"] for r in info] == ["2", "3"]
    assert [r["PatientID"] for r in mapping] == ["'" + PATIENT_ID]
    assert [r["AccessionNumber"] for r in mapping] == ["'-2+3"]
    assert re.fullmatch(r"-?\d+", mapping[0]["date_shift_days"])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),  # text from outside that looks like a number: still text (OWASP)
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("", ""),
        (-42, "-42"),  # a number pacsman computed (a date shift) stays a number
        (12, "12"),
        (None, ""),
    ],
)
def test_csv_cell_follows_owasp(value: str | int | None, cell: str) -> None:
    """Cells starting with = + - @ TAB or CR get a leading quote; integers are left alone."""
    assert cell == csv_cell(value)
    if isinstance(value, str):
        assert value == uncsv_cell(cell)


def test_write_private_csv_is_atomic_and_private(tmp_path: Path, umask_022: None) -> None:
    """The CSV replaces an older world-readable file with a 0600 one, in new 0700 folders."""
    path = tmp_path / "new" / "deeper" / "x.csv"
    path.parent.mkdir(parents=True)
    path.write_text("old\n")
    os.chmod(path, 0o644)
    write_private_csv(path, ["a", "b"], [["=x", 1], [None, "y"]])
    assert "a,b\n'=x,1\n,y\n" == path.read_text(encoding="utf-8")
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert [path.name] == [p.name for p in path.parent.iterdir()]
    fresh = tmp_path / "made" / "by" / "pacsman.csv"
    write_private_csv(fresh, ["a"], [])
    assert {"folders": set(), "files": set()} == _modes(tmp_path / "made")
