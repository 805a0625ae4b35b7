"""Restarts lose nothing (issue 13, item 10): ``kill -9`` of ``pacsman serve`` in the middle
of three jobs, then a restart, with Orthanc as the PACS and the XNAT emulator (driven by the
real ``xnat`` client) as the target.

Every job ends DONE; no series that was COMPLETE before the kill is requested again; every
session is on XNAT once, with every file.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobState
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.service import ServiceProcess, wait_for_jobs
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

#: Three jobs, one patient each, every session labelled: (query file name, its rows).
JOBS = {
    "knee": "PatientID,Subject,Session\nDEMO002,K_SUBJ,K_SESS\n",
    "brain": "PatientID,Subject,Session\nDEMO001,B_SUBJ,B_SESS\n",
    "spine": "PatientID,StudyDescription,Subject,Session\nDEMO003,MR Spine,S_SUBJ,S_SESS\n",
}
#: What each session holds on XNAT (the demo studies' instance counts).
EXPECTED = {"K_SESS": 13, "B_SESS": 23, "S_SESS": None}


def _config(tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator) -> Path:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    return write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        # Retrieves of the three jobs start at least 0.5 s apart, so that the first session
        # reaches XNAT while the others still have series to move: a fast retrieve once
        # finished all three before the test could kill the service.
        extra_node="move_interval: 0.5",
        extra=(
            f"xnat:\n  url: {xnat.url}\n  project: PROJ\n"
            f"serve:\n  node_name: head1\n  min_free_gb: 0\n  max_jobs: 3\n"
            f"  http:\n    port: {free_port()}\n"
        ),
    )


def _series_complete(jobstore: Path) -> dict[str, str]:
    """Series UID -> run for every series COMPLETE now."""
    with sqlite3.connect(f"file:{jobstore}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT series_instance_uid, run_id FROM series WHERE state = 'COMPLETE'"
        ).fetchall()
    return {str(uid): str(run) for uid, run in rows}


def _retrieving_after(jobstore: Path, since: str) -> list[str]:
    with sqlite3.connect(f"file:{jobstore}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT key FROM transitions WHERE kind = 'series' AND state = 'RETRIEVING' AND at > ?",
            (since,),
        ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.mark.orthanc
def test_kill_9_in_the_middle_of_three_jobs_then_restart_loses_nothing(
    tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
        "NETRC": str(tmp_path / "no-netrc"),
    }
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        config = _config(tmp_path, demo_orthanc, xnat)
        jobstore = tmp_path / "jobs.sqlite"
        ids = []
        for name, text in JOBS.items():
            queryfile = write_queryfile(tmp_path, text, name=f"{name}.csv")
            assert 0 == main(["submit", str(queryfile), "--push", "--config", str(config)])
        with JobStore(jobstore, read_only=True) as store:
            ids = sorted(job.id for job in store.jobs())
        first = ServiceProcess(config, env=env, log_path=tmp_path / "first.log").start()
        try:
            first.wait_ready()
            _wait_for_some_work(jobstore, xnat, first)
        finally:
            first.kill()  # SIGKILL, the de-identify/push children too
        killed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        complete_before = _series_complete(jobstore)
        pushed_before = len(xnat.sessions("PROJ"))
        with JobStore(jobstore, read_only=True) as store:
            states_before = [job.state for job in store.jobs()]
        with ServiceProcess(config, env=env, log_path=tmp_path / "second.log") as second:
            second.wait_ready()
            done = wait_for_jobs(jobstore, ids, {JobState.DONE, JobState.FAILED}, service=second)
        sessions = {s.label: s.file_count for s in xnat.sessions("PROJ")}
        imports = [r for r in xnat.request_log if "services/import" in r.path and r.status < 300]
    assert [JobState.DONE] * 3 == [job.state for job in done], [job.detail for job in done]
    assert complete_before, "the kill came before any series was complete"
    assert pushed_before < 3, "the kill came after every session was pushed"
    assert JobState.RUNNING in states_before
    assert [] == [uid for uid in _retrieving_after(jobstore, killed_at) if uid in complete_before]
    assert {"K_SESS", "B_SESS", "S_SESS"} == set(sessions)
    assert 13 == sessions["K_SESS"]
    assert 23 == sessions["B_SESS"]
    assert len(imports) == len(sessions)  # each session pushed once


def _wait_for_some_work(jobstore: Path, xnat: XnatEmulator, service: ServiceProcess) -> None:
    """Until the first session is on XNAT, or failing that, a series is COMPLETE."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if xnat.sessions("PROJ"):
            return
        if service.exited():
            raise AssertionError(service.log_text()[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"no session pushed in 60 s\n{service.log_text()[-3000:]}")
