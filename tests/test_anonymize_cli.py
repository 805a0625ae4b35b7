"""``pacsman anonymize`` and ``pacsman mapping export`` on real files, through ``main()``."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pydicom import dcmread
from pydicom.uid import UltrasoundImageStorage

from pacsman.anonymize import quarantine_dir
from pacsman.cli import main
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets, write_study
from tests.helpers import write_config

NAME, MRN, ACCESSION = "Cliffhanger^Wilhelmina", "MRN0042424242", "ACC7777777"
SPEC = StudySpec(
    patient_id=MRN,
    patient_name=NAME,
    study_date="20230410",
    accession_number=ACCESSION,
    study_description="MR knee Cliffhanger",
    institution_name="Saint Wilhelmina Hospital",
    series=(
        SeriesSpec(series_number=1, series_description="T1 sag", n_instances=3, rows=8, columns=8),
        SeriesSpec(series_number=2, series_description="PD cor", n_instances=2, rows=8, columns=8),
    ),
)
OTHER = dataclasses.replace(SPEC, patient_id="MRN0099999999", accession_number="ACC8888888")
PHI = (NAME.split("^")[0], MRN, ACCESSION, "Wilhelmina", SPEC.study_instance_uid)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No config found by the search, default state in the test's folder; logging restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSMAN_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    saved = structlog.get_config()  # main() configures logging for the process
    yield
    structlog.configure(**saved)


@pytest.fixture
def state(tmp_path: Path) -> list[str]:
    """``--key`` and ``--mapping`` in the test's folder."""
    return ["--key", str(tmp_path / "k" / "p.key"), "--mapping", str(tmp_path / "k" / "m.sqlite")]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A study in nested folders, plus a text file and a DICOMDIR-like file to skip."""
    root = tmp_path / "in"
    write_study(SPEC, root / "nested")
    (root / "notes.txt").write_text("not DICOM at all\n", encoding="utf-8")
    return root


def _anonymize(src: Path, out: Path, state: list[str], *extra: str) -> int:
    labels = ["--subject", "P_0001", "--session", "P_0001_MR1"]
    return main(["anonymize", str(src), str(out), *labels, *state, *extra])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_anonymize_writes_every_instance_and_skips_the_rest(
    source: Path, tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0; relabelled outputs; the text file is counted as skipped; no PHI printed."""
    out = tmp_path / "out"
    assert _anonymize(source, out, state) == 0
    printed = capsys.readouterr()
    assert "subject P_0001, session P_0001_MR1: 5 file(s) written" in printed.out
    assert "1 file(s) skipped:" in printed.out
    assert "not DICOM" in printed.out
    files = sorted(out.iterdir())
    assert len(files) == 5
    for path in files:
        ds = dcmread(path)
        assert (ds.PatientName, ds.PatientID, ds.StudyID) == ("P_0001", "P_0001", "P_0001_MR1")
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
    assert not any(secret in printed.out + printed.err for secret in PHI)
    assert _mode(tmp_path / "k" / "p.key") == 0o600
    assert _mode(tmp_path / "k" / "m.sqlite") == 0o600


def test_two_workers_give_the_same_files(source: Path, tmp_path: Path, state: list[str]) -> None:
    """Worker processes produce byte-identical output and one mapping row."""
    assert _anonymize(source, tmp_path / "one", state) == 0
    assert _anonymize(source, tmp_path / "two", state, "--workers", "2") == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert one == two
    assert main(["mapping", "export", str(tmp_path / "m.csv"), "--mapping", state[3]]) == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open(encoding="utf-8")))
    assert [(r["subject"], r["session"], r["PatientID"]) for r in rows] == [
        ("P_0001", "P_0001_MR1", MRN)
    ]


def test_burned_in_risk_quarantines_and_exits_1(
    tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An ultrasound image goes to OUT.quarantine with a reason; the summary groups it."""
    src = tmp_path / "in"
    src.mkdir()
    for index, ds in enumerate(iter_datasets(SPEC)):
        if index == 0:
            ds.Modality, ds.SOPClassUID = "US", UltrasoundImageStorage
            ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
        ds.save_as(src / f"{index}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    assert _anonymize(src, out, state) == 1
    printed = capsys.readouterr()
    assert "1 file(s) quarantined (in " in printed.out
    assert "burned-in risk: ultrasound image" in printed.out
    assert "pacsman: 1 file(s) quarantined, 0 failed, 4 written" in printed.err
    held = list(quarantine_dir(out).glob("*.dcm"))
    assert len(held) == 1
    assert len(list(out.iterdir())) == 4


def test_label_clash_with_the_mapping_quarantines(
    tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A second patient under the same subject label is held back, not merged."""
    write_study(SPEC, tmp_path / "a")
    write_study(OTHER, tmp_path / "b")
    assert _anonymize(tmp_path / "a", tmp_path / "out_a", state) == 0
    assert _anonymize(tmp_path / "b", tmp_path / "out_b", state) == 1
    printed = capsys.readouterr().out
    assert "differs from the one recorded for subject 'P_0001'" in printed
    assert "so it is another patient" in printed
    assert not list((tmp_path / "out_b").glob("*.dcm"))
    held = quarantine_dir(tmp_path / "out_b")
    assert len(list(held.glob("*.dcm"))) == 5
    assert _mode(held) == 0o700  # quarantined files hold what the leak check found
    assert {_mode(path) for path in held.iterdir()} == {0o600}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--subject": "P 0001"}, r"subject label 'P 0001' is not valid; use 1-64"),
        ({"--session": "x" * 65}, r"session label 'x{65}' is not valid"),
        ({"--workers": "0"}, r"--workers 0: use 1 to 64 processes"),
        ({"--project": "a/b"}, r"project label 'a/b' is not valid"),
    ],
)
def test_bad_arguments_exit_2_before_touching_anything(
    source: Path,
    tmp_path: Path,
    state: list[str],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    """Labels and options are checked first: no key, no table, no output folder."""
    args = {"--subject": "P_0001", "--session": "P_0001_MR1", "--workers": "1"} | change
    argv = ["anonymize", str(source), str(tmp_path / "out"), *state]
    argv += [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pacsman: ")
    assert re.search(message, err)
    assert not (tmp_path / "k").exists()
    assert not (tmp_path / "out").exists()


def test_folders_are_checked(
    tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing IN_DIR, OUT_DIR = IN_DIR and a folder without DICOM all exit 2."""
    assert _anonymize(tmp_path / "missing", tmp_path / "out", state) == 2
    assert "IN_DIR" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert _anonymize(tmp_path / "in", tmp_path / "in", state) == 2
    assert "give a separate output folder" in capsys.readouterr().err
    (tmp_path / "in" / "a.txt").write_text("hello", encoding="utf-8")
    assert _anonymize(tmp_path / "in", tmp_path / "out", state) == 2
    assert "no DICOM instance found (1 file(s) skipped)" in capsys.readouterr().err


def test_defaults_come_from_config_and_xdg(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Project from xnat.project; key and table under $XDG_CONFIG_HOME/pacsman, 0600."""
    config = write_config(tmp_path, port=104, called_ae_title="PACS")
    config.write_text(config.read_text() + "xnat:\n  project: KNEES\n", encoding="utf-8")
    argv = ["anonymize", str(source), str(tmp_path / "out"), "--config", str(config)]
    assert main([*argv, "--subject", "K_01", "--session", "K_01_MR"]) == 0
    assert "project KNEES, subject K_01" in capsys.readouterr().out
    state = tmp_path / "xdg" / "pacsman"
    assert _mode(state) == 0o700
    assert _mode(state / "KNEES.key") == _mode(state / "KNEES.mapping.sqlite") == 0o600
    out_csv = tmp_path / "export" / "map.csv"
    assert main(["mapping", "export", str(out_csv), "--project", "KNEES"]) == 0
    printed = capsys.readouterr()
    assert "holds PHI" in printed.err
    assert _mode(out_csv) == 0o600
    assert MRN in out_csv.read_text(encoding="utf-8")


def test_mapping_export_without_a_table_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No table at the path: say how to get one."""
    missing = str(tmp_path / "none.sqlite")
    assert main(["mapping", "export", str(tmp_path / "x.csv"), "--mapping", missing]) == 2
    assert "no mapping table here; run an anonymization first" in capsys.readouterr().err


def test_symbolic_link_loops_are_skipped_not_fatal(
    source: Path, tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A link to itself and two links to each other under IN_DIR are not files: the study
    beside them is written (issue 10, item 11).  OUT_DIR on a loop exits 2, named."""
    (source / "self").symlink_to("self")
    (source / "ping").symlink_to("pong")
    (source / "pong").symlink_to("ping")
    (source / "nested" / "up").symlink_to(source)  # a loop through a folder
    assert _anonymize(source, tmp_path / "out", state) == 0
    assert f"{SPEC.n_instances} file(s) written" in capsys.readouterr().out
    (tmp_path / "loop").symlink_to("loop")
    assert _anonymize(source, tmp_path / "loop" / "out", state) == 2
    assert "OUT_DIR" in capsys.readouterr().err


def test_log_file_and_level_come_from_the_config(
    source: Path, tmp_path: Path, state: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``log.file`` and ``log.level`` apply to ``pacsman anonymize`` (issue 10, item 16); the
    file is 0600 in a 0700 folder; --log-level overrides the level."""
    config = write_config(tmp_path, port=104, called_ae_title="PACS")
    log = tmp_path / "logs" / "pacsman.jsonl"
    config.write_text(config.read_text() + f"log:\n  file: {log}\n  level: warning\n")
    argv = ["--config", str(config), *state]
    assert _anonymize(source, tmp_path / "out", argv) == 0
    assert "anonymize_batch_done" not in log.read_text(encoding="utf-8")  # info < warning
    assert _anonymize(source, tmp_path / "out2", [*argv, "--log-level", "info"]) == 0
    capsys.readouterr()
    events = [json.loads(line)["event"] for line in log.read_text(encoding="utf-8").splitlines()]
    assert "anonymize_batch_done" in events
    assert (_mode(log), _mode(log.parent)) == (0o600, 0o700)
