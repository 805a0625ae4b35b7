"""The issue's "done when", end to end (issue 13): three query files dropped into the inbox and
one submitted through the HTTP API all end DONE, each session once on XNAT; the API,
``pacsman status --job N --json`` and ``/metrics`` agree on the counts.

Orthanc is the PACS, the XNAT emulator (driven by the real ``xnat`` client) the target, and
``pacsman serve`` a real subprocess.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pacsman.cli import main
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobState
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.service import ServiceProcess, wait_for_jobs
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config

INBOX_FILES = {
    "knee.csv": "PatientID,Subject,Session\nDEMO002,K_SUBJ,K_SESS\n",
    "brain.csv": "PatientID,Subject,Session\nDEMO001,B_SUBJ,B_SESS\n",
    "spine.csv": "PatientID,StudyDescription,Subject,Session\nDEMO003,MR Spine,S_SUBJ,S_SESS\n",
}
UPLOADED = "PatientID,StudyDescription,Subject,Session\nDEMO003,CT Chest,C_SUBJ,C_SESS\n"


@pytest.mark.orthanc
def test_inbox_and_web_submissions_end_done_once_on_xnat_and_every_view_agrees(
    tmp_path: Path, demo_orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
        "NETRC": str(tmp_path / "no-netrc"),
    }
    inbox = tmp_path / "inbox"
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        port = free_port()
        demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
        config = write_config(
            tmp_path,
            port=demo_orthanc.dicom_port,
            called_ae_title=demo_orthanc.ae_title,
            local_port=port,
            extra=(
                f"xnat:\n  url: {xnat.url}\n  project: PROJ\n"
                f"serve:\n  min_free_gb: 0\n  max_jobs: 4\n  inbox: {inbox}\n"
                f"  inbox_interval: 0.2\n  inbox_job:\n    push: xnat\n"
                f"  http:\n    port: {free_port()}\n"
            ),
        )
        with ServiceProcess(config, env=env) as service:
            service.wait_ready()
            url = _http_url(tmp_path / "jobs.sqlite")
            for name, text in INBOX_FILES.items():
                (inbox / f"{name}.part").write_text(text, encoding="utf-8")
                (inbox / f"{name}.part").rename(inbox / name)  # as a careful copy does
            answer = requests.post(
                f"{url}/api/jobs",
                files={"file": ("chest.csv", UPLOADED.encode(), "text/csv")},
                data={"push": "xnat", "name": "chest"},
                headers={"Origin": url},
                timeout=30,
            )
            assert 201 == answer.status_code, answer.text
            jobs = _all_jobs(tmp_path / "jobs.sqlite", count=4, timeout=30)
            done = wait_for_jobs(
                tmp_path / "jobs.sqlite", jobs, {JobState.DONE, JobState.FAILED}, service=service
            )
            views = {job: _views(url, job, config, capsys) for job in jobs}
        sessions = {s.label: s.file_count for s in xnat.sessions("PROJ")}
        imports = [r for r in xnat.request_log if "services/import" in r.path and r.status < 300]
    assert [JobState.DONE] * 4 == [job.state for job in done], [job.detail for job in done]
    assert sorted(INBOX_FILES) == sorted(p.name for p in (inbox / "accepted").iterdir())
    assert {"K_SESS", "B_SESS", "S_SESS", "C_SESS"} == set(sessions)
    assert len(sessions) == len(imports)  # each session pushed once
    for job, (api, status, metrics) in views.items():
        received = api["counts"]["instances"]["received"]
        assert received == status["counts"]["series"]["received_instances"], job
        assert received == metrics["pacsman_job_instances_verified"], job
        assert api["counts"]["series"]["retrieved"] == metrics["series COMPLETE"], job
        assert api["counts"]["series"]["total"] == status["counts"]["series"]["total"], job
    assert sum(sessions.values()) == sum(
        api["counts"]["instances"]["received"] for api, _, _ in views.values()
    )


def _http_url(jobstore: Path) -> str:
    with JobStore(jobstore, read_only=True) as store:
        return store.service_nodes()[0].http_url


def _all_jobs(jobstore: Path, *, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with JobStore(jobstore, read_only=True) as store:
            ids = sorted(job.id for job in store.jobs())
        if len(ids) >= count:
            return ids
        time.sleep(0.1)
    raise AssertionError(f"only {ids} queued in {timeout} s")


def _views(
    url: str, job: int, config: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, object], dict[str, object], dict[str, float]]:
    """The job as the API, ``pacsman status --job N --json`` and ``/metrics`` see it."""
    api = requests.get(f"{url}/api/jobs/{job}", timeout=30).json()
    capsys.readouterr()
    main(["status", "--job", str(job), "--json", "--config", str(config)])
    status = json.loads(capsys.readouterr().out)
    metrics: dict[str, float] = {}
    text = requests.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job_id") != str(job):
                continue
            if sample.name == "pacsman_job_instances_verified":
                metrics[sample.name] = sample.value
            if sample.name == "pacsman_job_series" and sample.labels.get("stage") == "retrieve":
                key = f"series {sample.labels.get('state')}"
                metrics[key] = metrics.get(key, 0) + sample.value
    return api, status, metrics
