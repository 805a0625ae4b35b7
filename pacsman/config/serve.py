"""The ``serve`` section of the config: how ``pacsman serve`` runs on a head node.

``serve.node_name`` names the head node (``node`` alone is a PACS node in this config).
``serve.http`` is the local web page and API: 127.0.0.1 by default; any other address needs
a token and TLS (or ``behind_proxy: true``, which documents that a reverse proxy does TLS).
``serve.notify`` says who is told when a job ends.  Secrets never live here: the HTTP token
and the SMTP password come from files (mode 0600) or systemd's ``LoadCredential=``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from pacsman.config import _values as v
from pacsman.config._reader import Section

__all__ = [
    "EmailNotify",
    "HttpConfig",
    "InboxJob",
    "NotifyConfig",
    "ServeConfig",
    "is_loopback_bind",
    "parse_serve",
]

_LOOPBACK = ("127.", "::1", "localhost")


def _default_node_name() -> str:
    return socket.gethostname().split(".")[0] or "head"


def is_loopback_bind(bind: str) -> bool:
    """Whether ``bind`` is a loopback address (127.0.0.0/8, ::1 or localhost)."""
    return bind.startswith(_LOOPBACK)


@dataclass(frozen=True)
class HttpConfig:
    """The service's web page and JSON API."""

    bind: str = "127.0.0.1"
    port: int = 8104
    #: A file holding the API token (mode 0600); systemd's ``LoadCredential=pacsman-http-token``
    #: is read when this is not set.
    token_file: Path | None = None
    #: TLS for the page and API (needed, with a token, off loopback unless ``behind_proxy``).
    cert: Path | None = None
    key: Path | None = None
    #: A reverse proxy in front does TLS; pacsman still asks for the token.
    behind_proxy: bool = False


@dataclass(frozen=True)
class EmailNotify:
    """An e-mail through SMTP when a job ends.  The password comes from
    ``PACSMAN_SMTP_PASSWORD`` or ``credentials_file`` (``user:password``, mode 0600)."""

    host: str
    to: tuple[str, ...]
    sender: str
    port: int = 587
    starttls: bool = True
    credentials_file: Path | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """Who is told when a job finishes or fails."""

    webhook: str | None = None
    webhook_attempts: int = 5
    email: EmailNotify | None = None


@dataclass(frozen=True)
class InboxJob:
    """``serve.inbox_job``: the options a query file dropped into the inbox is queued with.

    Retrieve by default (a file dropped in a folder asks for the studies); de-identify and
    push only when the site says so, as they need a project key and XNAT set up first.
    ``push`` implies ``save`` and ``anonymize``, as ``--push`` does.
    """

    save: bool = True
    anonymize: bool = False
    push: str | None = None  # "xnat", "dicom", "folder"
    pacs: str | None = None  # default: default_pacs
    priority: int = 0
    #: Convert each de-identified series to NIfTI (needs anonymize or push), with a BIDS
    #: folder from this mapping file.
    nifti: bool = False
    bids: Path | None = None


@dataclass(frozen=True)
class ServeConfig:
    """``pacsman serve``: the head node's name, the queue's limits, HTTP, the inbox, drain."""

    node_name: str = field(default_factory=_default_node_name)
    #: Jobs worked on at once; more wait QUEUED (priority first, then in order).
    max_jobs: int = 4
    #: A folder watched for query files (accepted/ and rejected/ are made inside it).
    inbox: Path | None = None
    #: Seconds between two looks at the inbox.
    inbox_interval: float = 2.0
    #: The options of jobs queued from the inbox.
    inbox_job: InboxJob = InboxJob()
    #: Below this much free space (GB) where jobs write, no new retrieve is claimed.
    min_free_gb: float = 5.0
    #: Seconds SIGTERM lets in-flight retrieves and pushes finish before aborting them.
    drain_timeout: float = 60.0
    #: Seconds a head node's claim on a job or a study lasts without renewal (renewed every
    #: third of it): a node killed or cut off loses its work to the others after this long.
    lease_seconds: float = 30.0
    http: HttpConfig = HttpConfig()
    notify: NotifyConfig = NotifyConfig()


def parse_serve(section: Section) -> ServeConfig:
    """Read the ``serve`` section (every problem goes to ``section.problems``)."""
    d = ServeConfig()
    result = ServeConfig(
        node_name=section.get("node_name", v.name, d.node_name),
        max_jobs=section.get("max_jobs", v.int_between(1, 32), d.max_jobs),
        inbox=section.get("inbox", v.file_path, d.inbox),
        inbox_interval=section.get("inbox_interval", v.seconds(), d.inbox_interval),
        inbox_job=_parse_inbox_job(section.section("inbox_job")),
        min_free_gb=section.get("min_free_gb", _gigabytes, d.min_free_gb),
        drain_timeout=section.get("drain_timeout", v.seconds(allow_zero=True), d.drain_timeout),
        lease_seconds=section.get("lease_seconds", _lease_seconds, d.lease_seconds),
        http=_parse_http(section.section("http")),
        notify=_parse_notify(section.section("notify")),
    )
    section.finish()
    return result


def _lease_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 2 <= value <= 3600:
        raise v.Invalid(
            f"expected seconds from 2 to 3600 (a lease is renewed every third of it), "
            f"got {v.describe(value)}"
        )
    return float(value)


def _gigabytes(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise v.Invalid(f"expected a number of GB, 0 or more, got {v.describe(value)}")
    return float(value)


def _problem(section: Section, key: str, message: str) -> None:
    section.problems.add(section.child(key), message, section.line_of(key))


def _parse_http(section: Section) -> HttpConfig:
    d = HttpConfig
    result = HttpConfig(
        bind=section.get("bind", v.host, d.bind),
        port=section.get("port", v.tcp_port, d.port),
        token_file=section.get("token_file", v.file_path, d.token_file),
        cert=section.get("cert", v.file_path, d.cert),
        key=section.get("key", v.file_path, d.key),
        behind_proxy=section.get("behind_proxy", v.boolean, d.behind_proxy),
    )
    if (result.cert is None) != (result.key is None):
        _problem(section, "cert", "cert and key go together; give both, or neither for plain HTTP")
    if not is_loopback_bind(result.bind):
        if result.cert is None and not result.behind_proxy:
            _problem(
                section,
                "bind",
                f"{result.bind} is not loopback: the page and API then need TLS; set "
                "serve.http.cert and key, or behind_proxy: true when a reverse proxy does TLS",
            )
        section.warn(
            "bind",
            f"{result.bind} is not loopback: every request needs the API token "
            "(serve.http.token_file or LoadCredential=pacsman-http-token)",
        )
    section.finish()
    return result


def _parse_inbox_job(section: Section) -> InboxJob:
    from pacsman.jobstore.jobs import PRIORITIES  # the job store: not for --help, --version

    d = InboxJob
    result = InboxJob(
        save=section.get("save", v.boolean, d.save),
        anonymize=section.get("anonymize", v.boolean, d.anonymize),
        push=section.get("push", v.choice(("xnat", "dicom", "folder")), d.push),
        pacs=section.get("pacs", v.name, d.pacs),
        priority=section.get(
            "priority", v.int_between(PRIORITIES.start, PRIORITIES.stop - 1), d.priority
        ),
        nifti=section.get("nifti", v.boolean, d.nifti),
        bids=section.get("bids", v.file_path, d.bids),
    )
    section.finish()
    return result


def _parse_notify(section: Section) -> NotifyConfig:
    d = NotifyConfig
    email_section = section.section("email")
    email = _parse_email(email_section) if section.raw("email") else None
    result = NotifyConfig(
        webhook=section.get("webhook", v.http_url, d.webhook),
        webhook_attempts=section.get("webhook_attempts", v.int_between(1, 100), 5),
        email=email,
    )
    section.finish()
    return result


def _parse_email(section: Section) -> EmailNotify | None:
    host = section.require("host", v.host, "host: smtp.hospital.example")
    sender = section.require("from", v.text, "from: pacsman@hospital.example")
    to = section.get_list("to", v.text)
    if not to:
        _problem(section, "to", "give at least one address: to: [data-manager@hospital.example]")
    port = section.get("port", v.tcp_port, 587)
    starttls = section.get("starttls", v.boolean, True)
    credentials = section.get("credentials_file", v.file_path, None)
    section.finish()
    if host is None or sender is None or not to:
        return None
    return EmailNotify(
        host=host, to=to, sender=sender, port=port, starttls=starttls, credentials_file=credentials
    )
