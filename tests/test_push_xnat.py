"""The XNAT push: the real ``xnat`` client against the emulator, every fault switch included.

Each fault test ends with the session present exactly once, with every file, and checks in
the emulator's request log how many imports were actually sent.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import xnat
from structlog.testing import capture_logs
from xnat.exceptions import XNATUploadError

from pacsman.config.push import XnatConfig
from pacsman.errors import FatalError, ItemFailed
from pacsman.push import Credentials, PushOutcome, SessionUpload, push_all
from pacsman.push.models import dicom_files
from pacsman.push.xnat import XnatTarget
from pacsman.push.zipper import session_zip
from pacsman.testing.synthetic import SeriesSpec, StudySpec, write_study
from pacsman.testing.xnat_emulator import XnatEmulator
from pacsman.throttle import RetryPolicy

CREDENTIALS = Credentials("admin", "secret", "test")
FAST = RetryPolicy(max_attempts=20, initial=0.01, cap=0.05, jitter=0)
MakeUpload = Callable[..., SessionUpload]


def wait_for(condition: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


def study_dir(root: Path, name: str, series: tuple[int, ...] = (3, 2)) -> Path:
    """Write a small synthetic MR study (``series`` = instances per series) under ``root``."""
    spec = StudySpec(
        patient_id=f"PID-{name}",
        patient_name=f"Patient^{name}",
        study_date="20200101",
        accession_number=f"ACC{name}",
        study_description="push test",
        series=tuple(
            SeriesSpec(
                series_number=i + 1,
                series_description=f"S{i + 1}",
                n_instances=n,
                rows=8,
                columns=8,
            )
            for i, n in enumerate(series)
        ),
    )
    write_study(spec, root / name)
    return root / name / spec.study_instance_uid


@pytest.fixture
def make_upload(tmp_path: Path) -> MakeUpload:
    """Factory: a study on disk described as a SessionUpload for project P1."""

    def build(
        subject: str = "SUBJ01", session: str = "SESS01", *, name: str | None = None, **kw: Any
    ) -> SessionUpload:
        directory = study_dir(tmp_path / "studies", name or session, **kw)
        return SessionUpload.from_directory(
            directory, project="P1", subject=subject, session=session
        )

    return build


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """A running emulator with project P1."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as running:
        yield running


@pytest.fixture
def target(emulator: XnatEmulator) -> Iterator[XnatTarget]:
    """An XNAT target on the emulator (short import timeout, so latency tests stay short)."""
    config = XnatConfig(url=emulator.url, import_timeout=5.0)
    with XnatTarget(config, CREDENTIALS) as opened:
        yield opened


def imports(emulator: XnatEmulator, session: str | None = None) -> list[int]:
    """Statuses of the import requests the emulator answered (0 = connection dropped)."""
    return [
        r.status
        for r in emulator.request_log
        if r.path == "/data/services/import"
        and (session is None or f"session={session}" in r.query)
    ]


def assert_complete(emulator: XnatEmulator, upload: SessionUpload) -> None:
    """The session exists exactly once, with the upload's study and every file per scan."""
    found = [s for s in emulator.sessions("P1") if s.label == upload.session]
    assert 1 == len(found)
    assert (upload.subject, upload.study_instance_uid) == (found[0].subject, found[0].uid)
    assert dict(upload.expected_scans) == dict(found[0].scan_file_counts)


def push(target: XnatTarget, *uploads: SessionUpload, **options: Any) -> list[PushOutcome]:
    """push_all with the fast retry policy."""
    return push_all(list(uploads), target, retry=options.pop("retry", FAST), **options)


# -- the happy path -------------------------------------------------------------------------


def test_push_verifies_and_a_second_push_sends_nothing(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """A push imports one DICOM zip into /archive and reads the file counts back; pushing the
    same session again finds it complete and sends nothing."""
    upload = make_upload()
    first = push(target, upload)
    assert [("DONE", 5)] == [(o.state, o.files_on_target) for o in first]
    assert first[0].uri == "/data/projects/P1/subjects/SUBJ01/experiments/SESS01"
    second = push(target, upload)
    assert ["DONE"] == [o.state for o in second]
    assert "nothing sent" in second[0].detail
    assert [200] == imports(emulator)
    query = next(r.query for r in emulator.request_log if r.path == "/data/services/import")
    assert "import-handler=DICOM-zip" in query
    assert "dest=/archive" in query
    assert "overwrite=none" in query
    assert_complete(emulator, upload)


def test_several_sessions_two_at_a_time_with_an_interval(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """max_concurrent=2 and a minimum interval: every session arrives; on_done sees each."""
    uploads = [make_upload(f"SUBJ0{i}", f"SESS0{i}") for i in range(1, 5)]
    seen: list[str] = []
    started = time.monotonic()
    outcomes = push(
        target, *uploads, max_concurrent=2, interval=0.1, on_done=lambda o: seen.append(o.state)
    )
    assert ["DONE"] * 4 == [o.state for o in outcomes]
    assert ["DONE"] * 4 == seen
    assert time.monotonic() - started >= 0.3  # three intervals between four starts
    for upload in uploads:
        assert_complete(emulator, upload)


def test_prearchive_destination(emulator: XnatEmulator, make_upload: MakeUpload) -> None:
    """destination /prearchive: the session is verified in the prearchive, not archived, and
    a second push finds it there."""
    config = XnatConfig(url=emulator.url, destination="/prearchive")
    upload = make_upload()
    with XnatTarget(config, CREDENTIALS) as prearchive:
        first = push(prearchive, upload)
        second = push(prearchive, upload)
    assert first[0].uri is not None
    assert first[0].uri.startswith("/data/prearchive/projects/P1/")
    assert ("DONE", "DONE") == (first[0].state, second[0].state)
    assert [("READY", upload.study_instance_uid)] == [
        (p.status, p.tag) for p in emulator.prearchive()
    ]
    assert [200] == imports(emulator)
    assert [] == emulator.sessions()


# -- fault switches -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_before_the_import_is_retried(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload, status: int
) -> None:
    """status_on_import answers 5xx without importing (twice): the third import lands."""
    emulator.faults.update({"status_on_import": status, "status_on_import_count": 2})
    upload = make_upload()
    outcomes = push(target, upload)
    assert ("DONE", 3) == (outcomes[0].state, outcomes[0].attempts)
    assert [status, status, 200] == imports(emulator)
    assert_complete(emulator, upload)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_after_the_import_is_not_sent_again(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload, status: int
) -> None:
    """accept_then_fail: XNAT archived the session but the proxy answered 502/504; the retry
    finds it complete and sends nothing more."""
    emulator.faults.accept_then_fail, emulator.faults.accept_then_fail_status = 1, status
    upload = make_upload()
    outcomes = push(target, upload)
    assert ("DONE", 2) == (outcomes[0].state, outcomes[0].attempts)
    assert "nothing sent" in outcomes[0].detail
    assert [status] == imports(emulator)
    assert_complete(emulator, upload)


def test_connection_reset_after_the_import_is_not_sent_again(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """reset_after_import: the socket drops after the import was applied; one import only."""
    emulator.faults.reset_after_import = 1
    upload = make_upload()
    outcomes = push(target, upload)
    assert ("DONE", 2) == (outcomes[0].state, outcomes[0].attempts)
    assert [0] == imports(emulator)
    assert_complete(emulator, upload)


def test_zero_file_success_is_detected_and_resent(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """zero_file_success: XNAT says 200 but holds 0 files; the check after the import catches
    it, the retry merges the files into the same session."""
    emulator.faults.zero_file_success = 1
    upload = make_upload()
    with capture_logs() as logs:
        outcomes = push(target, upload)
    assert ("DONE", 2) == (outcomes[0].state, outcomes[0].attempts)
    assert [200, 200] == imports(emulator)
    retried = [e for e in logs if e["event"] == "retrying"]
    assert "holds 0 of 5 file(s)" in retried[0]["reason"]
    assert_complete(emulator, upload)


def test_slow_answers_and_an_import_that_times_out_but_succeeds(
    emulator: XnatEmulator, make_upload: MakeUpload
) -> None:
    """latency slows every request; an import slower than import_timeout times out client
    side, XNAT still applies it, and the next attempt finds it instead of sending again."""
    emulator.faults.latency = 0.02
    emulator.faults.route_latency = {"/data/services/import": 0.6}
    config = XnatConfig(url=emulator.url, import_timeout=0.2)
    patient = RetryPolicy(max_attempts=5, initial=1.0, cap=1.0, jitter=0)
    upload = make_upload()
    with XnatTarget(config, CREDENTIALS) as slow:
        outcomes = push(slow, upload, retry=patient)
    assert ("DONE", 2) == (outcomes[0].state, outcomes[0].attempts)
    assert "nothing sent" in outcomes[0].detail
    assert 1 == len(imports(emulator))
    assert_complete(emulator, upload)


def test_request_budget_503s_until_lifted_and_logout_blocked(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """request_budget: once spent every request is 503 (the push keeps retrying); lifted,
    the push completes.  A budget that blocks the logout does not fail close()."""
    upload = make_upload()
    target.check_labels([upload])  # log in first: the budget is per user
    emulator.faults.request_budget = 1
    patient = RetryPolicy(max_attempts=200, initial=0.02, cap=0.02, jitter=0)
    result: list[PushOutcome] = []
    worker = threading.Thread(target=lambda: result.extend(push(target, upload, retry=patient)))
    worker.start()
    wait_for(lambda: sum(r.status == 503 for r in emulator.request_log) >= 3)
    emulator.faults.request_budget = None
    worker.join(timeout=30)
    assert ["DONE"] == [o.state for o in result]
    assert_complete(emulator, upload)
    emulator.faults.request_budget = 0
    with capture_logs() as logs:
        target.close()
    assert ["xnat_logout_failed"] == [e["event"] for e in logs]
    assert ("DELETE", "/data/JSESSION", 503) == tuple(
        (r.method, r.path, r.status) for r in emulator.request_log
    )[-1]


# -- clashes, labels, credentials -----------------------------------------------------------


def test_session_label_under_another_subject_fails_before_any_import(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """A session label already used by another subject is refused by the label check; the
    push attempt itself refuses it too (if XNAT changed in between)."""
    push(target, make_upload("SUBJ01", "SESS01", name="a"))
    other = make_upload("SUBJ02", "SESS01", name="b")
    outcomes = push(target, other)
    assert "FAILED" == outcomes[0].state
    assert "already used in project 'P1' by subject 'SUBJ01'" in outcomes[0].detail
    with pytest.raises(ItemFailed, match="already belongs to subject 'SUBJ01'"):
        target.push(other)
    assert [200] == imports(emulator)


def test_bad_labels_are_refused_before_any_transfer(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """Invalid characters, one session label for two studies, subject labels differing only
    in case (also against XNAT's subjects): all refused, and no import is ever sent."""
    emulator_session = xnat.connect(emulator.url, user="admin", password="secret", loglevel="ERROR")
    with emulator_session:
        project = emulator_session.projects["P1"]
        emulator_session.classes.SubjectData(parent=project, label="subj09")
    uploads = [
        make_upload("A.B", "SESS01", name="dot"),
        make_upload("SUBJ02", "SESS02", name="twice1"),
        make_upload("SUBJ03", "SESS02", name="twice2"),
        make_upload("Subj04", "SESS04", name="case1"),
        make_upload("SUBJ04", "SESS05", name="case2"),
        make_upload("SUBJ09", "SESS09", name="xnatcase"),
    ]
    outcomes = push(target, *uploads)
    assert ["FAILED"] * 6 == [o.state for o in outcomes]
    details = [o.detail for o in outcomes]
    assert "subject label 'A.B' is not valid; use 1-64 letters" in details[0]
    assert "session label 'SESS02' is given to 2 different studies" in details[1]
    assert "'SUBJ04', 'Subj04' differ only in case" in details[3]
    assert "'SUBJ09', 'subj09' differ only in case" in details[5]
    assert all(d.endswith("nothing was sent") for d in details)
    assert [] == imports(emulator)


def test_another_study_under_the_same_label_fails_unless_overwrite_delete(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """Same subject and label, another StudyInstanceUID: refused by default; replaced with
    xnat.overwrite: delete."""
    push(target, make_upload(name="first", series=(2,)))
    second = make_upload(name="second", series=(3, 1))
    refused = push(target, second)
    assert "another study" in refused[0].detail
    config = XnatConfig(url=emulator.url, overwrite="delete")
    with XnatTarget(config, CREDENTIALS) as replacing:
        replaced = push(replacing, second)
    assert "DONE" == replaced[0].state
    assert_complete(emulator, second)


def test_a_conflict_left_in_the_prearchive_is_cleaned(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """A duplicate DICOM-zip import leaves a CONFLICT prearchive entry (XNAT's behaviour);
    the next push of that session finds it complete and deletes the leftover."""
    upload = make_upload()
    push(target, upload)
    files = dicom_files(upload.directory)
    with (
        session_zip(upload.directory, files) as stream,
        xnat.connect(emulator.url, user="admin", password="secret", loglevel="ERROR") as raw,
        pytest.raises(XNATUploadError, match="Failed to archive"),
    ):
        raw.services.import_(
            data=stream,
            content_type="application/zip",
            project="P1",
            subject="SUBJ01",
            experiment="SESS01",
            import_handler="DICOM-zip",
            destination="/archive",
            overwrite="none",
        )
    assert ["CONFLICT"] == [p.status for p in emulator.prearchive()]
    assert ["DONE"] == [o.state for o in push(target, upload)]
    assert [] == emulator.prearchive()


def test_unknown_project_is_a_label_problem(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """A project XNAT does not have is refused before anything is sent (else it would land
    in the prearchive's Unassigned project)."""
    upload = replace(make_upload(), project="NOPE")
    outcomes = push(target, upload)
    assert "project 'NOPE' does not exist" in outcomes[0].detail
    assert [] == imports(emulator)


def test_wrong_password_is_fatal(emulator: XnatEmulator, make_upload: MakeUpload) -> None:
    """A refused login stops the run (FatalError), naming no password."""
    wrong = Credentials("admin", "hunter2", "test")
    with (
        XnatTarget(XnatConfig(url=emulator.url), wrong) as bad,
        pytest.raises(FatalError, match="refused the login") as caught,
    ):
        push(bad, make_upload())
    assert "hunter2" not in str(caught.value)


def test_an_expired_login_session_means_a_new_login(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload
) -> None:
    """XNAT forgets the login session mid-run (401, as after a restart or a timeout): the
    target logs in again and goes on."""
    push(target, make_upload("SUBJ01", "SESS01", name="a"))
    token = target._connected().jsession  # white box: the cookie XNAT is to forget
    requests.delete(f"{emulator.url}/data/JSESSION", cookies={"JSESSIONID": token}, timeout=10)
    outcomes = push(target, make_upload("SUBJ02", "SESS02", name="b"))
    assert ["DONE"] == [o.state for o in outcomes]
    statuses = [r.status for r in emulator.request_log]
    assert 401 in statuses
    assert 2 == sum(r.path == "/data/services/auth" for r in emulator.request_log)


# -- kill -9 and resume ---------------------------------------------------------------------

_WORKER = """
import json, sys
from pathlib import Path
from pacsman.config.push import XnatConfig
from pacsman.push import Credentials, SessionUpload, push_all
from pacsman.push.xnat import XnatTarget
job = json.loads(sys.argv[1])
uploads = [SessionUpload.from_directory(Path(d), project="P1", subject=s, session=e)
           for d, s, e in job["uploads"]]
with XnatTarget(XnatConfig(url=job["url"]), Credentials("admin", "secret", "test")) as t:
    push_all(uploads, t)
"""


def test_kill_9_during_a_push_then_resume(
    emulator: XnatEmulator, target: XnatTarget, make_upload: MakeUpload, tmp_path: Path
) -> None:
    """A pushing process killed with SIGKILL mid-way, then push_all again: every session is
    present exactly once, complete, and the ones already there are not sent again."""
    uploads = [make_upload(f"SUBJ{i}", f"SESS{i}") for i in range(1, 5)]
    emulator.faults.route_latency = {"/data/services/import": 0.3}
    job = {
        "url": emulator.url,
        "uploads": [[str(u.directory), u.subject, u.session] for u in uploads],
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    errors = (tmp_path / "worker.err").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(job)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        wait_for(lambda: 200 in imports(emulator) or process.poll() is not None, timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        errors.close()
    assert -signal.SIGKILL == process.returncode, (tmp_path / "worker.err").read_text()
    before = len(imports(emulator))
    outcomes = push(target, *uploads)
    assert ["DONE"] * 4 == [o.state for o in outcomes]
    for upload in uploads:
        assert_complete(emulator, upload)
    assert [200] == imports(emulator, "SESS1")
    assert 1 <= before < 4
