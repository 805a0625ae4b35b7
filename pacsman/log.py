"""Logging, configured once: structlog events, human on a TTY, JSON lines in files.

* Console (stderr): coloured key=value lines on a TTY, JSON lines otherwise (journald, nohup).
* ``log.file``: JSON lines appended, whatever the console does; created 0600 (its new folders
  0700), with full tracebacks (``exception``).
* The error that ends a command (:func:`log_failure`): its traceback goes to the console at
  debug level only, and to ``log.file`` at debug level or when the error is fatal.
* Patient data never reaches a log at info level or above: known PHI keys are redacted, and
  pynetdicom's identifier dumps are switched off (in :mod:`pacsman.dicom.client`).
* pynetdicom's own warnings (e.g. a dropped DIMSE message) are forwarded as ``pynetdicom``
  events instead of vanishing; its errors (one or two lines per refused or aborted
  connection, which pacsman reports itself with the fix) only at debug level.
* Every thread's events carry what :func:`bind_process` bound (the run's ``run_id``), and
  another pacsman process's JSON events can be logged here as our own (:func:`forward`), so
  the de-identify/push process logs in the same format on the same stream.
* Events superseded by a command's own (:func:`demoted`) are logged at debug level only.
* An event may carry its own human text (``_human``): the human console prints it instead
  of the fields, or leaves the event out when it is empty (the command prints it itself);
  JSON lines and ``log.file`` keep the fields.
* Observers (:func:`add_observer`; the service's metrics) are handed every event, forwarded
  ones too, before it is redacted or rendered, and the events they name even below the level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO, cast

import structlog

from pacsman.layout import PRIVATE_FILE_MODE, private_directory

__all__ = [
    "HUMAN",
    "PHI_KEYS",
    "LogSettings",
    "add_observer",
    "bind_process",
    "configure_logging",
    "current_settings",
    "demoted",
    "forward",
    "log_failure",
    "remove_observer",
]

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
#: The key of an event's own human text (see the module docstring).
HUMAN = "_human"


@dataclass(frozen=True)
class LogSettings:
    """What :func:`configure_logging` set up: for another process to log the same way, and
    for a command to choose between a live progress display and progress events."""

    level: str = "info"
    file: Path | None = None
    #: "human" or "json": what the console gets.
    console: str = "human"
    #: The console is a terminal, written through ``sys.stderr`` (a display can share it).
    terminal: bool = False


#: Bound for every thread of the process (:func:`bind_process`).
_process_context: dict[str, Any] = {}
#: Event names logged at debug level only (:func:`demoted`), with how many blocks ask so.
_demoted: dict[str, int] = {}


def bind_process(**values: Any) -> None:
    """Bind ``values`` (e.g. ``run_id``) to every event of every thread of this process.

    Unlike structlog's context variables, threads started before or after see them too
    (retrieval workers, the Storage SCP, push threads).
    """
    _process_context.update(values)


@contextmanager
def demoted(*events: str) -> Iterator[None]:
    """Within the block, log ``events`` at debug level only: a command whose own events
    say the same thing (with its counters) keeps the console to one line per fact."""
    for event in events:
        _demoted[event] = _demoted.get(event, 0) + 1
    try:
        yield
    finally:
        for event in events:
            _demoted[event] -= 1
            if not _demoted[event]:
                del _demoted[event]


def _merge_process_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return {**_process_context, **event} if _process_context else event


def _demote(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if event.get("event") in _demoted and event.get("level") != "debug":
        if _current["level"] > logging.DEBUG:
            raise structlog.DropEvent
        event["level"] = "debug"
    return event


def _without_human(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop(HUMAN, None)
    return event


_PLAIN_KEYS = ("timestamp", "level", "run_id")


def _human_text(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """An event with its own human text: that text instead of its fields; none: left out."""
    if HUMAN not in event:
        return event
    text = event.pop(HUMAN)
    if not text:
        raise structlog.DropEvent
    plain = {key: event[key] for key in _PLAIN_KEYS if key in event}
    return {**plain, "event": f"{event.get('event', '')}: {text}"}


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
        record = {k: v for k, v in event.items() if k != HUMAN}
        if record.get("exc_info"):
            record = dict(structlog.processors.format_exc_info(None, "", record))
        self.write(record)
        return event


#: What :func:`configure_logging` set up last: the level, the ``log.file`` writer, and the
#: :class:`LogSettings`.
_current: dict[str, Any] = {"level": logging.INFO, "file": None, "settings": LogSettings()}
#: (observer, event names it wants below the level) (:func:`add_observer`); a tuple,
#: replaced whole (thread-safe).
_current["observers"] = ()


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

    pynetdicom's *errors* (reject, abort, refused connection: one or two lines per
    connection) become ``debug``: pacsman turns each of them into its own error that names
    the fix, so they are context, not the headline.
    """

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger("pynetdicom")
        method = log.warning if record.levelno == logging.WARNING else log.debug
        method("pynetdicom", message=record.getMessage())


def configure_logging(
    *,
    level: str = "info",
    file: Path | None = None,
    console: str = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (call once, from the CLI or the daemon)."""
    terminal = stream is None and sys.stderr.isatty()
    stream = stream or cast(TextIO, _Stderr())
    as_json = console == "json" or (console == "auto" and not stream.isatty())
    previous = _current["file"]
    if previous is not None:
        previous.close()
    json_file = None if file is None else _JsonFile(file)
    settings = LogSettings(level, file, "json" if as_json else "human", terminal)
    _current.update(level=_LEVELS.get(level, logging.INFO), file=json_file, settings=settings)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_process_context,
        structlog.processors.add_log_level,
        _observe,
        _level_gate,
        _demote,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if json_file is not None:
        processors.append(json_file)
    if as_json:
        processors.append(_without_human)
        processors.append(structlog.processors.format_exc_info)
        processors.append(structlog.processors.JSONRenderer(ensure_ascii=False))
    else:
        processors.append(_human_text)
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=_wrapper_class(),
        # One write per event (line and newline together): the lines of the later-stages
        # process, which shares stderr, never cut into ours, even when stderr is unbuffered.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _quiet_pynetdicom()


def current_settings() -> LogSettings:
    """What the last :func:`configure_logging` set up (the defaults before any)."""
    settings: LogSettings = _current["settings"]
    return settings


def add_observer(
    observer: Callable[[Mapping[str, Any]], None], *, events: Iterable[str] = ()
) -> None:
    """Hand ``observer`` every event the log takes from now on, and ``events`` (names) even
    below the log's level: the service's metrics count from them.

    It is called in the thread that logs, with the event's fields: the process context
    merged and ``level`` set, not yet redacted or rendered; forwarded events too.  It must be
    quick and must not keep or change the mapping; what it raises is ignored.  It may also be
    handed events another observer named; other events below the level stay as cheap as
    without an observer.
    """
    _current["observers"] = (*_current["observers"], (observer, frozenset(events)))
    _set_wrapper()


def remove_observer(observer: Callable[[Mapping[str, Any]], None]) -> None:
    """Stop handing events to ``observer`` (nothing happens when it was not added)."""
    _current["observers"] = tuple(o for o in _current["observers"] if o[0] is not observer)
    _set_wrapper()


def _observe(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for observer, _events in _current["observers"]:
        with suppress(Exception):  # an observer never costs the log an event
            observer(event)
    return event


def _level_gate(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop what is below the level: events observers asked for get this far."""
    if _LEVELS.get(event.get("level", ""), logging.CRITICAL) < _current["level"]:
        raise structlog.DropEvent
    return event


def _wrapper_class() -> type[Any]:
    """Loggers that filter at the configured level, but let the events observers named
    through (to :func:`_observe`, then :func:`_level_gate`)."""
    level = _current["level"]
    named = frozenset().union(*(events for _, events in _current["observers"]))
    if not named or level <= logging.DEBUG:
        return structlog.make_filtering_bound_logger(level)
    every = structlog.make_filtering_bound_logger(logging.DEBUG)

    def only_named(method: Callable[..., Any]) -> Callable[..., Any]:
        def log(self: Any, event: str, *args: Any, **kw: Any) -> Any:
            return method(self, event, *args, **kw) if event in named else None

        return log

    below = {name: only_named(getattr(every, name)) for name, n in _LEVELS.items() if n < level}
    return type("ObservedBoundLogger", (every,), below)


def _set_wrapper() -> None:
    """Apply :func:`_wrapper_class` when :func:`configure_logging` set up the processors."""
    if _level_gate in structlog.get_config()["processors"]:
        structlog.configure(wrapper_class=_wrapper_class())


_METHODS = frozenset({"debug", "info", "warning", "error", "critical"})


def forward(record: dict[str, Any]) -> None:
    """Log ``record``, an event another pacsman process rendered as a JSON line, as one of
    ours: same format, same stream, same ``log.file``, this process's bound context.

    Its ``level`` picks the method; its timestamp is replaced by ours (they differ by the
    pipe's delay).
    """
    fields = dict(record)
    event = str(fields.pop("event", ""))
    level = str(fields.pop("level", "info"))
    fields.pop("timestamp", None)
    log = structlog.get_logger("pacsman.forwarded")
    getattr(log, level if level in _METHODS else "info")(event, **fields)


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
                **_process_context,
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
