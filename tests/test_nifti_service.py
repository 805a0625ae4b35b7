"""Service jobs that ask for NIfTI: ``pacsman submit --nifti [--bids MAP]``, the inbox's
``serve.inbox_job.nifti``/``bids`` and the HTTP API's ``nifti`` field are refused with the
command's messages (no de-identification, a missing mapping file), stored and shown with the
job, and handed to the pipeline; one job served end to end (Orthanc -> ``pacsman serve`` ->
dcm2niix -> the XNAT emulator's NIFTI resource)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.config import load_config
from pacsman.errors import InputError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import FINAL_STATES, JobOptions, JobState
from pacsman.jobstore.nifti import nifti_counts
from pacsman.service.inbox import Inbox, inbox_options
from pacsman.service.runner import _run_options, job_folder
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.service import ServiceProcess, wait_for_jobs
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile
from tests.test_service_http import bearer, serving, upload

MAPPING = "version: 1\nrules:\n  - {match: 't1', datatype: anat, suffix: T1w}\n"
NO_DEIDENTIFICATION = (
    "--nifti converts de-identified series only (sidecars must not carry identity): "
    "add --anonymize (or --push, which implies it)"
)


def _config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, port=free_port(), called_ae_title="NOBODY", extra=extra)


def _jobs(config: Path) -> list[JobOptions]:
    with JobStore(load_config(config).jobstore, read_only=True) as store:
        return [job.options for job in store.jobs()]


def test_submit_refuses_nifti_as_the_command_does_and_queues_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without de-identification, with a mapping file that is not there, --bids without
    --nifti, an invalid mapping file: exit 2 with the command's message, nothing queued."""
    config = _config(tmp_path)
    queryfile = write_queryfile(tmp_path, "PatientID\nP1\n")
    bad = tmp_path / "bad-map.yaml"
    bad.write_text("version: 1\nrules: nothing\n")
    base = ["submit", str(queryfile), "--config", str(config)]
    refused = {
        "no de-identification": [*base, "--save", "--nifti"],
        "no mapping file": [*base, "--anonymize", "--nifti", "--bids", str(tmp_path / "no.yaml")],
        "no --nifti": [*base, "--anonymize", "--bids", str(bad)],
        "bad mapping file": [*base, "--anonymize", "--nifti", "--bids", str(bad)],
    }
    errors = {}
    for name, argv in refused.items():
        assert main(argv) == 2, name
        errors[name] = capsys.readouterr().err
    assert NO_DEIDENTIFICATION in errors["no de-identification"]
    assert f"--bids {tmp_path / 'no.yaml'}: no such file" in errors["no mapping file"]
    assert f"--bids {bad} names the BIDS layout of --nifti: add --nifti" in errors["no --nifti"]
    assert str(bad.name) in errors["bad mapping file"]
    assert _jobs(config) == []


def test_submit_stores_nifti_and_the_mapping_file_and_the_job_runs_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--nifti and --bids (relative here) are stored with the job, the mapping file by its
    absolute path; ``pacsman jobs`` shows them; the job's run gets them."""
    config = _config(tmp_path)
    queryfile = write_queryfile(tmp_path, "PatientID\nP1\n")
    (tmp_path / "map.yaml").write_text(MAPPING)
    monkeypatch.chdir(tmp_path)
    argv = ["submit", str(queryfile), "--push", "xnat", "--nifti", "--bids", "map.yaml"]
    assert main([*argv, "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["jobs", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert main(["jobs", "--json", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    (options,) = _jobs(config)
    assert (options.nifti, options.bids) == (True, str(tmp_path / "map.yaml"))
    assert "--push xnat --nifti --bids map.yaml" in listed
    job = shown["jobs"][0]
    assert (job["options"]["nifti"], job["options"]["bids"]) == (True, options.bids)
    with JobStore(load_config(config).jobstore, read_only=True) as store:
        (stored,) = store.jobs()
    run = _run_options(stored, tmp_path / "q.csv")
    assert (run.nifti, run.bids, run.deidentify) == (True, tmp_path / "map.yaml", True)


def test_the_inbox_job_options_carry_nifti_or_are_refused(tmp_path: Path) -> None:
    """``serve.inbox_job.nifti`` without anonymize (or push) is refused with the command's
    message, as is a ``bids`` file that is not there; with both, the inbox queues jobs that
    ask for NIfTI and the BIDS folder."""
    (tmp_path / "map.yaml").write_text(MAPPING)

    def inbox_config(lines: str) -> Path:
        folder = tmp_path / f"c{len(list(tmp_path.glob('c*')))}"
        folder.mkdir()
        body = "".join(f"    {line}\n" for line in lines.splitlines())
        return _config(folder, f"serve:\n  inbox_job:\n{body}")

    no_anonymize = load_config(inbox_config("nifti: true"))
    missing = load_config(inbox_config(f"anonymize: true\nnifti: true\nbids: {tmp_path}/no.yaml"))
    good = load_config(inbox_config(f"anonymize: true\nnifti: true\nbids: {tmp_path}/map.yaml"))
    with JobStore(good.jobstore) as store:
        with pytest.raises(InputError, match="add --anonymize"):
            Inbox(store, no_anonymize, folder=tmp_path / "inbox")
        with pytest.raises(InputError, match="no such file; give the BIDS mapping file"):
            Inbox(store, missing, folder=tmp_path / "inbox")
        Inbox(store, good, folder=tmp_path / "inbox")
    options = inbox_options(good.serve.inbox_job)
    assert (options.nifti, options.bids, options.anonymize) == (
        True,
        str(tmp_path / "map.yaml"),
        True,
    )


def test_the_http_api_takes_nifti_and_refuses_a_mapping_path(tmp_path: Path) -> None:
    """POST /api/jobs: ``nifti`` without de-identification is 400 with the command's message;
    a ``bids`` field is 400 (it would name a file of the service's host); ``nifti`` with
    ``anonymize`` is queued, and the job shows it."""
    with serving(tmp_path) as served:
        alone = served.post("/api/jobs", files=upload(), data={"nifti": "true"}, headers=bearer())
        mapped = served.post(
            "/api/jobs",
            files=upload(),
            data={"nifti": "true", "anonymize": "true", "bids": "/etc/passwd"},
            headers=bearer(),
        )
        refused_jobs = served.view.store.jobs()
        queued = served.post(
            "/api/jobs",
            files=upload(),
            data={"nifti": "true", "anonymize": "true"},
            headers=bearer(),
        )
    assert alone.status_code == 400, alone.text
    assert NO_DEIDENTIFICATION in alone.json()["error"]
    assert mapped.status_code == 400, mapped.text
    assert "a BIDS mapping file is not taken over HTTP" in mapped.json()["error"]
    assert "passwd" not in mapped.text.replace("/etc/passwd", "")
    assert refused_jobs == []
    assert queued.status_code == 201, queued.text
    job = queued.json()
    assert (job["options"]["nifti"], job["options"]["bids"]) == (True, None)
    assert "--anonymize --nifti" in job["asks_for"]


# -- one job served end to end -----------------------------------------------------------------

PROJECT, SUBJECT, SESSION = "PROJ", "SVCN01", "SVCN01_MR"
SPEC = StudySpec(
    patient_id="NIFTISVC1",
    patient_name="Service^Nifti",
    study_date="20240909",
    accession_number="NSVC1",
    study_description="nifti service",
    series=(
        SeriesSpec(series_number=1, series_description="T1 AX", n_instances=4, rows=16, columns=16),
    ),
)


def test_a_served_job_converts_and_uploads_nifti(tmp_path: Path, orthanc: OrthancServer) -> None:
    """``pacsman submit --push xnat --nifti --bids MAP``, then ``pacsman serve``: the job ends
    DONE; its folder holds the NIfTI and the BIDS copy; the scan has its DICOM and a NIFTI
    resource; the job's info CSV has the NIfTI columns."""
    orthanc.upload_datasets(iter_datasets(SPEC))
    scp = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", scp)
    mapping = tmp_path / "map.yaml"
    mapping.write_text(MAPPING)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "XNAT_USER": "admin", "XNAT_PASS": "secret"}
    with XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)) as xnat:
        extra = (
            f'xnat: {{url: "{xnat.url}", project: {PROJECT}}}\npush: {{backoff_max: 0.5}}\n'
            f"serve:\n  node_name: head1\n  min_free_gb: 0\n  http:\n    port: {free_port()}\n"
        )
        config = write_config(
            tmp_path,
            port=orthanc.dicom_port,
            called_ae_title=orthanc.ae_title,
            local_port=scp,
            extra=extra,
        )
        query = f"PatientID,Subject,Session\n{SPEC.patient_id},{SUBJECT},{SESSION}\n"
        queryfile = write_queryfile(tmp_path, query, name="cohort.csv")
        argv = ["submit", str(queryfile), "--push", "xnat", "--nifti", "--bids", str(mapping)]
        assert main([*argv, "--config", str(config)]) == 0
        process = ServiceProcess(config, env={**os.environ, **env}).start()
        try:
            process.wait_ready()
            (job,) = wait_for_jobs(
                tmp_path / "jobs.sqlite", [1], FINAL_STATES, timeout=60, service=process
            )
        finally:
            process.stop(timeout=30)
        session = xnat.session_dir(PROJECT, SESSION)
        assert session is not None
        resources = session / "scans" / "1" / "resources"
        on_xnat = {p.name for p in (resources / "NIFTI" / "files").rglob("*") if p.is_file()}
        dicom = [p for p in (resources / "DICOM" / "files").rglob("*") if p.is_file()]
    assert job.state is JobState.DONE, job.detail
    folder = job_folder(load_config(config), job)
    local = folder / "nifti" / SUBJECT / SESSION / "1"
    assert {p.name for p in local.iterdir()} == on_xnat
    assert any(name.endswith(".nii.gz") for name in on_xnat)
    assert len(dicom) == 4
    anat = folder / "bids" / f"sub-{SUBJECT}" / "ses-SVCN01MR" / "anat"  # BIDS labels: no "_"
    assert sorted(p.suffix for p in anat.iterdir()) == [".gz", ".json"]
    with (folder / "cohort_info.csv").open(encoding="utf-8", newline="") as fh:
        (line,) = list(csv.DictReader(fh))
    assert (line["nifti"], line["nifti_detail"], line["nifti_push"]) == ("converted", "", "DONE")
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        assert job.run_id is not None
        counts = nifti_counts(store, store.run_record(job.run_id))
    assert (dict(counts.outcomes), dict(counts.pushes)) == ({"converted": 1}, {"DONE": 1})
