"""The push stage's subcommands: ``pacsman upload``, ``pacsman xnat upload-resource`` and
``pacsman xnat download``, run in-process against the XNAT emulator with the real client.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import json
import shutil
import stat
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import structlog

from pacsman.cli import main
from pacsman.errors import InputError, ItemFailed
from pacsman.push.cli import upload_main, xnat_main
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.test_push_xnat import imports, study_dir


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """A running emulator with project P1."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as running:
        yield running


def write_config(tmp_path: Path, url: str, extra: str = "", *, folder: Path | None = None) -> Path:
    """A config pointing at the emulator (fast retries), with ``extra`` YAML appended."""
    text = f"""\
    pacs:
      main: {{host: 127.0.0.1, port: 104, called_ae_title: PACS}}
    store_root: {tmp_path}/data
    xnat:
      url: {url}
      project: P1
    push:
      max_attempts: 3
      backoff_max: 0.05
    """
    if folder is not None:
        text += f"  folder: {folder}\n"
    path = tmp_path / "pacsman.yaml"
    path.write_text(textwrap.dedent(text) + extra, encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, emulator: XnatEmulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config file + credentials in the environment + key and mapping under tmp_path."""
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "state"))
    return write_config(tmp_path, emulator.url)


# -- pacsman upload -------------------------------------------------------------------------


def test_upload_deidentifies_pushes_and_verifies(
    tmp_path: Path, emulator: XnatEmulator, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local folder is de-identified (PatientName becomes the subject label), pushed and
    verified; running it again sends nothing."""
    source = study_dir(tmp_path / "local", "cd")
    argv = [str(source), "--subject", "SUBJ07", "--session", "SESS07", "--config", str(config)]
    assert 0 == upload_main(argv)
    assert "DONE P1/SUBJ07/SESS07: 5 of 5 file(s) on xnat" in capsys.readouterr().out
    stored = emulator.dicom_files("P1", "SESS07")
    assert 5 == len(stored)
    header = pydicom.dcmread(stored[0], stop_before_pixels=True)
    assert ("SUBJ07", "SUBJ07") == (str(header.PatientName), header.PatientID)
    assert "Patient^cd" not in {str(pydicom.dcmread(f).PatientName) for f in stored}
    assert 0 == upload_main(argv)
    assert "nothing sent" in capsys.readouterr().out
    assert [200] == imports(emulator)


def test_upload_refuses_identified_data_and_bad_labels_before_anything(
    tmp_path: Path, emulator: XnatEmulator, config: Path
) -> None:
    """anonymization off without xnat.allow_identified, or a bad label: InputError, nothing
    sent (the emulator saw no request at all)."""
    source = study_dir(tmp_path / "local", "cd")
    off = write_config(tmp_path, emulator.url, "anonymization: {enabled: false}\n")
    with pytest.raises(InputError, match="allow_identified"):
        upload_main([str(source), "--subject", "S1", "--session", "E1", "--config", str(off)])
    with pytest.raises(InputError, match=r"session label 'E\.1' is not valid"):
        upload_main([str(source), "--subject", "S1", "--session", "E.1", "--config", str(config)])
    assert [] == emulator.request_log


def test_upload_to_a_folder_target(tmp_path: Path, config: Path) -> None:
    """--target folder: the de-identified copy lands under push.folder."""
    folder_config = write_config(tmp_path, "http://127.0.0.1:9", folder=tmp_path / "copy")
    source = study_dir(tmp_path / "local", "cd")
    argv = [str(source), "--subject", "S1", "--session", "E1", "--target", "folder"]
    assert 0 == upload_main([*argv, "--config", str(folder_config)])
    assert 5 == len(list((tmp_path / "copy" / "P1" / "S1" / "E1").rglob("*.dcm")))


# -- pacsman xnat upload-resource -----------------------------------------------------------


@pytest.fixture
def pushed(tmp_path: Path, emulator: XnatEmulator, config: Path) -> None:
    """Session SESS07 (scans 1 and 2) of subject SUBJ07 on the emulator."""
    source = study_dir(tmp_path / "local", "cd")
    upload_main(
        [str(source), "--subject", "SUBJ07", "--session", "SESS07", "--config", str(config)]
    )


def test_upload_resource_creates_skips_and_refuses_overwrite(
    tmp_path: Path,
    emulator: XnatEmulator,
    config: Path,
    pushed: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Files go to a new scan's new resource, keeping their path below --base; the URLs are
    printed; identical files are skipped on a re-run; changed ones need --overwrite."""
    base = tmp_path / "derived"
    (base / "seg").mkdir(parents=True)
    (base / "seg" / "mask.nii.gz").write_bytes(b"mask-1")
    (base / "table.csv").write_text("a,b\n")
    files = [str(base / "seg" / "mask.nii.gz"), str(base / "table.csv")]
    argv = ["upload-resource", "--subject", "SUBJ07", "--experiment", "SESS07", "--scan", "99"]
    argv += ["--resource", "SEG", "--base", str(base), "--config", str(config), *files]
    capsys.readouterr()
    assert 0 == xnat_main(argv)
    urls = [line for line in capsys.readouterr().out.splitlines() if line.startswith("http")]
    assert 2 == len(urls)
    assert urls[0].startswith(emulator.url)
    assert urls[0].endswith("/scans/99/resources/SEG/files/seg/mask.nii.gz")
    on_disk = emulator.session_dir("P1", "SESS07")
    assert on_disk is not None
    stored = on_disk / "scans/99/resources/SEG/files/seg/mask.nii.gz"
    assert b"mask-1" == stored.read_bytes()
    uploads = [r for r in emulator.request_log if r.method == "PUT" and "/files/" in r.path]
    assert 0 == xnat_main(argv)
    assert uploads == [r for r in emulator.request_log if r.method == "PUT" and "/files/" in r.path]
    (base / "seg" / "mask.nii.gz").write_bytes(b"mask-2")
    with pytest.raises(InputError, match=r"already on XNAT with other content \(seg/mask.nii.gz\)"):
        xnat_main(argv)
    assert 0 == xnat_main([*argv, "--overwrite"])
    assert b"mask-2" == stored.read_bytes()


def test_upload_resource_rejects_paths_outside_base(
    tmp_path: Path, emulator: XnatEmulator, config: Path
) -> None:
    """A file outside --base (directly or through '..') is refused before any request."""
    base = tmp_path / "derived"
    base.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    argv = ["upload-resource", "--subject", "S", "--experiment", "E", "--resource", "R"]
    argv += ["--base", str(base), "--config", str(config), str(base / ".." / "secret.txt")]
    with pytest.raises(InputError, match="lies outside the base directory"):
        xnat_main(argv)
    assert [] == emulator.request_log


# -- pacsman xnat download ------------------------------------------------------------------


def test_download_filters_writes_a_manifest_and_resumes(
    tmp_path: Path, emulator: XnatEmulator, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sessions of the listed subjects become one zip each plus manifest.csv; a re-run skips
    them; a deleted zip is fetched again; --extract unpacks; filters by date and modality."""
    for number, subject in enumerate(("SUBJ1", "SUBJ2", "SUBJ3")):
        source = study_dir(tmp_path / "local", f"source{number}")
        upload_main(
            [str(source), "--subject", subject, "--session", f"E{subject}", "--config", str(config)]
        )
    out = tmp_path / "down"
    argv = ["download", "--subject", "SUBJ1,SUBJ2", "--out", str(out), "--config", str(config)]
    assert 0 == xnat_main(argv)
    assert "2 session(s) matched: 2 downloaded, 0 already there" in capsys.readouterr().out
    with (out / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [("SUBJ1", "ESUBJ1", "DONE", "5"), ("SUBJ2", "ESUBJ2", "DONE", "5")] == [
        (r["subject"], r["session"], r["state"], r["files"]) for r in rows
    ]
    assert 5 == len(zipfile.ZipFile(out / "SUBJ1" / "ESUBJ1.zip").namelist())
    (out / "SUBJ2" / "ESUBJ2.zip").unlink()
    assert 0 == xnat_main(argv)
    assert "1 downloaded, 1 already there" in capsys.readouterr().out
    extracted = tmp_path / "extracted"
    dated = ["download", "--from", "19000101", "--to", "20991231", "--modality", "MR"]
    assert 0 == xnat_main([*dated, "--extract", "--out", str(extracted), "--config", str(config)])
    assert 15 == len(list(extracted.rglob("*.dcm")))
    assert 0 == xnat_main(
        ["download", "--modality", "CT", "--out", str(tmp_path / "ct"), "--config", str(config)]
    )
    assert "0 session(s) matched" in capsys.readouterr().out.splitlines()[-1]


def test_download_of_an_empty_session_is_recorded_as_failed(
    tmp_path: Path, emulator: XnatEmulator, config: Path
) -> None:
    """A session without files (XNAT answers 404 to its zip) is FAILED in the manifest and
    the command exits with 'some failed'."""
    import xnat

    with xnat.connect(emulator.url, user="admin", password="secret", loglevel="ERROR") as raw:
        subject = raw.classes.SubjectData(parent=raw.projects["P1"], label="EMPTY")
        raw.classes.MrSessionData(parent=subject, label="NOFILES")
    out = tmp_path / "down"
    with pytest.raises(ItemFailed, match="1 session"):
        xnat_main(["download", "--out", str(out), "--config", str(config)])
    with (out / "manifest.csv").open() as stream:
        assert ["FAILED"] == [r["state"] for r in csv.DictReader(stream)]


def test_download_resumes_after_the_manifest_is_lost(
    tmp_path: Path, emulator: XnatEmulator, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With manifest.csv gone, --extract (and zips) find the sessions already in place,
    record them DONE and fetch only the missing one (issue 10, item 12).  Folders are 0700,
    files 0600."""
    for number, subject in enumerate(("SUBJ1", "SUBJ2")):
        source = study_dir(tmp_path / "local", f"source{number}")
        argv = [str(source), "--subject", subject, "--session", f"E{subject}"]
        assert 0 == upload_main([*argv, "--config", str(config)])
    for extract in (["--extract"], []):
        out = tmp_path / f"down{len(extract)}"
        argv = ["download", "--out", str(out), "--config", str(config), *extract]
        assert 0 == xnat_main(argv)
        (out / "manifest.csv").unlink()
        if extract:
            shutil.rmtree(out / "SUBJ2" / "ESUBJ2")
        else:
            (out / "SUBJ2" / "ESUBJ2.zip").unlink()
        capsys.readouterr()
        assert 0 == xnat_main(argv)
        assert "2 session(s) matched: 1 downloaded, 1 already there" in capsys.readouterr().out
        with (out / "manifest.csv").open() as stream:
            rows = list(csv.DictReader(stream))
        assert [("ESUBJ1", "DONE", "5"), ("ESUBJ2", "DONE", "5")] == [
            (r["session"], r["state"], r["files"]) for r in rows
        ]
        assert "found complete on disk" in rows[0]["detail"]
        modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
        folders = {stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if p.is_dir()}
        assert ({0o600}, {0o700}) == (modes, folders)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Logging as it was before a test that runs ``main()`` (which configures it)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_xnat_and_upload_log_as_the_config_says(
    tmp_path: Path,
    emulator: XnatEmulator,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """``log.file`` and ``log.level`` apply to ``upload`` and ``xnat`` (issue 10, item 16)."""
    log = tmp_path / "logs" / "pacsman.jsonl"
    config.write_text(config.read_text() + f"log:\n  file: {log}\n  level: debug\n")
    source = study_dir(tmp_path / "local", "one")
    argv = [str(source), "--subject", "S1", "--session", "E1", "--config", str(config)]
    assert 0 == main(["upload", *argv])
    out = tmp_path / "down"
    assert 0 == main(["xnat", "download", "--out", str(out), "--config", str(config)])
    capsys.readouterr()
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    names = {e["event"] for e in events}
    assert {"push_started", "xnat_downloaded"} <= names
    assert "debug" in {e["level"] for e in events}
