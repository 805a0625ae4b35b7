"""Logging, configured once: structlog events, human on a TTY, JSON lines in files.

* Console (stderr): coloured key=value lines on a TTY, JSON lines otherwise (journald, nohup).
* ``log.file``: JSON lines appended, whatever the console does; created 0600 (its new folders
  0700), with full tracebacks (``exception``).
* The error that ends a command (:func:`log_failure`): its traceback goes to the console at
  debug level only, and to ``log.file`` at debug level or when the error is fatal.
* Patient data never reaches a log at info level or above: known PHI keys are redacted, and
  pynetdicom's identifier dumps are switched off (in :mod:`pacsman.dicom.client`).
* pynetdicom's own warnings (e.g. a dropped DIMSE message) are forwarded as ``pynetdicom``
  events instead of vanishing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO, cast

import structlog

from pacsman.layout import PRIVATE_FILE_MODE, private_directory

__all__ = ["PHI_KEYS", "configure_logging", "log_failure"]

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
    """A processor that appends each event as one JSON line to a file, then passes it on.

    The file is created 0600 and an existing one of ours is set to 0600: events name series,
    folders and errors.  A traceback (``exc_info``) is written in full as ``exception``.
    """

    def __init__(self, path: Path) -> None:
        private_directory(path.parent)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
        with suppress(PermissionError):  # a shared log owned by someone else keeps its mode
            os.fchmod(fd, PRIVATE_FILE_MODE)
        self._fh: IO[str] = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def write(self, event: dict[str, Any]) -> None:
        """Append one event as a JSON line (none once closed by a later configuration)."""
        if not self._fh.closed:
            self._fh.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        record = dict(event)
        if record.get("exc_info"):
            record = dict(structlog.processors.format_exc_info(None, "", record))
        self.write(record)
        return event


#: What :func:`configure_logging` set up last: the level, and the ``log.file`` writer.
_current: dict[str, Any] = {"level": logging.INFO, "file": None}


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
    previous = _current["file"]
    if previous is not None:
        previous.close()
    json_file = None if file is None else _JsonFile(file)
    _current.update(level=_LEVELS.get(level, logging.INFO), file=json_file)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if json_file is not None:
        processors.append(json_file)
    if as_json:
        processors.append(structlog.processors.format_exc_info)
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


def log_failure(exc: BaseException, *, fatal: bool = False) -> None:
    """Record the error that ends a command, with its full traceback.

    At debug level it is a ``command_failed`` debug event (console and ``log.file``); at any
    other level, a ``fatal`` error still goes to ``log.file`` (not to the console, where the
    command prints its one-line message).
    """
    if _current["level"] <= logging.DEBUG:
        structlog.get_logger("pacsman.cli").debug("command_failed", error=str(exc), exc_info=exc)
        return
    json_file: _JsonFile | None = _current["file"]
    if fatal and json_file is not None:
        json_file.write(
            {
                **structlog.contextvars.get_contextvars(),
                "event": "command_failed",
                "level": "error",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "error": str(exc),
                "exception": "".join(traceback.format_exception(exc)),
            }
        )


def _quiet_pynetdicom() -> None:
    logger = logging.getLogger("pynetdicom")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, _PynetdicomBridge) for h in logger.handlers):
        logger.addHandler(_PynetdicomBridge())
