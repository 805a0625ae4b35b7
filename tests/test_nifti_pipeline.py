"""``pacsman --save --anonymize --nifti --push xnat``: Orthanc -> pacsman -> dcm2niix -> the XNAT
emulator (the real ``xnat`` client).

One study holds a good MR series, an MR series with a missing instance (dcm2niix exits 0 and
writes an extra, equalized volume: pacsman fails the conversion) and a structured report
(skipped by SOP class).  Every scan gets its DICOM; only the good series gets a NIFTI
resource, verified file by file (MD5) on the emulator; the outcomes are in the job store and
in ``pacsman status``.  Run again, nothing converted or uploaded is done again; killed with
SIGKILL after a conversion and run again, nothing is converted twice; a NIFTI file with other
content already on XNAT is replaced only with ``push.nifti_overwrite: true``.  The job
store's NIfTI records answer the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import pytest

from pacsman.anonymize import Deidentifier, load_profile
from pacsman.cli import main
from pacsman.config import load_config
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.nifti import (
    converted_series,
    nifti_counts,
    nifti_to_push,
    record_nifti,
    record_nifti_push,
    series_for_nifti,
)
from pacsman.layout import anonymized_series_directory
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.pipeline._runview import resume_command
from pacsman.push import open_target, retry_policy
from pacsman.push.nifti import NiftiUpload, push_nifti
from pacsman.push.xnat import XnatTarget
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, document_series, iter_datasets
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import kill_process_group, write_config, write_queryfile

PROJECT = "PROJ"
SUBJECT, SESSION = "SUBJ01", "SESS01"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
#: Series 1: whole; series 2: instance 3 of 6 missing; series 3: a structured report.
SPEC = StudySpec(
    patient_id="NIFTI001",
    patient_name="Doe^Jane",
    study_date="20240606",
    accession_number="NIFTIACC1",
    study_description="nifti pipeline",
    series=(
        SeriesSpec(series_number=1, series_description="T1 AX", n_instances=6, rows=16, columns=16),
        SeriesSpec(series_number=2, series_description="T2 AX", n_instances=6, rows=16, columns=16),
    ),
)


def _upload(orthanc: OrthancServer) -> None:
    kept = [ds for ds in iter_datasets(SPEC) if (ds.SeriesNumber, ds.InstanceNumber) != (2, 3)]
    report = document_series(SPEC, series_number=3, sop_class_uid=BASIC_TEXT_SR)
    orthanc.upload_datasets([*kept, *report])


def _config(tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator, extra: str = "") -> Path:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    yaml = f'xnat: {{url: "{xnat.url}", project: {PROJECT}}}\npush: {{backoff_max: 0.5{extra}}}\n'
    return write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        extra=yaml,
    )


def _argv(tmp_path: Path, config: Path, *more: str) -> list[str]:
    query = f"PatientID,Subject,Session\n{SPEC.patient_id},{SUBJECT},{SESSION}\n"
    queryfile = write_queryfile(tmp_path, query)
    steps = ["--save", "--anonymize", "--nifti", "--push", "xnat", *more]
    return ["-q", str(queryfile), *steps, "--config", str(config)]


def _events(stderr: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _resource_files(xnat: XnatEmulator, scan: str, resource: str) -> dict[str, str]:
    """name -> MD5 of the files the emulator holds in a scan's resource."""
    session = xnat.session_dir(PROJECT, SESSION)
    assert session is not None
    files = session / "scans" / scan / "resources" / resource / "files"
    return {p.name: _md5(p) for p in sorted(files.rglob("*")) if p.is_file()}


def _local_nifti(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nifti" / SUBJECT / SESSION / "1"


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")


@pytest.mark.usefixtures("environment")
def test_nifti_push_each_scan_gets_dicom_and_a_verified_nifti_resource_then_resumes(
    tmp_path: Path,
    orthanc: OrthancServer,
    capfd: pytest.CaptureFixture[str],  # the de-identify/push process logs to fd 2
) -> None:
    """Every scan's DICOM lands (the failed and the skipped conversion hold nothing back);
    the converted series' files are in its scan's NIFTI resource with their MD5; the job store
    and ``pacsman status`` say converted / failed (the slice count) / skipped (SR); a second
    run converts and uploads nothing that was settled."""
    _upload(orthanc)
    with XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)) as xnat:
        bids = tmp_path / "bids-map.yaml"
        bids.write_text("version: 1\nrules:\n  - {match: 't1', datatype: anat, suffix: T1w}\n")
        argv = _argv(tmp_path, _config(tmp_path, orthanc, xnat), "--bids", str(bids))
        first = main(argv)
        out, err = capfd.readouterr()
        scans = xnat.scan_file_counts(PROJECT, SESSION)
        dicom = {scan: _resource_files(xnat, scan, "DICOM") for scan in ("1", "2", "3")}
        nifti = {scan: _resource_files(xnat, scan, "NIFTI") for scan in ("1", "2", "3")}
        uploads_before = len([r for r in xnat.request_log if r.method in ("PUT", "POST")])
        again = main(argv)
        err_again = capfd.readouterr().err
        uploads_after = len([r for r in xnat.request_log if r.method in ("PUT", "POST")])
        status = main(["status", "--config", str(tmp_path / "pacsman.yaml")])
        status_text = capfd.readouterr().out
        main(["status", "--json", "--config", str(tmp_path / "pacsman.yaml")])
        status_json = json.loads(capfd.readouterr().out)
        report = tmp_path / "report.csv"
        main(["report", "--config", str(tmp_path / "pacsman.yaml"), "--out", str(report)])
        capfd.readouterr()

    assert (first, again) == (0, 0), err[-3000:]
    assert status == 0, status_text
    assert "NIfTI          3 series: 1 converted, 1 failed, 1 skipped; 1 in their scan's" in out
    assert {scan: len(files) for scan, files in dicom.items()} == {"1": 6, "2": 5, "3": 1}
    assert set(scans) == {"1", "2", "3"}
    local = _local_nifti(tmp_path)
    assert nifti["1"] == {p.name: _md5(p) for p in sorted(local.iterdir())}
    assert any(name.endswith(".nii.gz") for name in nifti["1"])
    assert any(name.endswith(".json") for name in nifti["1"])
    assert nifti["2"] == nifti["3"] == {}
    image = next(local.glob("*.nii.gz"))
    assert tuple(nib.load(image).shape) == (16, 16, 6)  # type: ignore[attr-defined]
    assert local.stat().st_mode & 0o777 == 0o700
    anat = tmp_path / "data" / "bids" / "sub-SUBJ01" / "ses-SESS01" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-SUBJ01_ses-SESS01_T1w.json",
        "sub-SUBJ01_ses-SESS01_T1w.nii.gz",
    ]

    outcomes = {e["series_number"]: e["outcome"] for e in _events(err, "series_converted")}
    assert outcomes == {"1": "converted", "2": "failed", "3": "skipped"}
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        run = store.run_records()[0]
        counts = nifti_counts(store, run)
    assert dict(counts.outcomes) == {"converted": 1, "failed": 1, "skipped": 1}
    assert dict(counts.pushes) == {"DONE": 1}
    assert [tool[:5] for tool in counts.tools] == ["v1.0."]
    (failed,) = counts.problems
    assert (failed.series_number, failed.outcome) == ("2", "failed")
    assert "slice" in failed.detail.lower()

    # The second run: the failed series is tried again; nothing settled is redone.
    retried = {e["series_number"] for e in _events(err_again, "series_converted")}
    assert retried == {"2"}
    assert uploads_after == uploads_before
    assert "nifti        1 converted, 1 skipped, 1 failed" in status_text
    assert "to XNAT    1 DONE" in status_text
    assert status_json["nifti"]["outcomes"] == {"converted": 1, "failed": 1, "skipped": 1}
    assert status_json["nifti"]["pushes"] == {"DONE": 1}

    # The info CSV: per series, the outcome, the reason and the upload (columns appended).
    info = _csv(tmp_path / "data" / "q_info.csv")
    assert list(info[0])[-4:] == ["query", "nifti", "nifti_detail", "nifti_push"]
    by_number = {r["SeriesNumber"]: r for r in info}
    assert [(by_number[n]["nifti"], by_number[n]["nifti_push"]) for n in ("1", "2", "3")] == [
        ("converted", "DONE"),
        ("failed", ""),
        ("skipped", ""),
    ]
    assert by_number["1"]["nifti_detail"] == ""
    assert by_number["2"]["nifti_detail"].startswith("series 2: ")
    assert "slice" in by_number["2"]["nifti_detail"].lower()
    assert by_number["3"]["nifti_detail"].startswith("series 3: ")
    # pacsman report: the row's worst outcome, every reason, the worst upload state.
    (row,) = _csv(report)
    assert list(row)[-3:] == ["nifti", "nifti_detail", "nifti_push"]
    assert (row["nifti"], row["nifti_push"]) == ("failed", "DONE")
    assert "series 2: " in row["nifti_detail"]
    assert "series 3: " in row["nifti_detail"]


@pytest.mark.usefixtures("environment")
def test_nifti_file_with_other_content_on_xnat_is_replaced_only_when_configured(
    tmp_path: Path,
    orthanc: OrthancServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A NIFTI resource file on XNAT that differs from the local one fails the upload (nothing
    replaced, the fix named) unless ``push.nifti_overwrite: true``."""
    _upload(orthanc)
    with XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)) as xnat:
        assert main(_argv(tmp_path, _config(tmp_path, orthanc, xnat))) == 0
        local = _local_nifti(tmp_path)
        sidecar = next(local.glob("*.json"))
        on_xnat = _resource_files(xnat, "1", "NIFTI")[sidecar.name]
        sidecar.write_text(sidecar.read_text() + "\n")  # another content, same name
        upload = NiftiUpload(PROJECT, SUBJECT, SESSION, "1", "", local)
        config = load_config(tmp_path / "pacsman.yaml")
        with open_target(config, kind="xnat") as target:
            assert isinstance(target, XnatTarget)
            refused = push_nifti(target, upload, overwrite=False, retry=retry_policy(config.push))
            stray = replace(upload, series_number="99")
            missing = push_nifti(target, stray, overwrite=True, retry=retry_policy(config.push))
        kept = _resource_files(xnat, "1", "NIFTI")[sidecar.name]
        _forget_nifti_push(tmp_path / "jobs.sqlite")
        argv = _argv(tmp_path, _config(tmp_path, orthanc, xnat, ", nifti_overwrite: true"))
        assert main(argv) == 0
        replaced = _resource_files(xnat, "1", "NIFTI")[sidecar.name]
        xnat_scans = xnat.scan_file_counts(PROJECT, SESSION)
        with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
            counts = nifti_counts(store, store.run_records()[0])
        capfd.readouterr()
    assert (refused.state, kept) == ("FAILED", on_xnat)
    assert sidecar.name in refused.detail
    assert "push.nifti_overwrite: true" in refused.detail
    assert replaced == _md5(sidecar) != on_xnat
    assert missing.state == "FAILED"
    assert "has no scan with the series' UID or ID '99'" in missing.detail
    assert "99" not in xnat_scans
    assert dict(counts.pushes) == {"DONE": 1}


def _forget_nifti_push(path: Path) -> None:
    """As if the upload had not happened yet (its files stay on XNAT)."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE series SET nifti_push = '' WHERE nifti = 'converted'")
    db.close()


def test_nifti_without_deidentification_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--nifti converts de-identified series only: without --anonymize (or --push), exit 2
    before anything is sent; --bids without --nifti likewise."""
    config = write_config(tmp_path, port=free_port(), called_ae_title="NOBODY")
    queryfile = write_queryfile(tmp_path, "PatientID\nP1\n")
    base = ["-q", str(queryfile), "--config", str(config)]
    assert main([*base, "--save", "--nifti"]) == 2
    assert "add --anonymize" in capsys.readouterr().err
    assert main([*base, "--save", "--anonymize", "--bids", str(tmp_path / "map.yaml")]) == 2
    assert "add --nifti" in capsys.readouterr().err


def _cohort() -> list[tuple[str, str, StudySpec]]:
    """Three small MR studies of two series each, under labels of their own."""
    return [
        (
            f"SUBJ{n}",
            f"SESS{n}",
            StudySpec(
                patient_id=f"NIFTIKILL{n}",
                patient_name=f"Roe^{name}",
                study_date=f"2024070{n}",
                accession_number=f"NK{n}",
                study_description="nifti kill",
                series=tuple(
                    SeriesSpec(
                        series_number=k,
                        series_description=f"S{k}",
                        n_instances=4,
                        rows=16,
                        columns=16,
                    )
                    for k in (1, 2)
                ),
            ),
        )
        for n, name in ((1, "Ann"), (2, "Bea"), (3, "Cal"))
    ]


def _converted_events(text: str) -> list[tuple[str, str]]:
    """(row, series number) of every ``series_converted`` event of a log."""
    return [(str(e["row"]), str(e["series_number"])) for e in _events(text, "series_converted")]


def test_kill_9_after_a_conversion_then_resume_converts_nothing_twice(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    """kill -9 of pacsman, its helper process and dcm2niix once a series is converted (the
    emulator imports slowly, so the pushes are still under way); the same command run again
    converts only what was not recorded, and every scan ends with its NIFTI resource."""
    cohort = _cohort()
    for _, _, spec in cohort:
        orthanc.upload_datasets(iter_datasets(spec))
    lines = ["PatientID,Subject,Session"] + [
        f"{s.patient_id},{sub},{ses}" for sub, ses, s in cohort
    ]
    queryfile = write_queryfile(tmp_path, "\n".join(lines) + "\n")
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
    }
    with XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)) as xnat:
        xnat.faults.route_latency = {"/data/services/import": 0.5}
        config = _config(tmp_path, orthanc, xnat)
        command = [sys.executable, "-m", "pacsman", "-q", str(queryfile), "--save", "--anonymize"]
        command += ["--nifti", "--push", "xnat", "--config", str(config)]
        log = tmp_path / "killed.log"
        with log.open("wb") as sink:
            victim = subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for(
                lambda: (
                    bool(_converted_events(log.read_text(errors="replace")))
                    or victim.poll() is not None
                ),
                timeout=90,
                what="a first series converted",
            )
        finally:
            kill_process_group(victim)
        with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
            before = nifti_counts(store, store.run_records()[0])
        resumed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        nifti = {(sub, ses): _nifti_scans(xnat, sub, ses) for sub, ses, _ in cohort}
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    settled = before.outcomes["converted"]
    assert settled >= 1
    assert len(_converted_events(resumed.stderr)) == 6 - settled  # nothing converted twice
    assert nifti == {(sub, ses): {"1", "2"} for sub, ses, _ in cohort}


def _nifti_scans(xnat: XnatEmulator, subject: str, session: str) -> set[str]:
    """The scans of a session that hold a NIFTI resource with files."""
    directory = xnat.session_dir(PROJECT, session)
    if directory is None:
        return set()
    return {
        scan.name
        for scan in (directory / "scans").iterdir()
        if any((scan / "resources" / "NIFTI" / "files").glob("*.nii.gz"))
    }


def test_the_command_that_resumes_a_run_keeps_nifti_and_bids() -> None:
    """``pacsman status`` prints the command that resumes an interrupted run: with the
    options the run recorded, --nifti and --bids MAP stay."""
    options = {"queryfile": "q.csv", "save": True, "push": "xnat", "nifti": True}
    assert resume_command({**options, "bids": "/m.yaml"}).endswith(
        "--push xnat --nifti --bids /m.yaml"
    )
    assert resume_command({**options, "nifti": False, "bids": "/m.yaml"}).endswith("--push xnat")


# -- the job store's NIfTI records, on both backends -------------------------------------------


def test_nifti_records_settle_converted_and_skipped_and_wait_for_the_dicom_push(
    store_location: Path | str, tmp_path: Path
) -> None:
    """Converted and skipped series are settled, a failed one is tried again; a converted
    series is ready for its upload only once its session's DICOM push is DONE; counts,
    versions and problems are what status shows."""
    rows = (QueryRow(line=2, keys={"PatientID": "P1"}, subject="S1", session="E1"),)
    queryfile = QueryFile(path=tmp_path / "q.csv", sha256="a" * 64, rows=rows)
    series = tuple(
        SeriesMatch(
            "1.2.3", f"1.2.3.{n}", series_number=str(n), modality="MR", expected_instances=2
        )
        for n in (1, 2, 3)
    )
    with JobStore(store_location) as store:
        run = store.open_run(queryfile, "c" * 64, default_pacs="main")
        store.add_rows(run, [(rows[0], "main")])
        store.record_query(
            run, RowResult(rows[0], "main", (StudyMatch("1.2.3", "P1", series=series),))
        )
        for retrieved in store.series_for_retrieve(run):
            store.update_series(run, retrieved, ItemState.COMPLETE, received=2)
        for anonymized in store.series_for_anonymize(run):
            store.record_anonymization(
                run,
                anonymized,
                ItemState.ANONYMIZED,
                written=2,
                detail="",
                experiment=("S1", "E1"),
                directory=tmp_path / anonymized.series_number,
            )
        todo = series_for_nifti(store, run)
        for one, outcome in zip(todo, ("converted", "skipped", "failed"), strict=True):
            record_nifti(
                store,
                run,
                one,
                outcome,
                detail="" if outcome == "converted" else "why",
                directory=tmp_path / "nifti" / one.series_number,
                tool="v1.0.20260724",
                files=2 if outcome == "converted" else 0,
            )
        again = [s.series_number for s in series_for_nifti(store, run)]
        before_push = nifti_to_push(store, run, "xnat")
        store.record_push(run, "xnat", ("S1", "E1"), ItemState.DONE, files_on_target=6)
        ready = nifti_to_push(store, run, "xnat")
        record_nifti_push(store, run, ready[0], ItemState.DONE, detail="2 file(s), MD5 verified")
        after = nifti_to_push(store, run, "xnat")
        counts = nifti_counts(store, run)
        converted = [s.series_number for s in converted_series(store, run)]
    assert [s.series_number for s in todo] == ["1", "2", "3"]
    assert again == ["3"]
    assert (before_push, [s.series_number for s in ready], after) == ([], ["1"], [])
    assert ready[0].nifti_directory == tmp_path / "nifti" / "1"
    assert converted == ["1"]
    assert dict(counts.outcomes) == {"converted": 1, "skipped": 1, "failed": 1}
    assert (dict(counts.pushes), counts.tools) == ({"DONE": 1}, ("v1.0.20260724",))
    assert [(p.series_number, p.outcome, p.detail) for p in counts.problems] == [
        ("3", "failed", "why")
    ]


# -- the conversion pass on its own: a series without its folder, modes, progress --------------


def _deidentified_run(store: JobStore, tmp_path: Path) -> Run:
    """A run of one study with two de-identified MR series (4 instances each); series 1's
    de-identified folder is recorded, series 2's is not (as an older release left it)."""
    spec = StudySpec(
        patient_id="NIFTIUNIT1",
        patient_name="Poe^Ida",
        study_date="20240808",
        accession_number="NU1",
        study_description="nifti unit",
        series=tuple(
            SeriesSpec(series_number=k, series_description=f"T{k} AX", n_instances=4)
            for k in (1, 2)
        ),
    )
    engine = Deidentifier(load_profile(None), key=b"u" * 32, project=PROJECT)
    raw = tmp_path / "raw"
    raw.mkdir()
    for ds in iter_datasets(spec):
        path = raw / f"{ds.SeriesNumber}-{ds.InstanceNumber}.dcm"
        ds.save_as(path, enforce_file_format=True)
        folder = anonymized_series_directory(
            tmp_path / "out", subject=SUBJECT, session=SESSION, series_number=str(ds.SeriesNumber)
        )
        assert not engine.deidentify_file(
            path, folder, subject=SUBJECT, session=SESSION
        ).quarantined
    rows = (
        QueryRow(line=2, keys={"PatientID": spec.patient_id}, subject=SUBJECT, session=SESSION),
    )
    queryfile = QueryFile(path=tmp_path / "q.csv", sha256="b" * 64, rows=rows)
    uid = str(spec.study_instance_uid)
    series = tuple(
        SeriesMatch(
            uid,
            f"{uid}.{k}",
            series_number=str(k),
            series_description=f"T{k} AX",
            modality="MR",
            expected_instances=4,
        )
        for k in (1, 2)
    )
    run = store.open_run(queryfile, "c" * 64, default_pacs="main")
    store.add_rows(run, [(rows[0], "main")])
    store.record_query(run, RowResult(rows[0], "main", (StudyMatch(uid, "P", series=series),)))
    for one in store.series_for_retrieve(run):
        store.update_series(run, one, ItemState.COMPLETE, received=4)
    for one in store.series_for_anonymize(run):
        folder = anonymized_series_directory(
            tmp_path / "out", subject=SUBJECT, session=SESSION, series_number=one.series_number
        )
        store.record_anonymization(
            run,
            one,
            ItemState.ANONYMIZED,
            written=4,
            detail="",
            experiment=(SUBJECT, SESSION),
            directory=folder,
        )
    return run


def _forget_folder(path: Path, series_number: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE series SET anonymized_directory = '' WHERE series_number = ?",
            (series_number,),
        )
    db.close()


def _modes(root: Path) -> dict[str, set[str]]:
    """Every folder and file under ``root`` (root too) by its mode, as ``0o700`` text."""
    found: dict[str, set[str]] = {}
    for path in [root, *root.rglob("*")]:
        mode = oct(stat.S_IMODE(path.lstat().st_mode))
        found.setdefault(mode, set()).add("dir" if path.is_dir() else "file")
    return found


def test_a_series_without_its_folder_fails_and_the_outputs_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A de-identified series whose folder the job store does not know fails with the reason
    (the current folder, here series 1's de-identified files, is never read); the other is
    converted, with folders 0700 and files 0600 under <out>/nifti and <out>/bids, the BIDS
    files hard links of the NIfTI ones (one inode, one mode), dataset_description.json 0600;
    the progress counts one NIfTI series done and one failed."""
    from pacsman.pipeline.nifti import NiftiOptions, convert_deidentified
    from pacsman.pipeline.progress import Stage, Tracker

    config = load_config(write_config(tmp_path, port=free_port(), called_ae_title="NOBODY"))
    mapping = tmp_path / "bids-map.yaml"
    mapping.write_text("version: 1\nrules:\n  - {match: 't1', datatype: anat, suffix: T1w}\n")
    out = tmp_path / "out"
    with JobStore(tmp_path / "jobs.sqlite") as store:
        run = _deidentified_run(store, tmp_path)
    _forget_folder(tmp_path / "jobs.sqlite", "2")
    monkeypatch.chdir(
        anonymized_series_directory(out, subject=SUBJECT, session=SESSION, series_number="1")
    )
    tracker = Tracker([Stage.DEIDENTIFY, Stage.NIFTI])
    tracker.plan(Stage.NIFTI, total=2)
    with JobStore(tmp_path / "jobs.sqlite") as store:
        worked = convert_deidentified(
            store,
            run,
            config,
            out,
            NiftiOptions(bids=mapping),
            handled=set(),
            counts=tracker,
        )
        counts = nifti_counts(store, run)
    assert worked == 2
    assert dict(counts.outcomes) == {"converted": 1, "failed": 1}
    (problem,) = counts.problems
    assert problem.series_number == "2"
    assert "de-identified folder is not in the job store" in problem.detail
    assert not (out / "nifti" / SUBJECT / SESSION / "2").exists()

    assert _modes(out / "nifti") == {"0o700": {"dir"}, "0o600": {"file"}}
    assert _modes(out / "bids") == {"0o700": {"dir"}, "0o600": {"file"}}
    assert stat.S_IMODE((out / "bids" / "dataset_description.json").stat().st_mode) == 0o600
    anat = out / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    nifti = out / "nifti" / SUBJECT / SESSION / "1"
    assert len(list(anat.iterdir())) == 2  # the NIfTI and its sidecar
    for placed in anat.iterdir():
        source = nifti / f"series-1{''.join(placed.suffixes)}"
        assert placed.stat().st_ino == source.stat().st_ino  # a hard link: the same mode
    (view,) = [v for v in tracker.views() if v.stage is Stage.NIFTI]
    assert (view.done, view.failed, view.total) == (1, 1, 2)
    assert view.text().startswith("NIfTI 1/2 series")
