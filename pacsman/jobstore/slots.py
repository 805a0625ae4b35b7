"""PACS courtesy for a cluster of head nodes that share one PostgreSQL job store.

Per PACS node, ``max_associations`` and ``move_interval`` hold for the whole cluster, not
for each head node.  :class:`ClusterSlots` is the gate; :mod:`pacsman.throttle` calls it
(its ``ClusterGate``) *under* its own per-process slots: fairness between the jobs of one
node stays local, a local slot granted is then a cluster slot to win, and release goes in
the reverse order.

**Slots are session-level advisory locks**, ``pg_try_advisory_lock(classid, objid)``:
``classid`` is a stable 31-bit hash of the PACS node's name (:func:`pacs_lock_key`, from
SHA-256, so every node and every Python computes the same), ``objid`` the slot index
``0 .. max_associations - 1``.  Chosen over slot rows with leases because PostgreSQL drops
a session's advisory locks the moment its connection ends: a node killed with ``-9``, or
whose connection breaks, frees its slots at once, with no lease to expire and no row left
behind.  A node that is merely stopped (SIGSTOP) keeps its connection, and still holds its
associations to the PACS, so it rightly keeps its slots.  A node cut off from the network
(or powered off) is noticed by the server's TCP keepalive, which this module sets per
session (``tcp_keepalives_*``: about 25 s).  Each node process keeps one dedicated
connection for its slots, used under a lock -- never the job store's connection, whose
transactions must not decide when a slot is freed.  Advisory locks are re-entrant per
session, so the node remembers which indexes its own threads hold and skips them.  A
PgBouncer in front must pool by session (transaction pooling loses both locks and LISTEN).

**Wake-ups are LISTEN/NOTIFY**: a release is ``pg_advisory_unlock`` plus
``NOTIFY pacsman_slots, '<pacs node>'``.  A second dedicated connection LISTENs, in one
thread per node process, and wakes that process's waiters, which then try again.  A dead
node's locks vanish without a NOTIFY, so a waiter also tries again after ``fallback``
seconds (1 s) without news: no tight polling, and a dead node's slot is free for others
within that time.  After a release, a node that already holds slots towards that PACS
waits a few milliseconds per slot before its next try, so nodes holding fewer win more.

**move_interval**: one row per PACS node in table ``pacs_pace`` (the job store's schema
v9), ``next_at`` in epoch seconds on the database's clock.  Before each C-MOVE/C-GET one
statement reserves the next start (``GREATEST(next_at, now) + interval``) and returns how
long this node waits for it; reservations are serialized by the row lock, so starts
across the cluster are at least ``move_interval`` apart whatever the nodes' clocks say.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, Self

import structlog

from pacsman.errors import Halted, JobStoreError, TransientError
from pacsman.jobstore._backend import redacted

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "FALLBACK", "PACE_TABLE", "ClusterSlots", "pacs_lock_key"]

_log = structlog.get_logger("pacsman.jobstore.slots")

#: The NOTIFY channel of slot releases; the payload is the PACS node's name.
CHANNEL = "pacsman_slots"
#: Seconds a waiter that heard no release waits before it tries again (a dead node's
#: locks vanish without a NOTIFY).
FALLBACK = 1.0
#: The table of the cluster's next C-MOVE/C-GET start per PACS node (schema v9).
PACE_TABLE = "pacs_pace"
#: Seconds between two looks at a waiter's halt event.
_HALT_CHECK = 0.1
#: Seconds a node waits per slot it already holds before it tries after a release.
_STAGGER = 0.01
#: Seconds the listening thread blocks in one read (how soon ``close`` ends it).
_LISTEN_TURN = 0.25
#: The server drops a connection whose peer stopped answering after about 10 + 5 * 3 s.
_SERVER_KEEPALIVE = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)
_CLIENT_KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25000,
}

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
_UNLOCK = "SELECT pg_advisory_unlock(%s, %s), pg_notify(%s, %s)"
_CLUSTER_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND objsubid = 2 AND classid = %s::oid "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_EPOCH_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
#: The clock is read after the row lock is won, so a reservation that queued behind
#: another's does not start early.
_PACE = f"""INSERT INTO {PACE_TABLE} AS p (pacs, next_at)
VALUES (%(pacs)s, {_EPOCH_NOW} + %(interval)s)
ON CONFLICT (pacs) DO UPDATE SET next_at = GREATEST(p.next_at, {_EPOCH_NOW}) + %(interval)s
RETURNING p.next_at - %(interval)s - {_EPOCH_NOW}"""


def pacs_lock_key(pacs: str) -> int:
    """The advisory lock ``classid`` of PACS node ``pacs``: 31 bits of SHA-256 of its name,
    the same in every node (Python's ``hash()`` is salted per process)."""
    digest = hashlib.sha256(f"pacsman.pacs:{pacs}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class _Stop(Protocol):
    """A halt request: :class:`threading.Event` or :class:`pacsman.throttle.Halt`."""

    def is_set(self) -> bool: ...


class ClusterSlots:
    """Association slots and C-MOVE/C-GET pacing per PACS node, for every head node on the
    PostgreSQL job store at ``url`` (see the module docstring).  Thread-safe; one per node
    process.

    Raises:
        JobStoreError: PostgreSQL at ``url`` cannot be reached (from the constructor).
    """

    def __init__(self, url: str, *, fallback: float = FALLBACK, connect_timeout: int = 10) -> None:
        self.where = redacted(url)
        self.fallback = fallback
        self._url, self._connect_timeout = url, connect_timeout
        self._lock = threading.Lock()  # the slot connection and _mine
        self._mine: dict[str, set[int]] = {}
        self._wake = threading.Condition()
        self._heard: dict[str, int] = {}  # releases heard per PACS node (a generation)
        self._closed = threading.Event()
        self._conn = self._connect("pacsman-slots")
        self._listen = self._listening()
        self._listener = threading.Thread(
            target=self._hear, name="pacsman-cluster-slots", daemon=True
        )
        self._listener.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- slots -------------------------------------------------------------------------------

    def acquire(
        self, pacs: str, limit: int, *, halt: _Stop | None = None, timeout: float | None = None
    ) -> int:
        """Wait for one of the cluster's ``limit`` slots towards ``pacs``; return its index.

        Raises:
            Halted: ``halt`` was set while waiting.
            TimeoutError: no slot came free within ``timeout`` seconds.
            TransientError: PostgreSQL cannot be reached (retry later).
        """
        key, limit = pacs_lock_key(pacs), max(1, limit)
        deadline = None if timeout is None else time.monotonic() + timeout
        heard, woken = self._heard_count(pacs), False
        while True:
            self._check(pacs, limit, halt, deadline, timeout)
            if woken:
                self._stagger(pacs)
            slot = self._try_lock(pacs, key, limit)
            if slot is not None:
                return slot
            woken = self._wait_for_release(pacs, heard, halt, deadline)
            heard = self._heard_count(pacs)

    def release(self, pacs: str, slot: int) -> None:
        """Give slot ``slot`` towards ``pacs`` back and wake the waiters of every node.

        Never raises: when the connection is gone, the server has dropped the lock already.
        """
        with self._lock:
            self._mine.get(pacs, set()).discard(slot)
            try:
                self._conn.execute(_UNLOCK, (pacs_lock_key(pacs), slot, CHANNEL, pacs))
            except self._errors() as error:
                _log.warning("cluster_slot_release_failed", pacs=pacs, slot=slot, error=str(error))
        self._heard_one(pacs)

    def held(self) -> dict[str, int]:
        """Slots this node holds now, per PACS node."""
        with self._lock:
            return {pacs: len(slots) for pacs, slots in self._mine.items() if slots}

    def cluster_held(self, pacs: str) -> int:
        """Slots towards ``pacs`` held now by every node together (from ``pg_locks``).

        Raises:
            TransientError: PostgreSQL cannot be reached.
        """
        with self._lock:
            row = self._execute(_CLUSTER_HELD, (pacs_lock_key(pacs),)).fetchone()
        return int(row[0]) if row else 0

    # -- move_interval -----------------------------------------------------------------------

    def pace(self, pacs: str, interval: float) -> float:
        """Reserve the cluster's next C-MOVE/C-GET start towards ``pacs``, at least
        ``interval`` seconds after the one reserved before; return the seconds to wait.

        Raises:
            JobStoreError: the job store has no ``pacs_pace`` table (schema before v9).
            TransientError: PostgreSQL cannot be reached.
        """
        if interval <= 0:
            return 0.0
        with self._lock:
            row = self._execute(_PACE, {"pacs": pacs, "interval": float(interval)}).fetchone()
        return max(0.0, float(row[0])) if row else 0.0

    def close(self) -> None:
        """Stop listening and close both connections (the server frees the slots held)."""
        self._closed.set()
        self._listener.join(timeout=_LISTEN_TURN * 8)
        with self._lock:
            self._mine.clear()
            self._conn.close()
        self._listen.close()

    # -- internals ---------------------------------------------------------------------------

    def _connect(self, name: str) -> psycopg.Connection[Any]:
        import psycopg  # only a PostgreSQL store needs it

        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name=name,
                options=_SERVER_KEEPALIVE,
                **_CLIENT_KEEPALIVE,
            )
        except psycopg.OperationalError as error:
            raise JobStoreError(
                f"job store {self.where}: cannot connect for the cluster's PACS slots "
                f"({str(error).strip()}); check that PostgreSQL runs and the URL is right"
            ) from error

    def _listening(self) -> psycopg.Connection[Any]:
        connection = self._connect("pacsman-slots-listen")
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def _errors(self) -> type[Exception]:
        import psycopg

        return psycopg.Error

    def _execute(self, sql: str, params: Any) -> psycopg.Cursor[Any]:
        """Run ``sql`` on the slot connection (caller holds ``_lock``); reconnect once if
        the connection broke, taking back the slots this node held."""
        import psycopg

        try:
            return self._conn.execute(sql, params)
        except psycopg.errors.UndefinedTable as error:
            raise JobStoreError(
                f"job store {self.where}: table {PACE_TABLE!r} is missing (schema before "
                "v9); start `pacsman serve` once on this store to migrate it"
            ) from error
        except psycopg.OperationalError as error:
            if not self._conn.broken and not self._conn.closed:
                raise
            _log.warning("cluster_slots_reconnecting", jobstore=self.where, error=str(error))
        try:
            self._conn = self._connect("pacsman-slots")
        except JobStoreError as error:
            raise TransientError(str(error)) from error
        self._take_back()
        return self._conn.execute(sql, params)

    def _take_back(self) -> None:
        """After a reconnect: lock again the slots this node's threads still hold."""
        for pacs, slots in self._mine.items():
            for slot in sorted(slots):
                row = self._conn.execute(_TRY_LOCK, (pacs_lock_key(pacs), slot)).fetchone()
                if not (row and row[0]):
                    _log.warning("cluster_slot_lost", pacs=pacs, slot=slot)

    def _try_lock(self, pacs: str, key: int, limit: int) -> int | None:
        with self._lock:
            mine = self._mine.setdefault(pacs, set())
            for slot in range(limit):
                if slot in mine:
                    continue
                row = self._execute(_TRY_LOCK, (key, slot)).fetchone()
                if row and row[0]:
                    mine.add(slot)
                    return slot
        return None

    def _check(
        self,
        pacs: str,
        limit: int,
        halt: _Stop | None,
        deadline: float | None,
        timeout: float | None,
    ) -> None:
        if halt is not None and halt.is_set():
            raise Halted(
                f"waiting for an association slot to PACS node {pacs!r} (max_associations "
                f"{limit}, shared by the head nodes on {self.where}): stop requested"
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"no association slot to PACS node {pacs!r} within {timeout:g} s: all {limit} "
                f"(max_associations) are held by the head nodes on {self.where}; wait, or "
                "raise max_associations if the PACS allows more"
            )

    def _wait_for_release(
        self, pacs: str, heard: int, halt: _Stop | None, deadline: float | None
    ) -> bool:
        """Block until a release of ``pacs`` is heard (True), or ``fallback`` seconds pass,
        ``halt`` is set or ``deadline`` passes (False)."""
        until = time.monotonic() + self.fallback
        if deadline is not None:
            until = min(until, deadline)
        with self._wake:
            while self._heard.get(pacs, 0) == heard:
                left = until - time.monotonic()
                if left <= 0 or (halt is not None and halt.is_set()):
                    return False
                self._wake.wait(min(left, _HALT_CHECK) if halt is not None else left)
        return True

    def _stagger(self, pacs: str) -> None:
        """After a release: a node that holds slots towards ``pacs`` lets the others try
        first, a few milliseconds per slot it holds."""
        with self._lock:
            held = len(self._mine.get(pacs, ()))
        if held:
            self._closed.wait(min(held * _STAGGER, _HALT_CHECK))

    def _heard_count(self, pacs: str) -> int:
        with self._wake:
            return self._heard.get(pacs, 0)

    def _heard_one(self, pacs: str) -> None:
        with self._wake:
            self._heard[pacs] = self._heard.get(pacs, 0) + 1
            self._wake.notify_all()

    def _hear(self) -> None:
        """The listening thread: every NOTIFY on :data:`CHANNEL` wakes this node's waiters
        for that PACS node; a broken connection is opened again, once a second."""
        while not self._closed.is_set():
            try:
                for notify in self._listen.notifies(timeout=_LISTEN_TURN):
                    self._heard_one(notify.payload)
            except self._errors() as error:
                if self._closed.is_set():
                    return
                _log.warning("cluster_slots_listen_lost", jobstore=self.where, error=str(error))
                self._relisten()

    def _relisten(self) -> None:
        while not self._closed.wait(self.fallback):
            try:
                self._listen = self._listening()
            except JobStoreError:
                continue
            return
