"""Telling people a job ended: a webhook POST and an e-mail (``serve.notify``).

:class:`JobNotifier` takes a :class:`JobSummary` when a job is DONE, FAILED or CANCELLED and
returns at once; one background thread sends it, so a slow or dead receiver never holds the
scheduler.  :meth:`JobNotifier.close` waits for what is pending, up to a deadline (the drain).

- **Webhook**: the summary as JSON, ``POST``-ed with ``Content-Type: application/json`` and a
  ``User-Agent: pacsman/<version>``, 10 s per attempt, redirects not followed.  Up to
  ``webhook_attempts`` tries with exponential back-off (capped; a ``Retry-After`` in seconds is
  honoured up to the cap) on a connection error, a time-out, 408, 429 or 5xx.  Any other answer
  (4xx, 3xx) is final: trying again would get the same answer.
- **E-mail** (``serve.notify.email``): through SMTP with STARTTLS (the server's certificate is
  checked against the system's CAs, or ``$SSL_CERT_FILE``); up to 3 tries on a connection
  error or a 4xx reply.  The login comes from ``PACSMAN_SMTP_USER`` + ``PACSMAN_SMTP_PASSWORD``,
  else from ``credentials_file`` (``user:password``, mode 0600 or 0400 as ``LoadCredential=``
  makes it), else none (a relay that trusts the host).  A password is never sent over a
  connection without TLS: ``starttls: false`` with a login is refused when the notifier is
  made, and a server that offers no STARTTLS is refused at send time.

Each failed try is logged as ``notification_failed`` with the channel, the URL (scheme, host,
port and path only) or the mail server, the HTTP or SMTP status and the reason; never a body,
a recipient list or a credential.  A summary holds ids, the job's name, states, times and
counts only: no patient data, whatever the query file held.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from urllib.parse import urlsplit

import structlog
import tenacity

from pacsman import __version__
from pacsman.config.serve import EmailNotify, NotifyConfig
from pacsman.errors import InputError
from pacsman.jobstore.jobs import Job, JobState
from pacsman.push.credentials import read_login

__all__ = ["JobNotifier", "JobSummary", "SmtpLogin", "smtp_login"]

_log = structlog.get_logger("pacsman.service.notify")

USER_AGENT = f"pacsman/{__version__}"
_WEBHOOK_TIMEOUT = 10.0
_SMTP_TIMEOUT = 30.0
_EMAIL_ATTEMPTS = 3
_QUEUE_SIZE = 100
_DETAIL_MAX = 500
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class JobSummary:
    """What a notification says about a job: ids, name, state, times and counts, no PHI."""

    job_id: int
    name: str
    state: JobState
    node: str
    submitted_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    #: Counts per stage, e.g. ``{"rows": 10, "series_done": 39, "series_failed": 1}``.
    counts: dict[str, int] = field(default_factory=dict)
    #: The job's one-line outcome (``3 series failed``), as the job store holds it.
    detail: str = ""

    def __post_init__(self) -> None:
        for key, value in self.counts.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"JobSummary.counts[{key!r}] = {value!r}: counts are names to plain ints"
                )
        object.__setattr__(self, "counts", {k: int(v) for k, v in sorted(self.counts.items())})
        object.__setattr__(self, "detail", " ".join(self.detail.split())[:_DETAIL_MAX])

    @classmethod
    def from_job(cls, job: Job, *, node: str, counts: Mapping[str, int]) -> JobSummary:
        """The summary of ``job`` as the store holds it (``node``: who ran it; a settled job
        no longer records its owner)."""
        return cls(
            job_id=job.id,
            name=job.name,
            state=job.state,
            node=node,
            submitted_at=job.submitted_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            counts=dict(counts),
            detail=job.detail,
        )

    def to_json(self) -> str:
        """The webhook's body: ``{"event": "job_ended", "job_id": 12, ..., "counts": {...}}``."""
        data: dict[str, object] = {"event": "job_ended", **asdict(self)}
        data["state"] = self.state.value
        data["pacsman_version"] = __version__
        return json.dumps(data, sort_keys=True)

    def subject(self) -> str:
        """``pacsman job 12 (ct-cohort) DONE on head1``."""
        return f"pacsman job {self.job_id} ({self.name}) {self.state.value} on {self.node}"

    def text(self) -> str:
        """The e-mail's plain-text body."""
        lines = [f"{self.subject()}.", ""]
        times = (
            ("submitted", self.submitted_at),
            ("started", self.started_at),
            ("finished", self.finished_at),
        )
        lines += [f"{label:<10} {value}" for label, value in times if value]
        if self.detail:
            lines += ["", self.detail]
        if self.counts:
            width = max(len(k) for k in self.counts)
            lines += ["", "counts:"] + [f"  {k:<{width}}  {v}" for k, v in self.counts.items()]
        lines += ["", f"'pacsman jobs' or the service's page shows job {self.job_id} in full."]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SmtpLogin:
    """The SMTP user and password; ``source`` says where they came from (safe to log)."""

    user: str
    password: str = field(repr=False)
    source: str


def smtp_login(email: EmailNotify, environ: Mapping[str, str] | None = None) -> SmtpLogin | None:
    """The login for ``email``'s server: the environment, then ``credentials_file``, else None.

    Raises:
        InputError: only one of the two variables is set; the file is unreadable, readable
            by others or malformed; or ``starttls`` is off, so the password would cross the
            network in clear.  Messages never hold the password.
    """
    env = os.environ if environ is None else environ
    user, password = env.get("PACSMAN_SMTP_USER", ""), env.get("PACSMAN_SMTP_PASSWORD", "")
    login: SmtpLogin | None = None
    if user and password:
        login = SmtpLogin(user, password, "the environment (PACSMAN_SMTP_USER/PASSWORD)")
    elif user or password:
        missing = "PACSMAN_SMTP_PASSWORD" if user else "PACSMAN_SMTP_USER"
        raise InputError(
            f"PACSMAN_SMTP_USER and PACSMAN_SMTP_PASSWORD go together; {missing} is not set: "
            "set it, or unset the other to use serve.notify.email.credentials_file"
        )
    elif email.credentials_file is not None:
        login = _login_from_file(email.credentials_file)
    if login is not None and not email.starttls:
        raise InputError(
            f"serve.notify.email: starttls is false, so the SMTP password ({login.source}) "
            f"would cross the network to {email.host}:{email.port} in clear; set starttls: "
            "true (the server must offer STARTTLS), or remove the login for a trusted relay"
        )
    return login


def _login_from_file(path: Path) -> SmtpLogin:
    key = "serve.notify.email.credentials_file"
    user, password = read_login(path, key=key)
    return SmtpLogin(user, password, f"{key} {path}")


@dataclass(frozen=True)
class _Outcome:
    """One try: sent, or why not, and whether another try may do better."""

    ok: bool
    retry: bool = False
    status: int | None = None
    reason: str = ""
    retry_after: float = 0.0


def _safe_url(url: str) -> str:
    """``scheme://host[:port]/path``: no credentials, query or fragment (they may hold one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer: urllib would re-send a POST as a GET without its body."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: the exponential back-off applies
        return 0.0


def _post(url: str, body: bytes, timeout: float) -> _Outcome:
    """One POST of ``body`` to ``url``."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return _Outcome(ok=True, status=int(response.status))
    except urllib.error.HTTPError as exc:
        with exc:
            code = int(exc.code)
            retry = code in _RETRY_STATUSES or code >= 500
            after = _retry_after(exc.headers.get("Retry-After"))
            return _Outcome(False, retry, code, f"answered {code} {exc.reason}", after)
    except urllib.error.URLError as exc:  # no connection; a certificate that does not verify
        final = isinstance(exc.reason, ssl.SSLCertVerificationError)
        return _Outcome(False, retry=not final, reason=str(exc.reason))
    except (OSError, http.client.HTTPException) as exc:  # a time-out reading; a bad answer
        return _Outcome(False, retry=True, reason=str(exc) or type(exc).__name__)


def _email_message(email: EmailNotify, summary: JobSummary) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = summary.subject()
    message["From"] = email.sender
    message["To"] = ", ".join(email.to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("pacsman", domain=email.sender.rpartition("@")[2] or None)
    message["User-Agent"] = USER_AGENT
    message.set_content(summary.text())
    return message


def _smtp_send(email: EmailNotify, login: SmtpLogin | None, message: EmailMessage) -> _Outcome:
    """One delivery of ``message`` through ``email``'s server."""
    try:
        with smtplib.SMTP(
            email.host, email.port, local_hostname=socket.gethostname(), timeout=_SMTP_TIMEOUT
        ) as smtp:
            if email.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if login is not None:
                smtp.login(login.user, login.password)
            refused = smtp.send_message(message)
        if refused:
            return _Outcome(False, reason=f"{len(refused)} of {len(email.to)} recipients refused")
        return _Outcome(ok=True, status=250)
    except smtplib.SMTPNotSupportedError:
        return _Outcome(False, reason="the server offers no STARTTLS; the message was not sent")
    except smtplib.SMTPResponseException as exc:
        code = int(exc.smtp_code)
        text = exc.smtp_error if isinstance(exc.smtp_error, bytes) else b""
        reason = " ".join(text.decode("utf-8", "replace").split())[:200]
        return _Outcome(False, 400 <= code < 500, code, reason)
    except smtplib.SMTPRecipientsRefused as exc:
        return _Outcome(False, reason=f"all {len(exc.recipients)} recipients refused")
    except ssl.SSLError as exc:  # e.g. the certificate does not verify: a retry changes nothing
        return _Outcome(False, reason=f"TLS: {exc.reason or exc}")
    except (smtplib.SMTPException, OSError) as exc:
        return _Outcome(False, retry=True, reason=str(exc) or type(exc).__name__)


class JobNotifier:
    """Sends each ended job's summary to the webhook and by e-mail, in the background.

    Raises (when made):
        InputError: the e-mail login is unusable (see :func:`smtp_login`).
    """

    def __init__(
        self,
        config: NotifyConfig,
        *,
        environ: Mapping[str, str] | None = None,
        retry_initial: float = 1.0,
        retry_cap: float = 60.0,
        webhook_timeout: float = _WEBHOOK_TIMEOUT,
    ) -> None:
        self._config = config
        self._login = smtp_login(config.email, environ) if config.email else None
        self._initial, self._cap = retry_initial, retry_cap
        self._timeout = webhook_timeout
        self._queue: queue.Queue[JobSummary | None] = queue.Queue(_QUEUE_SIZE)
        self._abandon = threading.Event()
        self._closed = False
        self._closing = threading.Lock()  # a summary is queued before close's end mark, or not
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._work, name="pacsman-notify", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Whether anyone is to be told (a webhook or an e-mail is configured)."""
        return self._config.webhook is not None or self._config.email is not None

    def describe(self) -> str:
        """``webhook https://hooks.example/pacsman, e-mail to 2 addresses via smtp:587``."""
        parts = [f"webhook {_safe_url(self._config.webhook)}"] if self._config.webhook else []
        email = self._config.email
        if email is not None:
            parts.append(f"e-mail to {len(email.to)} addresses via {email.host}:{email.port}")
        return ", ".join(parts) or "no notifications"

    def job_ended(self, summary: JobSummary) -> None:
        """Queue ``summary`` for sending and return at once (dropped, and logged, when closed
        or when 100 summaries already wait)."""
        if not self.enabled:
            return
        try:
            with self._closing:
                if self._closed:
                    raise queue.Full
                self._queue.put_nowait(summary)
        except queue.Full:
            reason = "the notifier is closed" if self._closed else "too many notifications wait"
            _log.warning("notification_dropped", job_id=summary.job_id, reason=reason)

    def close(self, timeout: float) -> bool:
        """Send what is queued, waiting at most ``timeout`` seconds; whether all was sent.

        What is still pending then is given up (``notifications_abandoned``).
        """
        with self._closing:
            self._closed = True
        if self._thread is None:
            return True
        deadline = time.monotonic() + max(0.0, timeout)
        with contextlib.suppress(queue.Full):  # full: the worker is far behind anyway
            self._queue.put(None, timeout=max(0.0, timeout))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return True
        self._abandon.set()
        _log.warning("notifications_abandoned", pending=self._queue.qsize(), waited_s=timeout)
        return False

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while (summary := self._queue.get()) is not None:
            if self._abandon.is_set():
                continue
            try:
                self._send(summary)
            except Exception as exc:  # the worker must outlive a bug in one notification
                _log.exception("notification_error", job_id=summary.job_id, reason=str(exc))

    def _send(self, summary: JobSummary) -> None:
        webhook, email = self._config.webhook, self._config.email
        if webhook is not None:
            body = summary.to_json().encode("utf-8")
            self._try(
                lambda: _post(webhook, body, self._timeout),
                self._config.webhook_attempts,
                job_id=summary.job_id,
                channel="webhook",
                url=_safe_url(webhook),
            )
        if email is not None:
            message = _email_message(email, summary)
            self._try(
                lambda: _smtp_send(email, self._login, message),
                _EMAIL_ATTEMPTS,
                job_id=summary.job_id,
                channel="email",
                server=f"{email.host}:{email.port}",
            )

    def _try(self, send: Callable[[], _Outcome], attempts: int, **context: object) -> bool:
        """Up to ``attempts`` tries of ``send`` with back-off; each failure logged."""
        tries = 0

        def once() -> _Outcome:
            nonlocal tries
            tries += 1
            outcome = send()
            if not outcome.ok:
                _log.warning(
                    "notification_failed",
                    status=outcome.status,
                    reason=outcome.reason,
                    attempt=tries,
                    attempts=attempts,
                    will_retry=outcome.retry and tries < attempts and not self._abandon.is_set(),
                    **context,
                )
            return outcome

        abandon = self._abandon
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_when_event_set(abandon),
            wait=self._wait,
            retry=tenacity.retry_if_result(lambda outcome: outcome.retry),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            sleep=self._sleep,
        )
        outcome = retrying(once)
        if outcome is not None and outcome.ok:
            _log.info("notification_sent", attempt=tries, **context)
            return True
        return False

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential from ``retry_initial`` up to ``retry_cap``; a longer Retry-After wins."""
        exponential = self._initial * 2.0 ** (state.attempt_number - 1)
        outcome = state.outcome.result() if state.outcome and not state.outcome.failed else None
        after = outcome.retry_after if isinstance(outcome, _Outcome) else 0.0
        return float(min(self._cap, max(exponential, after)))

    def _sleep(self, seconds: float) -> None:
        """The back-off between tries; it ends at once when :meth:`close` gives up."""
        self._abandon.wait(seconds)
