"""``pacsman nifti IN_DIR OUT_DIR [--bids MAP] [--originals RAW_DIR]``: the table, the exit
codes, the refusals, and the BIDS folder with its mapping file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsman.cli import main
from pacsman.errors import ConfigError
from pacsman.nifti import (
    BidsSeries,
    NiftiOutcome,
    NiftiResult,
    bids_mapping,
    bids_path,
    write_bids,
)
from tests.test_nifti import SESSION, SUBJECT, deidentify, write_raw

MAPPING = """\
version: 1
rules:
  - match: "^t1"
    datatype: anat
    suffix: T1w
    acq: sag
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw, de-identified): the de-identified files flat in one folder, as
    ``pacsman anonymize`` writes them (subject from PatientID, session from StudyID)."""
    base = tmp_path_factory.mktemp("nifti-cli")
    raw = write_raw(base / "raw")
    deidentify(raw, lambda n: base / "anon")
    return base / "raw", base / "anon"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["nifti", *argv, "--log-level", "warning"])
    out, err = capsys.readouterr()
    return code, out, err


def test_converts_every_series_and_prints_the_table(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0: two MR series converted, the SR series skipped; no patient data printed."""
    _, anon = folders
    code, out, err = _run([str(anon), str(tmp_path)], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["series", "outcome", "files", "reason"]
    assert lines[1].split() == [f"{SUBJECT}/{SESSION}/2", "converted", "2"]
    assert lines[2].split() == [f"{SUBJECT}/{SESSION}/3", "converted", "2"]
    assert lines[3].split()[:3] == [f"{SUBJECT}/{SESSION}/9", "skipped", "0"]
    assert "Basic Text SR Storage" in lines[3]
    assert "Quagmire" not in out
    assert (tmp_path / "nifti" / SUBJECT / SESSION / "3" / "series-3.nii.gz").is_file()
    assert [p.name for p in (tmp_path / "nifti").iterdir()] == [SUBJECT]  # no staging left


def test_a_failed_series_exits_1_with_its_reason(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A series with a slice removed from the middle: its row says failed and why; exit 1."""
    _, anon = folders
    gap = tmp_path / "in"
    shutil.copytree(anon, gap)
    three = sorted(
        (p for p in gap.iterdir() if dcmread(p, stop_before_pixels=True).SeriesNumber == 3),
        key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber),
    )
    three[2].unlink()
    code, out, err = _run([str(gap), str(tmp_path / "out")], capsys)
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(f"{SUBJECT}/{SESSION}/3 "))
    assert "failed" in row
    assert "the series has 4 image instance(s)/frame(s)" in row
    assert err.startswith("pacsman: 1 series failed, 0 quarantined, 1 converted")


def test_identified_input_is_refused(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Raw DICOM: exit 2, nothing converted, the fix named."""
    raw, _ = folders
    code, out, err = _run([str(raw), str(tmp_path)], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        f"pacsman: IN_DIR {raw}: 12 of 12 DICOM file(s) are not de-identified "
        "(PatientIdentityRemoved is not YES); run pacsman anonymize first\n"
    )
    assert not (tmp_path / "nifti").exists()


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No IN_DIR folder, OUT_DIR = IN_DIR, no arguments: exit 2."""
    code, _, err = _run([str(tmp_path / "absent"), str(tmp_path / "out")], capsys)
    assert code == 2
    assert "not a folder; give the folder of de-identified DICOM" in err
    code, _, err = _run([str(tmp_path), str(tmp_path)], capsys)
    assert code == 2
    assert "is IN_DIR; give a separate output folder" in err
    with pytest.raises(SystemExit) as stopped:
        main(["nifti"])
    assert stopped.value.code == 2


def test_originals_catch_a_name_in_image_comments(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--originals RAW_DIR: ImageComments carrying the patient's name quarantines the series."""
    raw, anon = folders
    planted = tmp_path / "in"
    shutil.copytree(anon, planted)
    for path in planted.iterdir():
        ds = dcmread(path)
        if ds.SeriesNumber == 2:
            ds.ImageComments = "Quagmire"
            ds.save_as(path)
    code, out, _ = _run([str(planted), str(tmp_path / "out"), "--originals", str(raw)], capsys)
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(f"{SUBJECT}/{SESSION}/2 "))
    assert "quarantined" in row
    assert "ImageComments: the leak check found an original patient name" in row
    assert "Quagmire" not in out


def test_bids_places_matches_and_lists_the_rest(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--bids: T1 SAG matches rule 1 and is placed; T2 AX matches nothing and is listed."""
    _, anon = folders
    mapping = tmp_path / "bids.yaml"
    mapping.write_text(MAPPING, encoding="utf-8")
    code, out, _ = _run([str(anon), str(tmp_path / "out"), "--bids", str(mapping)], capsys)
    assert code == 0
    anat = tmp_path / "out" / "bids" / "sub-NIFTIS01" / "ses-NIFTIS01MR1" / "anat"
    stem = "sub-NIFTIS01_ses-NIFTIS01MR1_acq-sag_T1w"
    assert sorted(p.name for p in anat.iterdir()) == [f"{stem}.json", f"{stem}.nii.gz"]
    source = tmp_path / "out" / "nifti" / SUBJECT / SESSION / "2" / "series-2.nii.gz"
    assert (anat / f"{stem}.nii.gz").samefile(source)  # a hard link, not a copy
    description = json.loads((tmp_path / "out" / "bids" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert "BIDS: 1 series placed" in out
    assert "BIDS: 1 series matched no rule (not placed):" in out
    assert f"  {SUBJECT}/{SESSION}/3 SeriesDescription 'T2 AX'" in out.splitlines()


def test_two_series_with_one_name_get_run_numbers(tmp_path: Path) -> None:
    """A rule that matches both MR series: run-1 and run-2, in SeriesNumber order."""
    mapping = tmp_path / "bids.yaml"
    mapping.write_text(MAPPING.replace('"^t1"', '"^t"'), encoding="utf-8")
    rules = bids_mapping(mapping)
    series = []
    for number in ("10", "9"):
        folder = tmp_path / number
        folder.mkdir()
        files = (folder / "series.nii.gz", folder / "series.json")
        for path in files:
            path.write_bytes(b"x")
        result = NiftiResult(NiftiOutcome.CONVERTED, "", folder, files)
        series.append(BidsSeries(number, f"T{number}", result))
    placed = write_bids(rules, tmp_path / "bids", subject="S_1", session="E_1", series=series)
    names = [(n, p.name) for n, p in placed.placed]
    assert names == [
        ("9", "sub-S1_ses-E1_acq-sag_run-1_T1w.nii.gz"),
        ("10", "sub-S1_ses-E1_acq-sag_run-2_T1w.nii.gz"),
    ]
    assert bids_path(rules, tmp_path, subject="S", session="E", series_description="x") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - match: t1\n    datatype: anatomy\n    suffix: T1w\n",
            r"bids\.yaml:2: rule 1: key 'datatype': 'anatomy' is not a BIDS datatype; use one "
            r"of anat, dwi, fmap, func, perf",
        ),
        (
            "rules:\n  - match: t1\n    datatype: anat\n    suffix: T1w\n"
            "  - match: t2\n    datatype: anat\n    suffix: T2\n",
            r"bids\.yaml:5: rule 2: key 'suffix': 'T2' is not a BIDS anat suffix; use one of",
        ),
        (
            "rules:\n  - match: '(t1'\n    datatype: anat\n    suffix: T1w\n",
            r"rule 1: key 'match': '\(t1' is not a valid regular expression",
        ),
        (
            "rules:\n  - match: bold\n    datatype: func\n    suffix: bold\n",
            r"rule 1: key 'task' is missing: BIDS func files need task-<label>; add it",
        ),
        (
            "rules:\n  - match: t1\n    datatype: anat\n    suffix: T1w\n    acq: a_b\n",
            r"rule 1: key 'acq': 'a_b' is not a BIDS label; use letters and digits",
        ),
        ("rules: []\n", r"'rules' is empty; add at least one rule"),
        ("- t1\n", r"no list of rules; write 'rules:'"),
    ],
)
def test_a_bad_mapping_names_file_line_rule_key_and_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    """Every problem of the mapping file, located, with the fix."""
    path = tmp_path / "bids.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        bids_mapping(path)


def test_a_bad_mapping_stops_before_any_conversion(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, the problem printed, nothing written."""
    _, anon = folders
    mapping = tmp_path / "bids.yaml"
    mapping.write_text("rules:\n  - match: t1\n    datatype: anat\n", encoding="utf-8")
    code, out, err = _run([str(anon), str(tmp_path / "out"), "--bids", str(mapping)], capsys)
    assert (code, out) == (2, "")
    assert f"{mapping}:2: rule 1: key 'suffix' is missing; add it" in err
    assert not (tmp_path / "out").exists()


def test_the_example_mapping_is_valid() -> None:
    """config/bids-mapping.example.yaml loads, and maps the usual descriptions."""
    rules = bids_mapping(Path(__file__).parents[1] / "config" / "bids-mapping.example.yaml")
    found = {d: rules.match(d) for d in ("T1 SAG MPRAGE", "AX FLAIR T2", "T2 TSE", "Localizer")}
    assert [(r.datatype, r.suffix) if r else None for r in found.values()] == [
        ("anat", "T1w"),
        ("anat", "FLAIR"),
        ("anat", "T2w"),
        None,
    ]


def test_the_session_comes_from_the_folder_layout_without_study_id(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """StudyID empty (a session label longer than its 16 characters): the session is the
    folder of ``<out>/anonymized/<subject>/<session>/<SeriesNumber>/``."""
    _, anon = folders
    session = "A_SESSION_LABEL_LONGER_THAN_16"
    for path in anon.iterdir():
        ds = dcmread(path)
        if ds.SeriesNumber == 2:
            folder = tmp_path / "in" / "anonymized" / SUBJECT / session / "2"
            folder.mkdir(parents=True, exist_ok=True)
            ds.StudyID = ""
            ds.save_as(folder / path.name)
    code, out, _ = _run([str(tmp_path / "in"), str(tmp_path / "out")], capsys)
    assert code == 0
    assert out.splitlines()[1].split() == [f"{SUBJECT}/{session}/2", "converted", "2"]
