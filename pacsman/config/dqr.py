"""The ``dqr`` section of the config: how ``pacsman dqr`` drives XNAT's DICOM Query-Retrieve.

XNAT's DQR plugin pulls studies from a PACS XNAT knows (``GET /xapi/pacs``) into XNAT's own
DICOM receiver.  ``pacsman dqr`` asks for one study per call, gently (``interval``,
``max_in_flight``), follows each request through XNAT's queue and history, gives each state a
staleness timer (requests are known to hang), and checks every session on arrival.  The
project is ``xnat.project``; ``xnat.allow_identified`` lets it start without an enabled
project anonymization script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pacsman.config import _values as v
from pacsman.config._reader import Section

__all__ = ["DqrConfig", "DqrQuery", "DqrStaleAfter", "parse_dqr"]

#: ``xnat``: DQR's own query (no counts: sessions are "counts unverified");
#: ``pacs``: pacsman's own C-FIND at the PACS node (series and instance counts verified).
DqrQuery = Literal["xnat", "pacs"]
_QUERIES: tuple[DqrQuery, ...] = ("xnat", "pacs")
_STALE_KEYS = ("queued", "processing", "issued", "received")


@dataclass(frozen=True)
class DqrStaleAfter:
    """Seconds a request may stay in one state before it is given up and asked for again."""

    #: QUEUED in XNAT's queue (XNAT's queue works one request at a time: be generous).
    queued: float = 21600.0
    #: PROCESSING (XNAT is C-MOVEing it).
    processing: float = 1800.0
    #: ISSUED (also RECEIVING, BUILDING): waiting for XNAT to report RECEIVED or the session
    #: to appear.
    issued: float = 3600.0
    #: RECEIVED: waiting for the session to hold the expected files.
    received: float = 1800.0


@dataclass(frozen=True)
class DqrConfig:
    """``pacsman dqr``: which PACS XNAT pulls from, where it delivers, and how gently."""

    #: The PACS by XNAT's id (``GET /xapi/pacs``); ``--pacs-id`` overrides it.
    pacs_id: int | None = None
    #: The PACS by its AE title (ids follow XNAT's registration order); ``--pacs-ae`` overrides.
    pacs_ae_title: str | None = None
    #: XNAT's own DICOM receiver (its SCP), where the PACS sends the study.
    receiver_ae_title: str = "XNAT"
    receiver_port: int = 8104
    #: How studies are found: DQR's own query, or pacsman's C-FIND (counts verified).
    query: DqrQuery = "xnat"
    #: Requests at XNAT at once, 1..20.
    max_in_flight: int = 1
    #: Minimum seconds between two import calls (the hospital script's minute).
    interval: float = 60.0
    #: Import requests per study, 1..1000, with back-off.
    max_attempts: int = 50
    #: Longest wait between two attempts for one study, seconds.
    backoff_max: float = 600.0
    #: Seconds between two looks at XNAT's queue and history.
    poll_interval: float = 15.0
    stale_after: DqrStaleAfter = field(default_factory=DqrStaleAfter)
    #: A partial or 0-file session is deleted (with its files) and requested again.
    replace_partial: bool = False
    #: The most pacsman reads of one XNAT answer (MiB, 1..4096; gzip counts decompressed):
    #: a bound against a flooding peer, big enough for a DQR history of ~70,000 requests.
    max_answer_mb: int = 32


def parse_dqr(section: Section) -> DqrConfig:
    """Read the ``dqr`` section (every problem goes to ``section.problems``)."""
    d = DqrConfig
    stale_after = section.section("stale_after")
    result = DqrConfig(
        pacs_id=section.get("pacs_id", v.int_between(1, 2**31 - 1), d.pacs_id),
        pacs_ae_title=section.get("pacs_ae_title", v.ae_title, d.pacs_ae_title),
        receiver_ae_title=section.get("receiver_ae_title", v.ae_title, d.receiver_ae_title),
        receiver_port=section.get("receiver_port", v.tcp_port, d.receiver_port),
        query=section.get("query", v.choice(_QUERIES), d.query),
        max_in_flight=section.get("max_in_flight", v.int_between(1, 20), d.max_in_flight),
        interval=section.get("interval", v.seconds(allow_zero=True), d.interval),
        max_attempts=section.get("max_attempts", v.int_between(1, 1000), d.max_attempts),
        backoff_max=section.get("backoff_max", v.seconds(), d.backoff_max),
        poll_interval=section.get("poll_interval", v.seconds(), d.poll_interval),
        stale_after=_parse_stale_after(stale_after),
        replace_partial=section.get("replace_partial", v.boolean, d.replace_partial),
        max_answer_mb=section.get("max_answer_mb", v.int_between(1, 4096), d.max_answer_mb),
    )
    _warn_short_timers(stale_after, result)
    section.finish()
    return result


def _parse_stale_after(section: Section) -> DqrStaleAfter:
    d = DqrStaleAfter
    positive = v.seconds()
    result = DqrStaleAfter(
        queued=section.get("queued", positive, d.queued),
        processing=section.get("processing", positive, d.processing),
        issued=section.get("issued", positive, d.issued),
        received=section.get("received", positive, d.received),
    )
    section.finish()
    return result


def _warn_short_timers(stale: Section, config: DqrConfig) -> None:
    """A staleness timer shorter than two polls gives a request up after one look at it."""
    for key in _STALE_KEYS:
        seconds = getattr(config.stale_after, key)
        if seconds < 2 * config.poll_interval:
            stale.warn(
                key,
                f"{seconds:g} s is less than two polls (poll_interval {config.poll_interval:g} s):"
                f" a request would be given up after at most one look; raise it to "
                f"{2 * config.poll_interval:g} s or more, or lower dqr.poll_interval",
            )
