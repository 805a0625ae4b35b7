"""Retry, back-off and PACS-courtesy policy objects (tenacity underneath).

* :class:`RetryPolicy` is a small value object: how many attempts, how long to wait.  Only
  :class:`~pacsman.errors.TransientError` is retried; everything else goes straight up.
* :class:`Courtesy` paces retrieve starts towards one PACS: a minimum interval, an optional
  daily time window, and a capped pause after congestion that the next answer ends.
* :class:`AssociationSlots` caps the associations open to one PACS at ``max_associations``
  for the whole process, whichever job opens them, and hands free slots out fairly: higher
  priority first, then round-robin between jobs.
* A :class:`Ticket` says on whose behalf a thread works (a service job, or the one-shot
  run); :func:`working_for` sets it, and :func:`check_halt` stops a job that was asked to.

In ``pacsman serve``, courtesy and slots are per PACS node for the whole process
(:class:`SharedCourtesy`, carried by each job's ticket): every job shares them, so the PACS
sees one polite client however many jobs are queued.  With several head nodes on one
PostgreSQL job store, a :class:`ClusterGate` (:class:`pacsman.jobstore.slots.ClusterSlots`)
makes ``max_associations`` and ``move_interval`` hold for the whole cluster: a slot granted
here among this node's jobs must then be won in the cluster, and each retrieve start is
reserved in the cluster's pace.  This module never imports the database driver.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
import tenacity

from pacsman.errors import Halted, TransientError

__all__ = [
    "AssociationSlots",
    "ClusterGate",
    "Courtesy",
    "Halt",
    "RetryPolicy",
    "SharedCourtesy",
    "Ticket",
    "check_halt",
    "count_retrieve",
    "current_ticket",
    "give_way",
    "in_context",
    "seconds_until_window",
    "working_for",
]

T = TypeVar("T")
_log = structlog.get_logger("pacsman.throttle")


class HaltSignal(Protocol):
    """What a cluster wait looks at to stop early (a :class:`Halt`, a threading.Event)."""

    def is_set(self) -> bool: ...


class ClusterGate(Protocol):
    """Courtesy towards each PACS node shared by every head node of a cluster
    (:class:`pacsman.jobstore.slots.ClusterSlots` on PostgreSQL)."""

    def acquire(
        self,
        pacs: str,
        limit: int,
        *,
        halt: HaltSignal | None = None,
        timeout: float | None = None,
    ) -> int:
        """Wait for one of the cluster's ``limit`` slots towards ``pacs``; return its index.

        Raises:
            Halted: ``halt`` was set while waiting.
            TimeoutError: no slot came free within ``timeout`` seconds.
            TransientError: the cluster's database cannot be reached.
        """
        ...

    def release(self, pacs: str, slot: int) -> None:
        """Give slot ``slot`` towards ``pacs`` back."""
        ...

    def pace(self, pacs: str, interval: float) -> float:
        """Reserve the cluster's next retrieve start towards ``pacs``; the seconds to wait."""
        ...

    def held(self) -> dict[str, int]:
        """Slots this node holds in the cluster, per PACS node."""
        ...

    def cluster_held(self, pacs: str) -> int:
        """Slots towards ``pacs`` held by every node together."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` tries, exponential back-off from ``initial`` to ``cap`` seconds.

    ``jitter`` adds up to that many random seconds to each wait, so that many clients
    retrying against one PACS do not fall into step.
    """

    max_attempts: int = 50
    initial: float = 1.0
    cap: float = 60.0
    jitter: float = 1.0

    def call(self, fn: Callable[[], T], *, operation: str, **context: object) -> T:
        """Call ``fn`` until it succeeds, raises a non-transient error, or attempts run out.

        Raises:
            TransientError: the last transient error, once ``max_attempts`` is spent.
            Exception: anything non-transient ``fn`` raises, at once.
        """

        def _before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            _log.warning(
                "retrying",
                operation=operation,
                attempt=state.attempt_number,
                max_attempts=self.max_attempts,
                wait_s=round(state.upcoming_sleep, 2),
                reason=str(error),
                **context,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_exponential(multiplier=self.initial, max=self.cap)
            + tenacity.wait_random(0, self.jitter),
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=_before_sleep,
            reraise=True,
        )
        return retrying(fn)


def _parse_window(window: str) -> tuple[int, int]:
    start, _, end = window.partition("-")

    def minutes(text: str) -> int:
        hours, _, mins = text.strip().partition(":")
        return int(hours) * 60 + int(mins)

    return minutes(start), minutes(end)


def seconds_until_window(window: str | None, now: datetime) -> float:
    """Seconds from ``now`` until the daily window ``HH:MM-HH:MM`` opens (0 when inside it).

    The window may wrap midnight (``19:00-07:00``).
    """
    if window is None:
        return 0.0
    start, end = _parse_window(window)
    current = now.hour * 60 + now.minute + now.second / 60
    inside = start <= current < end if start < end else current >= start or current < end
    if inside:
        return 0.0
    wait_minutes = (start - current) % (24 * 60)
    return wait_minutes * 60


class Courtesy:
    """Paces retrieve starts towards one PACS: interval, daily window, congestion back-off.

    ``interval`` is the configured minimum time between two C-MOVE/C-GET starts.  When the
    PACS pushes back (congestion: 0xA70x, a transient association reject, an abort), the
    node's *next* start waits a pause: 1 s after the first signal, doubling with each further
    signal in a row, never more than ``max_backoff``.  Any answer from the PACS -- a success,
    or the refusal of one request -- ends the streak, so the series after it wait only the
    interval: the back-off never grows into a penalty on unrelated series.  With a
    ``pacer`` (a cluster's :meth:`ClusterGate.pace` for this PACS), each start also waits its
    turn among every head node's starts.  Thread-safe: the retrieve workers of one PACS share
    one instance.
    """

    def __init__(
        self,
        *,
        interval: float = 0.0,
        window: str | None = None,
        max_backoff: float = 60.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
        pacer: Callable[[float], float] | None = None,
    ) -> None:
        self.minimum = interval
        #: Reserves the cluster's next start (interval -> seconds to wait); None on one node.
        self.pacer = pacer
        self.window = window
        self.max_backoff = max_backoff
        self.stop = stop or threading.Event()
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._last_start: float | None = None
        self._streak = 0
        self._paused_until = 0.0

    @property
    def backoff(self) -> float:
        """The pause the current congestion streak calls for (0 when there is none)."""
        if self._streak == 0:
            return 0.0
        return float(min(self.max_backoff, 2.0 ** (self._streak - 1)))

    def wait_turn(self, **context: object) -> None:
        """Block until this PACS may get the next retrieve; return at once if stopped.

        Raises:
            Halted: the job this thread works for was asked to stop meanwhile.
        """
        opens_in = seconds_until_window(self.window, self._now())
        if opens_in > 0:  # waited outside the lock: a job stopped meanwhile must not queue
            _log.info("waiting_for_window", window=self.window, wait_s=round(opens_in), **context)
            self._wait(opens_in)
        with self._lock:
            start = self._paused_until
            if self._last_start is not None:
                start = max(start, self._last_start + self.minimum)
            remaining = start - self._clock()
            if remaining > 0:
                self._wait(remaining)
            if self.pacer is not None and self.minimum > 0:
                self._wait(self.pacer(self.minimum))  # the other head nodes' starts too
            self._last_start = self._clock()

    def configure(self, *, interval: float, window: str | None) -> None:
        """New settings (the service's SIGHUP); the next start follows them."""
        with self._lock:
            self.minimum, self.window = interval, window

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds``, or until stopped or the thread's job is halted."""
        halt = current_ticket().halt
        deadline = self._clock() + seconds
        while not self.stop.is_set():
            left = deadline - self._clock()
            if left <= 0:
                return
            if halt is None:
                self.stop.wait(left)
                continue
            if halt.wait(min(left, 1.0)):
                check_halt()

    def congested(self) -> None:
        """The PACS pushed back: pause the node's next start (see the class docstring)."""
        with self._lock:
            self._streak += 1
            self._paused_until = max(self._paused_until, self._clock() + self.backoff)

    def succeeded(self) -> None:
        """The PACS answered (a success, or a refusal of this one request): end the streak."""
        with self._lock:
            self._streak = 0
            self._paused_until = 0.0


class Halt:
    """The request that a service job stop: why, and for a drain, until when in-flight
    work may go on (a :func:`time.monotonic` deadline)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.deadline: float | None = None

    def set(self, reason: str, *, deadline: float | None = None) -> None:
        self.reason, self.deadline = reason, deadline
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


@dataclass(frozen=True)
class Ticket:
    """On whose behalf a thread talks to a PACS: a job (its key and priority), and the
    :class:`Halt` that is set when the job must stop (``None`` for the one-shot command)."""

    job: str = "run"
    priority: int = 0
    halt: Halt | None = field(default=None, compare=False)
    #: The service's courtesy shared by every job; None for the one-shot command.
    shared: SharedCourtesy | None = field(default=None, compare=False)


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "pacsman_ticket", default=None
)
_ONE_SHOT = Ticket()


def current_ticket() -> Ticket:
    """The ticket of the calling thread (threads started with :func:`in_context` inherit it)."""
    return _TICKET.get() or _ONE_SHOT


@contextmanager
def working_for(ticket: Ticket) -> Iterator[Ticket]:
    """Within the block, this thread works for ``ticket``'s job."""
    token = _TICKET.set(ticket)
    try:
        yield ticket
    finally:
        _TICKET.reset(token)


def check_halt() -> None:
    """Raises: Halted: the job this thread works for was asked to stop."""
    halt = current_ticket().halt
    if halt is not None and halt.is_set():
        raise Halted(
            f"job {current_ticket().job}: {halt.reason or 'stop requested'}; "
            "its series stay resumable",
            deadline=halt.deadline,
        )


def count_retrieve(node: str, limit: int) -> None:
    """Tell the service's slots towards ``node`` that this thread's job starts a retrieve
    (a no-op for the one-shot command)."""
    shared = current_ticket().shared
    if shared is not None:
        shared.slots(node, limit).started_retrieve()


def give_way(node: str, limit: int) -> bool:
    """Whether a thread that just finished a unit of work with PACS ``node`` should release
    its association: another job of the service waits for one (round-robin between jobs).
    Always False for the one-shot command."""
    shared = current_ticket().shared
    return shared is not None and shared.slots(node, limit).others_waiting()


def in_context(target: Callable[[], Any]) -> Callable[[], Any]:
    """``target`` bound to a copy of the calling thread's context (ticket, log binding), for
    a new thread: ``threading.Thread(target=in_context(work))``."""
    context = contextvars.copy_context()
    return lambda: context.run(target)


@dataclass
class _Waiter:
    ticket: Ticket
    order: int


class AssociationSlots:
    """At most ``limit`` associations open to one PACS at once, for the whole process.

    :meth:`acquire` blocks until a slot is free *and* the caller is next in line: the
    waiting job with the highest priority, then the one holding the fewest slots, then the
    one that started the fewest retrieves (:meth:`started_retrieve`), then the one served
    longest ago (round-robin between jobs), then the first to ask.  A
    worker that finishes a unit while another job waits gives its slot up
    (:meth:`others_waiting`), so jobs share a PACS by turns.  A halted job's wait ends with
    :class:`~pacsman.errors.Halted`.  Open associations are registered, so a service
    that must stop now can abort them (:meth:`abort_all`).

    With a ``cluster`` gate, a slot granted here must then be won among every head node's
    (towards PACS node ``node``): the wait goes on holding the local slot, halt-aware, and
    :meth:`release` gives the cluster slot back first.
    """

    def __init__(
        self,
        limit: int,
        *,
        node: str = "",
        cluster: ClusterGate | None = None,
        cluster_limit: int | None = None,
    ) -> None:
        self.limit = max(1, limit)
        self.node = node
        self._cluster = cluster
        #: The slots of every head node together (the PACS's max_associations).
        self.cluster_limit = max(1, cluster_limit or limit)
        #: The cluster slots each thread holds (by thread id), last taken last.
        self._cluster_slots: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self._in_use = 0
        self._held: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._retrieves: dict[str, int] = {}
        self._waiting: list[_Waiter] = []
        self._orders = 0
        self._open: set[Any] = set()

    @property
    def in_use(self) -> int:
        return self._in_use

    def set_limit(self, limit: int) -> None:
        """A new ``max_associations`` (SIGHUP): more slots free up at once, fewer as they
        are given back."""
        with self._cond:
            self.limit = max(1, limit)
            self._cond.notify_all()

    def acquire(self) -> None:
        """Take a slot for the calling thread's job (:func:`current_ticket`), then, with a
        cluster gate, one of the cluster's.

        Raises:
            Halted: the job was asked to stop while it waited.
            TransientError: the cluster's database cannot be reached.
        """
        self._acquire_here()
        if self._cluster is None:
            return
        try:
            slot = self._cluster.acquire(self.node, self.cluster_limit, halt=current_ticket().halt)
        except Exception:
            self._release_here()
            check_halt()  # in the job's own words when it was asked to stop
            raise
        with self._cond:
            self._cluster_slots.setdefault(threading.get_ident(), []).append(slot)

    def release(self) -> None:
        """Give the calling thread's job's slot back (the cluster's first)."""
        slot = self._pop_cluster_slot()
        if self._cluster is not None and slot is not None:
            self._cluster.release(self.node, slot)
        self._release_here()

    def others_waiting(self) -> bool:
        """Whether another job, at the caller's priority or higher, waits for a slot."""
        ticket = current_ticket()
        with self._cond:
            return any(
                w.ticket.job != ticket.job and w.ticket.priority >= ticket.priority
                for w in self._waiting
            )

    def opened(self, association: Any) -> None:
        with self._cond:
            self._open.add(association)

    def closed(self, association: Any) -> None:
        with self._cond:
            self._open.discard(association)

    def abort_all(self) -> int:
        """Abort every open association (the service's drain deadline); return how many."""
        with self._cond:
            found = list(self._open)
        for association in found:
            association.abort()
        return len(found)

    def started_retrieve(self) -> None:
        """The calling thread's job starts a C-MOVE/C-GET: a job that has started fewer gets
        the next free slot first (fair shares of retrieves, whatever else the jobs do)."""
        job = current_ticket().job
        with self._cond:
            self._retrieves[job] = self._retrieves.get(job, 0) + 1

    def _next(self) -> _Waiter:
        def rank(w: _Waiter) -> tuple[int, int, int, int, int]:
            job = w.ticket.job
            held, retrieves = self._held.get(job, 0), self._retrieves.get(job, 0)
            return (-w.ticket.priority, held, retrieves, self._served.get(job, 0), w.order)

        return min(self._waiting, key=rank)

    def _pop_cluster_slot(self) -> int | None:
        """The cluster slot the calling thread took last (else any this process holds)."""
        with self._cond:
            mine = self._cluster_slots.get(threading.get_ident())
            if not mine:
                mine = next((slots for slots in self._cluster_slots.values() if slots), None)
            return mine.pop() if mine else None

    def _acquire_here(self) -> None:
        ticket = current_ticket()
        with self._cond:
            self._orders += 1
            waiter = _Waiter(ticket, self._orders)
            self._waiting.append(waiter)
            try:
                while not (self._in_use < self.limit and self._next() is waiter):
                    check_halt()
                    self._cond.wait(0.5 if ticket.halt is not None else None)
                check_halt()
            finally:
                self._waiting.remove(waiter)
                self._cond.notify_all()
            self._in_use += 1
            self._held[ticket.job] = self._held.get(ticket.job, 0) + 1
            self._orders += 1
            self._served[ticket.job] = self._orders

    def _release_here(self) -> None:
        ticket = current_ticket()
        with self._cond:
            self._in_use = max(0, self._in_use - 1)
            self._held[ticket.job] = max(0, self._held.get(ticket.job, 0) - 1)
            self._cond.notify_all()


class SharedCourtesy:
    """One process's courtesy towards every PACS node, shared by all its jobs (the
    service's): a :class:`Courtesy` and :class:`AssociationSlots` per node.  The one-shot
    command has none: its workers are its only associations.

    With a ``cluster`` gate (several head nodes on one PostgreSQL job store), every node's
    slots and retrieve starts are also counted in the cluster's.
    """

    def __init__(self, *, cluster: ClusterGate | None = None) -> None:
        self.cluster = cluster
        #: Each PACS node's slots for every head node together (max_associations); a node
        #: not named here has its own limit for the cluster too.
        self.cluster_limits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._slots: dict[str, AssociationSlots] = {}
        self._courtesy: dict[str, Courtesy] = {}

    def slots(self, node: str, limit: int) -> AssociationSlots:
        """The slots towards PACS node ``node`` (created with ``limit`` on first use)."""
        with self._lock:
            if node not in self._slots:
                self._slots[node] = AssociationSlots(
                    limit,
                    node=node,
                    cluster=self.cluster,
                    cluster_limit=self.cluster_limits.get(node, limit),
                )
            return self._slots[node]

    def courtesy(self, node: str, *, interval: float, window: str | None) -> Courtesy:
        """The :class:`Courtesy` towards PACS node ``node``."""
        with self._lock:
            if node not in self._courtesy:
                pacer = None
                if self.cluster is not None:
                    pacer = functools.partial(self.cluster.pace, node)
                self._courtesy[node] = Courtesy(interval=interval, window=window, pacer=pacer)
            return self._courtesy[node]

    def reconfigure(
        self,
        node: str,
        *,
        limit: int,
        interval: float,
        window: str | None,
        cluster_limit: int | None = None,
    ) -> None:
        """New courtesy settings for ``node`` (SIGHUP); work in flight keeps going."""
        self.cluster_limits[node] = cluster_limit or limit
        slots = self.slots(node, limit)
        slots.set_limit(limit)
        slots.cluster_limit = max(1, cluster_limit or limit)
        self.courtesy(node, interval=interval, window=window).configure(
            interval=interval, window=window
        )

    def in_use(self) -> dict[str, int]:
        """Associations open now, per PACS node."""
        with self._lock:
            return {name: slots.in_use for name, slots in self._slots.items()}

    def cluster_in_use(self) -> dict[str, int]:
        """Associations open now by every head node together, per PACS node this node has
        talked to (this node's own without a cluster gate).

        Raises:
            TransientError: the cluster's database cannot be reached.
        """
        if self.cluster is None:
            return self.in_use()
        with self._lock:
            names = list(self._slots)
        return {name: self.cluster.cluster_held(name) for name in names}

    def abort_all(self) -> int:
        """Abort every open association to every PACS; return how many."""
        with self._lock:
            every = list(self._slots.values())
        return sum(slots.abort_all() for slots in every)
