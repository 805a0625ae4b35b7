"""Notifications when a job ends, sent to real local sinks.

- The webhook sink is an ``http.server`` on 127.0.0.1 (port 0) in a thread, answering a
  scripted list of statuses, then 200.
- The SMTP sink is aiosmtpd with STARTTLS (a certificate from :func:`make_pki`, trusted by
  the client through ``SSL_CERT_FILE``) and AUTH.

The summaries come from a real job in a job store whose query file holds a patient ID and
name: neither may appear in anything sent or logged.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from structlog.testing import capture_logs

from pacsman import __version__
from pacsman.config.serve import EmailNotify, NotifyConfig
from pacsman.errors import InputError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobOptions, JobState
from pacsman.service.notify import JobNotifier, JobSummary
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.tls import Pki, make_pki

PATIENT_ID = "PHI-4711-XY"
PATIENT_NAME = "DOE^JANE"
QUERY_FILE = f"PatientID,PatientName,StudyDate\n{PATIENT_ID},{PATIENT_NAME},20240101\n".encode()
COUNTS = {"rows": 1, "rows_done": 1, "series": 4, "series_done": 4, "instances": 812}
FAST = {"retry_initial": 0.01, "retry_cap": 0.05}


@pytest.fixture
def summary(tmp_path: Path) -> JobSummary:
    """Job 1, 'ct-cohort', DONE on head1, from a real job store."""
    with JobStore(tmp_path / "jobs.sqlite") as store:
        job = store.add_job(
            name="ct-cohort",
            queryfile_name="ct-cohort.csv",
            content=QUERY_FILE,
            options=JobOptions(save=True, anonymize=True, push="xnat"),
        )
        store.claim_job("head1")
        store.settle_job(job.id, JobState.DONE, "every row done")
        return JobSummary.from_job(store.job(job.id), node="head1", counts=COUNTS)


def _no_phi(*texts: str) -> None:
    for text in texts:
        assert PATIENT_ID not in text
        assert "DOE" not in text.upper()


# -- the webhook ----------------------------------------------------------------------------


@dataclass
class Hook:
    """The webhook sink: what it answers, and what it received."""

    url: str
    answers: list[int]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(url="", answers=[])
    state.release.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers.items()), body))
            state.release.wait(30)
            status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            if status in (429, 503):
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/pacsman?token=s3cret"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_webhook_retries_until_accepted(hook: Hook, summary: JobSummary) -> None:
    """503, 503, then 200: three POSTs of one JSON summary; two failures logged, one send."""
    hook.answers = [503, 503]
    notifier = JobNotifier(NotifyConfig(webhook=hook.url, webhook_attempts=5), **FAST)
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(20)
    assert len(hook.received) == 3
    assert len({body for _, body in hook.received}) == 1
    headers, body = hook.received[-1]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"pacsman/{__version__}"
    sent = json.loads(body)
    assert {k: sent[k] for k in ("event", "job_id", "name", "state", "node", "counts")} == {
        "event": "job_ended",
        "job_id": summary.job_id,
        "name": "ct-cohort",
        "state": "DONE",
        "node": "head1",
        "counts": COUNTS,
    }
    assert sent["detail"] == "every row done"
    assert all(sent[k] for k in ("submitted_at", "started_at", "finished_at"))
    failed = _events(logs, "notification_failed")
    assert [(e["status"], e["attempt"], e["will_retry"]) for e in failed] == [
        (503, 1, True),
        (503, 2, True),
    ]
    assert all(e["url"] == hook.url.split("?")[0] for e in failed)  # no query: no token
    assert [e["attempt"] for e in _events(logs, "notification_sent")] == [3]
    _no_phi(body.decode(), json.dumps(logs, default=str))
    assert "s3cret" not in json.dumps(logs, default=str)


def test_webhook_429_is_retried(hook: Hook, summary: JobSummary) -> None:
    """Too Many Requests: try again (after its Retry-After)."""
    hook.answers = [429]
    notifier = JobNotifier(NotifyConfig(webhook=hook.url), **FAST)
    notifier.job_ended(summary)
    assert notifier.close(20)
    assert len(hook.received) == 2


def test_webhook_400_is_not_retried(hook: Hook, summary: JobSummary) -> None:
    """A 4xx (other than 408/429) would be answered the same again: one POST, one failure."""
    hook.answers = [400] * 5
    notifier = JobNotifier(NotifyConfig(webhook=hook.url, webhook_attempts=5), **FAST)
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(20)
    assert len(hook.received) == 1
    failed = _events(logs, "notification_failed")
    assert [(e["status"], e["will_retry"], e["channel"]) for e in failed] == [
        (400, False, "webhook")
    ]
    assert _events(logs, "notification_sent") == []


def test_job_ended_returns_at_once_and_close_gives_up(hook: Hook, summary: JobSummary) -> None:
    """A receiver that does not answer holds neither job_ended nor the drain beyond its
    deadline; what is pending is reported as abandoned."""
    hook.release.clear()
    notifier = JobNotifier(NotifyConfig(webhook=hook.url), **FAST)
    started = time.monotonic()
    notifier.job_ended(summary)
    assert time.monotonic() - started < 0.5
    wait_for(lambda: len(hook.received) == 1, timeout=10, what="the webhook POST")
    with capture_logs() as logs:
        started = time.monotonic()
        assert not notifier.close(0.3)
        assert time.monotonic() - started < 2.0
    assert [e["event"] for e in logs] == ["notifications_abandoned"]


def test_no_receiver_is_retried_then_logged(summary: JobSummary) -> None:
    """Connection refused on every try: each logged, none sent, close still returns."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    notifier = JobNotifier(NotifyConfig(webhook=url, webhook_attempts=3), **FAST)
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(20)
    failed = _events(logs, "notification_failed")
    assert [(e["attempt"], e["will_retry"], e["status"]) for e in failed] == [
        (1, True, None),
        (2, True, None),
        (3, False, None),
    ]


# -- e-mail ---------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """The SMTP sink: its port, the messages it accepted, the logins it saw."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.box.messages.append(message)
        self.box.tls.append(session.ssl is not None)
        return "250 OK"


def _authenticator(box: Mailbox) -> Any:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"pacsman",
            b"s3cret-pw",
        )
        login = data.login.decode() if isinstance(data, LoginPassword) else "?"
        box.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    return authenticate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The sink's certificate and the CA the client trusts (made once: RSA keys are slow)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _start_mailbox(pki: Pki, *, starttls: bool) -> tuple[Controller, Mailbox]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert("peer"), pki.key("peer"))
    for _ in range(5):  # the port was free a moment ago; another test may take it
        box = Mailbox(port=free_port())
        controller = Controller(
            _Handler(box),
            hostname="127.0.0.1",
            port=box.port,
            tls_context=context if starttls else None,
            require_starttls=starttls,
            authenticator=_authenticator(box),
            auth_require_tls=starttls,
        )
        try:
            controller.start()
        except OSError:
            continue
        return controller, box
    raise RuntimeError("no free port for the SMTP sink")


@pytest.fixture
def mailbox(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 that requires STARTTLS and accepts pacsman:s3cret-pw."""
    controller, box = _start_mailbox(pki, starttls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    try:
        yield box
    finally:
        controller.stop()


def _email(port: int, **extra: Any) -> NotifyConfig:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "to": ("data-manager@hospital.example", "physicist@hospital.example"),
        "sender": "pacsman@hospital.example",
        **extra,
    }
    return NotifyConfig(email=EmailNotify(**settings))


ENV_LOGIN = {"PACSMAN_SMTP_USER": "pacsman", "PACSMAN_SMTP_PASSWORD": "s3cret-pw"}


def test_email_arrives_over_starttls_with_auth(mailbox: Mailbox, summary: JobSummary) -> None:
    """The message arrives over TLS after AUTH: the subject names job, state and node; the
    body lists the counts; no patient data, no password in logs."""
    notifier = JobNotifier(_email(mailbox.port), environ=ENV_LOGIN, **FAST)
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(30)
    assert (mailbox.logins, mailbox.tls) == ([("pacsman", True)], [True])
    (message,) = mailbox.messages
    assert message["Subject"] == f"pacsman job {summary.job_id} (ct-cohort) DONE on head1"
    assert message["To"] == "data-manager@hospital.example, physicist@hospital.example"
    body = message.get_content()
    assert "every row done" in body
    for key, value in COUNTS.items():
        assert any(line.split() == [key, str(value)] for line in body.splitlines()), key
    assert [e["channel"] for e in _events(logs, "notification_sent")] == ["email"]
    _no_phi(message.as_string(), json.dumps(logs, default=str))
    assert "s3cret-pw" not in json.dumps(logs, default=str)


def test_email_credentials_file(mailbox: Mailbox, summary: JobSummary, tmp_path: Path) -> None:
    """user:password from a 0600 file (as LoadCredential= would give it) when the
    environment has none."""
    secret = tmp_path / "smtp-credentials"
    secret.write_text("pacsman:s3cret-pw\n")
    secret.chmod(0o600)
    notifier = JobNotifier(_email(mailbox.port, credentials_file=secret), environ={}, **FAST)
    notifier.job_ended(summary)
    assert notifier.close(30)
    assert (mailbox.logins, len(mailbox.messages)) == ([("pacsman", True)], 1)


def test_email_wrong_password_is_not_retried(mailbox: Mailbox, summary: JobSummary) -> None:
    """535 from the server: logged once with its status, nothing sent, no retry."""
    env = {**ENV_LOGIN, "PACSMAN_SMTP_PASSWORD": "wrong"}
    notifier = JobNotifier(_email(mailbox.port), environ=env, **FAST)
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(30)
    failed = _events(logs, "notification_failed")
    assert [(e["status"], e["will_retry"], e["server"]) for e in failed] == [
        (535, False, f"127.0.0.1:{mailbox.port}")
    ]
    assert mailbox.messages == []
    assert "wrong" not in json.dumps(logs, default=str)


def test_no_password_without_starttls_offered(pki: Pki, summary: JobSummary) -> None:
    """A server that offers no STARTTLS never sees the login: the send is refused."""
    controller, box = _start_mailbox(pki, starttls=False)
    try:
        notifier = JobNotifier(_email(box.port), environ=ENV_LOGIN, **FAST)
        with capture_logs() as logs:
            notifier.job_ended(summary)
            assert notifier.close(30)
    finally:
        controller.stop()
    (failed,) = _events(logs, "notification_failed")
    assert "offers no STARTTLS" in failed["reason"]
    assert (box.logins, box.messages) == ([], [])


def test_no_password_in_clear_is_refused_up_front() -> None:
    """starttls: false with a login is refused when the notifier is made."""
    with pytest.raises(InputError, match=r"starttls is false, so the SMTP password .* in clear"):
        JobNotifier(_email(2525, starttls=False), environ=ENV_LOGIN)


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    """The error names the file and the fix."""
    secret = tmp_path / "smtp-credentials"
    secret.write_text("pacsman:s3cret-pw\n")
    secret.chmod(0o644)
    where, fix = re.escape(str(secret)), re.escape(f"'chmod 600 {secret}'")
    with pytest.raises(
        InputError, match=rf"{where}: mode is -rw-r--r--, readable by others; run {fix}$"
    ):
        JobNotifier(_email(2525, credentials_file=secret), environ={})


def test_half_an_environment_login_is_refused() -> None:
    """PACSMAN_SMTP_USER without PACSMAN_SMTP_PASSWORD: the message names the missing one."""
    with pytest.raises(InputError, match="PACSMAN_SMTP_PASSWORD is not set"):
        JobNotifier(_email(2525), environ={"PACSMAN_SMTP_USER": "pacsman"})


def test_summary_counts_are_plain_ints(summary: JobSummary) -> None:
    """Counts are names to ints: no text (no room for a patient ID) and no bools."""
    with pytest.raises(ValueError, match=r"counts\['rows'\] = 'PHI'"):
        JobSummary(job_id=1, name="x", state=JobState.DONE, node="n", counts={"rows": "PHI"})  # type: ignore[dict-item]
    assert json.loads(summary.to_json())["counts"] == COUNTS


def test_nothing_configured_is_a_no_op(summary: JobSummary) -> None:
    """No webhook, no e-mail: no thread, nothing logged, close returns at once."""
    notifier = JobNotifier(NotifyConfig())
    with capture_logs() as logs:
        notifier.job_ended(summary)
        assert notifier.close(0)
    assert (notifier.enabled, notifier.describe(), logs) == (False, "no notifications", [])
