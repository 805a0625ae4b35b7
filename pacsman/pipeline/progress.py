"""How far a run is: counters per stage, shown live on a terminal, logged as events otherwise.

Stages and their units: query (rows), retrieve (series; instances and bytes as they arrive
in the Storage SCP), de-identify (series; instances written), NIfTI with ``--nifti`` (series;
their instances, and the bytes of NIfTI written), push (sessions; files verified on the
target).  Each stage counts what an earlier run of the job store settled as done, so
a resumed run starts where it stopped; its rate (MB/s) and ETA count only what this command
moved since the stage started.  MB are 10^6 bytes.

* On a terminal with the human console: a live display (:mod:`rich`), redrawn in place below
  the log lines, which scroll above it; it ends with its final state.
* Otherwise (a pipe, ``nohup``, journald, ``log.console: json``): a ``progress`` event at most
  every ``log.progress_interval`` seconds (default 30) with the same counters and ETA, so
  ``tail -f`` of the log answers "how far along".  With the live display, ``log.file`` still
  gets those events.

The de-identify/push process counts through :class:`PipeCounts` (JSON lines on its pipe),
which the run applies to its :class:`Tracker` with :func:`apply`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from pacsman.log import HUMAN, current_settings

if TYPE_CHECKING:
    from rich.console import JustifyMethod, RenderableType

__all__ = [
    "Counts",
    "PipeCounts",
    "Stage",
    "StageView",
    "Tracker",
    "apply",
    "reporting",
]

_log = structlog.get_logger("pacsman.pipeline")

_MB = 1_000_000


class Stage(StrEnum):
    """A stage of a run, as the display names it."""

    QUERY = "query"
    RETRIEVE = "retrieve"
    DEIDENTIFY = "de-identify"
    #: ``--nifti``: series converted by dcm2niix (skipped ones count as done, failed and
    #: quarantined ones as failed).
    NIFTI = "NIfTI"
    PUSH = "push"

    @property
    def key(self) -> str:
        """The stage's key in a ``progress`` event (a plain identifier)."""
        return self.name.lower()

    @property
    def unit(self) -> str:
        """What the stage counts."""
        return _UNITS[self]


_UNITS = {Stage.QUERY: "rows", Stage.RETRIEVE: "series", Stage.DEIDENTIFY: "series"}
_UNITS[Stage.NIFTI] = "series"
_UNITS[Stage.PUSH] = "sessions"


class Counts(Protocol):
    """Where a stage reports what it did: the run's :class:`Tracker`, or a pipe to it."""

    def start(self, stage: Stage) -> None:
        """The stage starts working now (its rate and ETA count from here)."""

    def add(
        self, stage: Stage, *, units: int = 0, instances: int = 0, size: int = 0, failed: int = 0
    ) -> None:
        """``units`` settled as done, ``failed`` as failed; ``instances`` and ``size`` bytes
        moved."""


@dataclass
class _Counter:
    """One stage's counters (mutable, under the tracker's lock)."""

    total: int | None = None
    done: int = 0
    failed: int = 0
    instances_total: int | None = None
    instances: int = 0
    size: int = 0
    started: float | None = None
    #: When it last counted something: a finished stage's rate ends there.
    last: float = 0.0
    done_at_start: int = 0
    instances_at_start: int = 0


@dataclass(frozen=True)
class StageView:
    """One stage at one moment: counters, rate and ETA (``None`` when unknown)."""

    stage: Stage
    done: int
    total: int | None
    failed: int
    instances: int
    instances_total: int | None
    mb: float
    mb_per_s: float | None
    eta_s: float | None
    started: bool
    #: How the run ended, when it did: the word an unfinished stage shows.
    ended: str = ""

    @property
    def finished(self) -> bool:
        """Every unit of the stage is settled (done or failed)."""
        return self.total is not None and self.done + self.failed >= self.total

    @property
    def fraction(self) -> float:
        """How much is done, 0 to 1: by instances when they are known, else units settled."""
        if self.instances_total:
            return min(1.0, self.instances / self.instances_total)
        settled = self.done + self.failed
        return min(1.0, settled / self.total) if self.total else float(self.finished)

    def fields(self) -> dict[str, Any]:
        """The counters for a JSON event."""
        fields: dict[str, Any] = {"done": self.done, "total": self.total, "failed": self.failed}
        if self.stage is not Stage.QUERY:
            fields.update(instances=self.instances, instances_total=self.instances_total)
            fields.update(mb=round(self.mb, 1), mb_per_s=_round(self.mb_per_s))
        fields["eta_s"] = _round(self.eta_s, 0)
        return fields

    def cells(self) -> tuple[str, str, str, str, str, str]:
        """The display's cells: done/total units, instances, MB, MB/s, failed and state
        (counts of 100,000 and more as 123.4k or 1.23M; the column headers name the rest)."""
        units = f"{_number(self.done)}/{_number(self.total)} {self.stage.unit}"
        failed = _number(self.failed) if self.failed else ""
        if self.stage is Stage.QUERY:
            return units, "", "", "", failed, self.state(failed=False)
        instances = f"{_number(self.instances)}/{_number(self.instances_total)}"
        rate = "" if self.mb_per_s is None else f"{self.mb_per_s:.1f}"
        return units, instances, f"{self.mb:.1f}", rate, failed, self.state(failed=False)

    def state(self, *, failed: bool = True) -> str:
        """``done``, ``waiting``, ``ETA h:mm:ss`` or ``working``; once the run ended,
        ``incomplete`` or ``interrupted``; and (``failed``) how many failed."""
        if self.finished:
            word = "done"
        elif self.ended:
            word = self.ended
        elif not self.started:
            word = "waiting"
        elif self.eta_s is not None:
            word = f"ETA {_clock(self.eta_s)}"
        else:
            word = "working"
        return word + (f", {self.failed:,} failed" if failed and self.failed else "")

    def text(self) -> str:
        """One line for a human log: ``retrieve 5/9 series, 40/63 instances, ...``."""
        units, instances, mb, rate, _, _ = self.cells()
        words = [units]
        if self.stage is not Stage.QUERY:
            words += [f"{instances} instances", f"{mb} MB"] + ([f"{rate} MB/s"] if rate else [])
        return f"{self.stage.value} " + ", ".join([*words, self.state()])


class Tracker:
    """The run's counters, per stage; thread-safe (retrieval counts from the SCP's threads)."""

    def __init__(
        self, stages: Sequence[Stage], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stages = tuple(stages)
        self._clock = clock
        self._lock = threading.Lock()
        self._counters = {stage: _Counter() for stage in self.stages}
        self.started = clock()
        self._ended = ""

    def plan(
        self,
        stage: Stage,
        *,
        total: int,
        done: int = 0,
        failed: int = 0,
        instances_total: int | None = None,
        instances: int = 0,
    ) -> None:
        """Set a stage's totals and what earlier runs settled (not counted in its rate)."""
        with self._lock:
            counter = self._counters.get(stage)
            if counter is None:
                return
            counter.total, counter.done, counter.failed = total, done, failed
            counter.instances_total, counter.instances = instances_total, instances
            if counter.started is None:
                counter.done_at_start, counter.instances_at_start = done, instances

    def start(self, stage: Stage) -> None:
        """The stage starts working now (the first call counts)."""
        with self._lock:
            counter = self._counters.get(stage)
            if counter is not None and counter.started is None:
                counter.started = self._clock()
                counter.done_at_start, counter.instances_at_start = counter.done, counter.instances

    def add(
        self, stage: Stage, *, units: int = 0, instances: int = 0, size: int = 0, failed: int = 0
    ) -> None:
        """Count what a stage did (starting it, if it was not)."""
        self.start(stage)
        with self._lock:
            counter = self._counters.get(stage)
            if counter is None:
                return
            counter.done += units
            counter.failed += failed
            counter.instances += instances
            counter.size += size
            counter.last = self._clock()

    def end(self, word: str) -> None:
        """The run ended: stages not finished show ``word`` (``incomplete``, ``interrupted``)."""
        with self._lock:
            self._ended = word

    def size(self, stage: Stage) -> int:
        """Bytes the stage moved in this command."""
        with self._lock:
            counter = self._counters.get(stage)
            return 0 if counter is None else counter.size

    def views(self) -> tuple[StageView, ...]:
        """Every stage now."""
        now = self._clock()
        with self._lock:
            return tuple(_view(s, c, now, self._ended) for s, c in self._counters.items())

    def elapsed(self) -> float:
        """Seconds since the tracker was made (the run started)."""
        return self._clock() - self.started


def _view(stage: Stage, counter: _Counter, now: float, ended: str) -> StageView:
    finished = counter.total is not None and counter.done + counter.failed >= counter.total
    end = counter.last if finished and counter.last else now
    seconds = None if counter.started is None else max(end - counter.started, 1e-6)
    rate = eta = None
    if seconds is not None:
        rate = counter.size / _MB / seconds if stage is not Stage.QUERY and counter.size else None
        eta = _eta(counter, seconds)
    return StageView(
        stage=stage,
        done=counter.done,
        total=counter.total,
        failed=counter.failed,
        instances=counter.instances,
        instances_total=counter.instances_total,
        mb=counter.size / _MB,
        mb_per_s=rate,
        eta_s=eta,
        started=counter.started is not None,
        ended=ended,
    )


def _eta(counter: _Counter, seconds: float) -> float | None:
    """Seconds left at this command's pace: by instances when known, else by units."""
    if counter.instances_total is not None and counter.instances > counter.instances_at_start:
        pace = (counter.instances - counter.instances_at_start) / seconds
        return max(counter.instances_total - counter.instances, 0) / pace
    settled = counter.done + counter.failed
    if counter.total is not None and counter.done > counter.done_at_start:
        pace = (counter.done - counter.done_at_start) / seconds
        return max(counter.total - settled, 0) / pace
    return None


def _number(value: int | None) -> str:
    if value is None:
        return "?"
    if value < 100_000:
        return f"{value:,}"
    return f"{value / 1e3:.1f}k" if value < 1_000_000 else f"{value / 1e6:.2f}M"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


# -- the de-identify/push process's side ---------------------------------------------------


class PipeCounts:
    """:class:`Counts` for another process: JSON lines ``{"progress": {...}}`` written with
    ``write``, at most one every ``interval`` seconds per stage (plus :meth:`flush`)."""

    def __init__(self, write: Callable[[str], None], *, interval: float = 0.25) -> None:
        self._write = write
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: dict[Stage, dict[str, int]] = {}
        self._last = 0.0

    def start(self, stage: Stage) -> None:
        """Tell the run that ``stage`` starts now."""
        self._send({"stage": stage.value, "start": True})

    def add(
        self, stage: Stage, *, units: int = 0, instances: int = 0, size: int = 0, failed: int = 0
    ) -> None:
        """Add to what is sent next; send it when ``interval`` has passed."""
        with self._lock:
            pending = self._pending.setdefault(stage, {})
            for key, value in (("units", units), ("instances", instances), ("size", size)):
                pending[key] = pending.get(key, 0) + value
            pending["failed"] = pending.get("failed", 0) + failed
            due = time.monotonic() - self._last >= self._interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what was added and not sent yet."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last = time.monotonic()
        for stage, counts in pending.items():
            self._send({"stage": stage.value, **counts})

    def _send(self, message: dict[str, Any]) -> None:
        self._write(json.dumps({"progress": message}) + "\n")


def apply(tracker: Tracker, message: Mapping[str, Any]) -> None:
    """Apply one ``progress`` message of :class:`PipeCounts` to ``tracker``."""
    try:
        stage = Stage(str(message.get("stage")))
    except ValueError:
        return
    if message.get("start"):
        tracker.start(stage)
        return
    counts = {k: int(message.get(k, 0)) for k in ("units", "instances", "size", "failed")}
    tracker.add(stage, **counts)


# -- showing it ----------------------------------------------------------------------------


@contextmanager
def reporting(
    tracker: Tracker, *, run_id: int, interval: float, live: bool = True
) -> Iterator[None]:
    """Show ``tracker`` while the block runs: live on a terminal, else ``progress`` events.

    Events go out at most every ``interval`` seconds; with the live display they go to
    ``log.file`` only (none without one).  ``live=False`` (a job of the service, one of
    several at once) always logs events.
    """
    settings = current_settings()
    live = live and settings.console == "human" and settings.terminal
    events = None if live and settings.file is None else _Events(tracker, interval, quiet=live)
    if events is not None:
        events.start()
    try:
        with _live_display(tracker, run_id) if live else nullcontext():
            try:
                yield
            except KeyboardInterrupt:
                tracker.end("interrupted")  # shown by the display's last drawing
                raise
            tracker.end("incomplete")
    finally:
        if events is not None:
            events.stop()


class _Events:
    """A daemon thread that logs a ``progress`` event every ``interval`` seconds."""

    def __init__(self, tracker: Tracker, interval: float, *, quiet: bool) -> None:
        self._tracker = tracker
        self._interval = max(interval, 0.1)
        self._quiet = quiet  # the live display shows it: log.file only
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pacsman-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            log_progress(self._tracker, quiet=self._quiet)


def log_progress(tracker: Tracker, *, quiet: bool = False) -> None:
    """Log one ``progress`` event: every stage's counters, rate and ETA."""
    views = tracker.views()
    text = "" if quiet else " | ".join(v.text() for v in views)
    stages = {v.stage.key: v.fields() for v in views}
    _log.info("progress", elapsed_s=round(tracker.elapsed()), **stages, **{HUMAN: text})


@contextmanager
def _live_display(tracker: Tracker, run_id: int) -> Iterator[None]:
    """rich's Live on stderr: log lines written to ``sys.stderr`` scroll above it."""
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True, highlight=False)
    with Live(
        console=console,
        refresh_per_second=2,
        get_renderable=lambda: _table(tracker, run_id, console.width),
        redirect_stdout=True,
        redirect_stderr=True,
    ):
        yield


#: The display's columns after the bar: header and alignment.
_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("done", "right"),
    ("instances", "right"),
    ("MB", "right"),
    ("MB/s", "right"),
    ("failed", "right"),
    ("", "left"),
)


def _table(tracker: Tracker, run_id: int, width: int) -> RenderableType:
    """One row per stage under a title with the elapsed time; the bar only where the
    terminal is wide enough (100 columns) for every figure to stay whole."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="")
    table.title = f"run {run_id} · {_clock(tracker.elapsed())}"
    table.title_justify = "left"
    table.title_style = ""
    views = tracker.views()
    cells = [view.cells() for view in views]
    with_bar = width >= 100
    table.add_column("", min_width=len(Stage.DEIDENTIFY.value), no_wrap=True)
    if with_bar:
        table.add_column("", no_wrap=True)
    for index, (header, side) in enumerate(_COLUMNS):
        widest = max([len(header), *(len(row[index]) for row in cells)])
        table.add_column(header, justify=side, no_wrap=True, min_width=widest)
    for view, row in zip(views, cells, strict=True):
        bar = [ProgressBar(completed=round(view.fraction * 1000), total=1000, width=16)]
        table.add_row(view.stage.value, *(bar if with_bar else []), *row)
    return table
