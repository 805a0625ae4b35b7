"""Fail fast (issue 12, item 6): with ``--push xnat`` the run checks XNAT before it sends
anything to the PACS, and a PACS or an XNAT that takes the connection but does not answer is
announced within 10 s.

The runs go through the real command line against the fake PACS (which records every
request it gets, so "no C-MOVE" is counted there) and the XNAT emulator driven by the real
``xnat`` client and ``requests``.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import PacsNode, Timeouts, load_config
from pacsman.config.push import XnatConfig
from pacsman.dicom.client import DicomPeer, echo
from pacsman.errors import EXIT_BAD_INPUT, EXIT_FATAL, AssociationRejected, FatalError
from pacsman.pipeline.check import check_push_target
from pacsman.push import Credentials, push_all
from pacsman.push._xnat_connection import waiting_for
from pacsman.push.models import SessionUpload
from pacsman.push.xnat import XnatTarget, check_xnat
from pacsman.queryfile import load_queryfile
from pacsman.testing.fakepacs import FakePacs
from pacsman.testing.net import free_port
from pacsman.testing.xnat_emulator import XnatEmulator
from pacsman.throttle import RetryPolicy
from tests.helpers import write_config, write_queryfile

CREDENTIALS = Credentials("admin", "secret", "test")
#: What the issue allows a wrong URL, a refused login or a missing password to take.
FAST_ENOUGH = 30.0


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """The XNAT emulator with project P1."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as running:
        yield running


@pytest.fixture
def pacs(fake_pacs: Callable[..., FakePacs]) -> FakePacs:
    """The fake PACS with the demo studies; it knows pacsman as a move destination."""
    return fake_pacs(move_destinations={"PACSMAN": ("127.0.0.1", free_port())})


@pytest.fixture
def xnat_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """XNAT credentials in the environment; key and mapping table under tmp_path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def pull(
    tmp_path: Path, pacs: FakePacs, url: str, *, project: str = "P1", query: str = ""
) -> tuple[int, float]:
    """``pacsman -q q.csv --save --push xnat``; returns the exit code and the seconds taken."""
    config = write_config(
        tmp_path,
        port=pacs.port,
        called_ae_title=pacs.ae_title,
        node="fake",
        local_port=free_port(),
        extra=f"xnat:\n  url: {url}\n  project: {project}\n",
    )
    queryfile = write_queryfile(tmp_path, query or "PatientID\nDEMO001\nDEMO002\n")
    started = time.monotonic()
    status = main(["-q", str(queryfile), "--save", "--push", "xnat", "--config", str(config)])
    return status, time.monotonic() - started


def assert_nothing_sent(pacs: FakePacs) -> None:
    """The PACS got no request at all: no C-MOVE, and not even a C-FIND."""
    assert [] == [call for call in pacs.calls if call.startswith("C-MOVE")]
    assert [] == pacs.calls


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


# -- the run's pre-flight, through the command line ---------------------------------------------


def test_nothing_listening_at_the_xnat_url(
    tmp_path: Path, pacs: FakePacs, xnat_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong port: exit 3 at once, naming the URL and the fix; the PACS heard nothing."""
    url = f"http://127.0.0.1:{free_port()}"
    status, seconds = pull(tmp_path, pacs, url)
    err = capsys.readouterr().err
    assert (EXIT_FATAL, True) == (status, seconds < FAST_ENOUGH)
    assert url in err
    assert "nothing is listening there (connection refused)" in err
    assert "xnat.url has the wrong host or port" in err
    assert_nothing_sent(pacs)


def test_a_404_on_the_api_is_a_wrong_url(
    tmp_path: Path,
    pacs: FakePacs,
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """XNAT is there but not under /xnat: 404 is permanent, one request, no retries."""
    status, seconds = pull(tmp_path, pacs, f"{emulator.url}/xnat")
    err = capsys.readouterr().err
    assert (EXIT_FATAL, True) == (status, seconds < FAST_ENOUGH)
    assert f"{emulator.url}/xnat" in err
    assert "XNAT answered 404" in err
    assert "no XNAT REST API at this URL; xnat.url must be" in err
    assert 1 == len(emulator.request_log)
    assert_nothing_sent(pacs)


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "XNAT refused the login"), (403, "the XNAT user may not do this")],
)
def test_a_refused_login_is_permanent(
    tmp_path: Path,
    pacs: FakePacs,
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: int,
    words: str,
) -> None:
    """401 (a wrong password) and 403 (an account without the REST API): exit 3 after one
    request, with XNAT's words and the fix; the password is never shown."""
    if status == 401:
        xnat_env.setenv("XNAT_PASS", "hunter2")
    else:
        emulator.faults.route_status = {"/data/auth": 403}
    code, seconds = pull(tmp_path, pacs, emulator.url)
    err = capsys.readouterr().err
    assert (EXIT_FATAL, True) == (code, seconds < FAST_ENOUGH)
    assert f"XNAT answered {status}" in err
    assert words in err
    assert emulator.url in err
    assert "hunter2" not in err
    assert [status] == [r.status for r in emulator.request_log]
    assert_nothing_sent(pacs)


def test_an_unset_xnat_pass_is_noticed_first(
    tmp_path: Path,
    pacs: FakePacs,
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """XNAT_USER without XNAT_PASS: exit 2 before any request to XNAT or the PACS."""
    xnat_env.delenv("XNAT_PASS")
    status, seconds = pull(tmp_path, pacs, emulator.url)
    err = capsys.readouterr().err
    assert (EXIT_BAD_INPUT, True) == (status, seconds < FAST_ENOUGH)
    assert "XNAT_USER and XNAT_PASS must be set together; XNAT_PASS is not set" in err
    assert [] == emulator.request_log
    assert_nothing_sent(pacs)


def test_a_project_xnat_does_not_have(
    tmp_path: Path,
    pacs: FakePacs,
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """xnat.project missing on XNAT (or hidden from the user): exit 3 before any C-FIND."""
    status, _ = pull(tmp_path, pacs, emulator.url, project="NOPE")
    err = capsys.readouterr().err
    assert EXIT_FATAL == status
    assert "project 'NOPE' does not exist on" in err
    assert "create it in XNAT, give the user access to it, or fix xnat.project" in err
    assert_nothing_sent(pacs)


def test_query_file_labels_taken_in_xnat_stop_the_run(
    tmp_path: Path,
    pacs: FakePacs,
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A session label of the query file that XNAT holds under another subject: exit 2,
    located at its line; nothing is retrieved."""
    auth = ("admin", "secret")
    subject = f"{emulator.url}/data/projects/P1/subjects/OTHER"
    requests.put(subject, params={"xsiType": "xnat:subjectData"}, auth=auth, timeout=10)
    experiment = f"{subject}/experiments/SESS01"
    requests.put(experiment, params={"xsiType": "xnat:mrSessionData"}, auth=auth, timeout=10)
    query = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,SUBJ02,SESS02\n"
    status, _ = pull(tmp_path, pacs, emulator.url, query=query)
    err = capsys.readouterr().err
    assert EXIT_BAD_INPUT == status
    assert "1 XNAT label problem(s) in project 'P1'" in err
    assert "q.csv:2: session label 'SESS01' is already used in project 'P1' by subject" in err
    assert_nothing_sent(pacs)


def test_the_pre_flight_passes_when_xnat_is_ready(
    tmp_path: Path, pacs: FakePacs, emulator: XnatEmulator, xnat_env: pytest.MonkeyPatch
) -> None:
    """With XNAT ready the pre-flight logs in, finds the project, checks the labels the query
    file gives against the project, and lets the run go on."""
    config = write_config(
        tmp_path,
        port=pacs.port,
        called_ae_title=pacs.ae_title,
        node="fake",
        extra=f"xnat:\n  url: {emulator.url}\n  project: P1\n",
    )
    queryfile = write_queryfile(tmp_path, "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\n")
    with capture_logs() as logs:
        check_push_target(load_config(config), "xnat", load_queryfile(queryfile))
    assert ["xnat_preflight_ok"] == [e["event"] for e in logs if e["log_level"] == "info"]
    assert [
        "GET /data/auth",
        "GET /data/projects/P1",
        "GET /data/projects/P1/experiments",
        "GET /data/projects/P1/subjects",
    ] == [f"{r.method} {r.path}" for r in emulator.request_log]


# -- the push's own login: 404 is permanent there too -------------------------------------------


def test_the_push_gives_up_at_once_on_a_404_login(tmp_path: Path, emulator: XnatEmulator) -> None:
    """The push queue (50 attempts) stops at the first 404 of the login: no retries."""
    study = tmp_path / "study"
    study.mkdir()
    upload = SessionUpload("P1", "S1", "E1", study, "1.2.3", 1, {"1": 1})
    patient = RetryPolicy(max_attempts=50, initial=0.01, cap=0.01, jitter=0)
    started = time.monotonic()
    with (
        XnatTarget(XnatConfig(url=f"{emulator.url}/xnat"), CREDENTIALS) as target,
        pytest.raises(FatalError, match="XNAT answered 404"),
    ):
        push_all([upload], target, retry=patient)
    assert time.monotonic() - started < FAST_ENOUGH
    assert 1 == len(emulator.request_log)


# -- a peer that takes the connection and never answers -----------------------------------------


def test_an_xnat_that_never_answers_is_announced_then_given_up() -> None:
    """The wait is announced within 10 s; at the timeout the pre-flight ends with the fix."""
    with silent_port() as port, capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(FatalError, match=r"did not answer GET /data/auth within 7 s"):
            check_xnat(XnatConfig(url=f"http://127.0.0.1:{port}"), CREDENTIALS, "P1", timeout=7)
        seconds = time.monotonic() - started
    notices = [e for e in logs if e["event"] == "xnat_not_answering"]
    assert 1 == len(notices)
    assert (5, 7) == (notices[0]["waited_s"], notices[0]["timeout_s"])
    assert "has not answered GET /data/auth after 5 s; waiting up to 7 s" in notices[0]["message"]
    assert 7 <= seconds < 10


def test_the_user_is_kept_informed_until_the_answer() -> None:
    """One notice per interval while waiting, none once the block has ended."""
    with capture_logs() as logs:
        with waiting_for("http://xnat", "the login", 5.0, first=0.05, every=0.05):
            time.sleep(0.3)  # the thing waited for: XNAT's answer
        told = len(logs)
        time.sleep(0.15)
    assert told >= 3
    assert told == len(logs)
    assert {"xnat_not_answering"} == {e["event"] for e in logs}


def test_a_pacs_that_never_answers_the_association_request() -> None:
    """A C-ECHO to a port that takes the connection and stays silent: said within 10 s, then
    the association fails at the ACSE timeout."""
    with silent_port() as port, capture_logs() as logs:
        timeouts = Timeouts(connect=1.0, acse=6.0)
        node = PacsNode("silent", "127.0.0.1", port, "SILENT", timeouts=timeouts)
        with pytest.raises(
            AssociationRejected, match="did not answer the association request within 6 s"
        ):
            echo(DicomPeer(node, "PACSMAN"))
    notices = [e for e in logs if e["event"] == "association_not_answered"]
    assert 1 == len(notices)
    assert 5 == notices[0]["waited_s"]
    assert (
        "took the connection but has not answered the association request"
        in (notices[0]["message"])
    )
    assert "pacs.silent.timeouts.acse" in notices[0]["message"]
