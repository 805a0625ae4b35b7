"""Logging, configured once: structlog events, human on a TTY, JSON lines in files.

* Console (stderr): coloured key=value lines on a TTY, JSON lines otherwise (journald, nohup).
* ``log.file``: JSON lines appended, whatever the console does.
* Patient data never reaches a log at info level or above: known PHI keys are redacted, and
  pynetdicom's identifier dumps are switched off (in :mod:`pacsman.dicom.client`).
* pynetdicom's own warnings (e.g. a dropped DIMSE message) are forwarded as ``pynetdicom``
  events instead of vanishing.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import IO, Any, TextIO, cast

import structlog

__all__ = ["PHI_KEYS", "configure_logging"]

#: Event keys that may carry patient data; redacted at info level and above.
PHI_KEYS = frozenset(
    {
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "accession_number",
        "AccessionNumber",
        "password",
        "user",
    }
)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _redact(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if method != "debug":
        for key in PHI_KEYS.intersection(event):
            event[key] = "<redacted>"
    return event


class _JsonFile:
    """A processor that appends each event as one JSON line to a file, then passes it on."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        self._fh.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
        return event


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (not the object it was at configure time)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _PynetdicomBridge(logging.Handler):
    """Forward pynetdicom's stdlib log records (warnings and up) as structlog events.

    pynetdicom's *errors* (reject, refused connection) become ``info``: pacsman turns each of
    them into its own error that names the fix, so they are context, not the headline.
    """

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger("pynetdicom")
        method = log.warning if record.levelno == logging.WARNING else log.info
        method("pynetdicom", message=record.getMessage())


def configure_logging(
    *,
    level: str = "info",
    file: Path | None = None,
    console: str = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (call once, from the CLI or the daemon)."""
    stream = stream or cast(TextIO, _Stderr())
    as_json = console == "json" or (console == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if file is not None:
        processors.append(_JsonFile(file))
    if as_json:
        processors.append(structlog.processors.JSONRenderer(ensure_ascii=False))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write per event (line and newline together): the lines of the later-stages
        # process, which shares stderr, never cut into ours, even when stderr is unbuffered.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _quiet_pynetdicom()


def _quiet_pynetdicom() -> None:
    logger = logging.getLogger("pynetdicom")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, _PynetdicomBridge) for h in logger.handlers):
        logger.addHandler(_PynetdicomBridge())
