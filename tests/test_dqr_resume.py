"""``pacsman dqr`` killed with SIGKILL mid-run, then the same command again: the requests XNAT
holds are followed, nothing settled is asked for again, and every session ends once and
complete (issue 16 A9).

The PACS is a real Orthanc; XNAT is the emulator, served from this test process, so the kill
cannot touch it.  Each study takes the emulator's receiver idle time to build, which is the
window for the kill.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pacsman.dqr import DqrState
from pacsman.jobstore import JobStore
from pacsman.jobstore.dqr import DqrLedger
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import kill_process_group, write_queryfile
from tests.test_dqr_run import PROJECT, _emulator, dqr_config

QUERY = "AccessionNumber\nACC0001\nACC0002\nACC0003\nACC0004\n"
#: Seconds of receiver silence before the emulator builds a session: the kill's window.
IDLE = 0.4
WAIT = 60.0


def _environment(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
    }


def _command(config: Path, queryfile: Path) -> list[str]:
    return [sys.executable, "-m", "pacsman", "dqr", "-q", str(queryfile), "--config", str(config)]


def _stop_mid_run(
    command: list[str],
    env: dict[str, str],
    xnat: XnatEmulator,
    log: Path,
    *,
    settled: int,
    how: signal.Signals,
) -> subprocess.Popen[bytes]:
    """Start the command; once ``settled`` requests have settled at XNAT and another is in
    flight there, send ``how`` (SIGKILL: to its whole process group); return the process."""
    with log.open("wb") as out:
        victim = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + WAIT
        try:
            while time.monotonic() < deadline:
                if victim.poll() is not None:
                    pytest.fail(f"pacsman dqr ended (exit {victim.returncode}) before the signal")
                requests = xnat.dqr_requests()
                done = sum(r["status"] in ("RECEIVED", "FAILED") for r in requests)
                if done >= settled and len(requests) > done:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("no request was in flight at XNAT in time")
        finally:
            if how is signal.SIGKILL:
                kill_process_group(victim)
            else:
                victim.send_signal(how)
                victim.wait(timeout=WAIT)
    return victim


def test_sigterm_then_kill_9_mid_run_then_the_same_command_resumes_each_session_once(
    tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    """SIGTERM while a request is at XNAT: exit 130, resumable; kill -9 of the next run while
    another is: the same command resumes the same run, follows or takes over what XNAT
    holds, and ends with each of the four sessions once, with every file."""
    queryfile = write_queryfile(tmp_path, QUERY)
    env = _environment(tmp_path)
    with _emulator(tmp_path / "xnat", demo_orthanc, dqr_session_idle=IDLE) as xnat:
        demo_orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", xnat.dqr_receiver_port)
        config = dqr_config(tmp_path, demo_orthanc, xnat, max_in_flight=1)
        command = _command(config, queryfile)
        stopped = _stop_mid_run(
            command, env, xnat, tmp_path / "stopped.log", settled=0, how=signal.SIGTERM
        )
        _stop_mid_run(command, env, xnat, tmp_path / "killed.log", settled=2, how=signal.SIGKILL)
        archived = len(xnat.sessions(PROJECT))
        resumed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=WAIT, check=False
        )
        sessions = {s.label: (s.subject, s.file_count) for s in xnat.sessions(PROJECT)}
        asked = Counter(r["studyInstanceUid"] for r in xnat.dqr_requests())
    assert 130 == stopped.returncode
    stopped_log = (tmp_path / "stopped.log").read_text()
    assert "interrupted; run the same command again to resume" in stopped_log
    assert 0 == resumed.returncode, resumed.stderr[-2000:]
    assert "(resumed)" in resumed.stdout
    assert 2 <= archived < 4
    expected = sorted(spec.n_instances for spec in DEMO_STUDIES)
    assert expected == sorted(files for _, files in sessions.values())
    assert 4 == len(sessions)
    assert {str(spec.study_instance_uid) for spec in DEMO_STUDIES} == set(asked)
    assert max(asked.values()) <= 2  # at most the one request the kill left unrecorded
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        (record,) = store.run_records()
        states = {r.state for r in DqrLedger(store).studies(record)}
        interrupted = store._read(
            "SELECT COUNT(*) FROM transitions WHERE kind = 'run' AND state = 'INTERRUPTED'"
        )
    assert {DqrState.DONE} == states
    assert [(1,)] == interrupted
