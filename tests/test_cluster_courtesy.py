"""PACS courtesy across head nodes: ``max_associations`` and ``move_interval`` per PACS node
hold for every node on one PostgreSQL job store (pacsman.jobstore.slots.ClusterSlots), and
the service's throttle goes through that gate under its own per-process fairness.

Each ClusterSlots is one head node (its own connections); a real PostgreSQL is started for the
module; each test has its own database.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from pacsman.config import PacsNode
from pacsman.dicom.client import DicomPeer, associate
from pacsman.errors import Halted, JobStoreError
from pacsman.jobstore.slots import PACE_TABLE, ClusterSlots, pacs_lock_key
from pacsman.testing.fakepacs import FakePacs
from pacsman.testing.postgres import PostgresServer
from pacsman.throttle import Halt, SharedCourtesy, Ticket, working_for

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed; pip install -e .[test]")

pytestmark = pytest.mark.postgres

#: The pace table as the job store's schema v9 creates it.
_PACE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PACE_TABLE} "
    "(pacs TEXT PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL)"
)
_VERIFICATION = "1.2.840.10008.1.1"
_DEADLINE = 30.0
_NUMBERS = itertools.count()


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    """A fresh database with the pace table (if the job store schema has not made it)."""
    name = f"courtesy_{next(_NUMBERS)}"
    postgres.create_database(name)
    with psycopg.connect(postgres.dsn(name), autocommit=True) as connection:
        connection.execute(_PACE_DDL)
    return postgres.dsn(name)


@pytest.fixture
def nodes(url: str) -> Iterator[Callable[..., ClusterSlots]]:
    """Factory of head nodes on ``url``, closed at the end."""
    made: list[ClusterSlots] = []

    def make(**kwargs: Any) -> ClusterSlots:
        node = ClusterSlots(url, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


class _Watched:
    """A halt signal that tells when the waiter has looked at it ``after`` times: the
    waiter is in its wait (is_set is asked before the first try and while waiting)."""

    def __init__(self, after: int = 2) -> None:
        self.event, self.waiting = threading.Event(), threading.Event()
        self._asked, self._after = 0, after

    def is_set(self) -> bool:
        self._asked += 1
        if self._asked >= self._after:
            self.waiting.set()
        return self.event.is_set()


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; the list gets its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_three_nodes_never_hold_more_than_the_limit(
    nodes: Callable[..., ClusterSlots],
) -> None:
    """Three nodes, four threads each, hammering one PACS with limit 2: never more than 2
    held at once, every acquirer gets through, in bounded time."""
    cluster = [nodes(), nodes(), nodes()]
    lock, holding, peak, done = threading.Lock(), [0], [0], [0]

    def hammer(node: ClusterSlots) -> None:
        for _ in range(5):
            slot = node.acquire("pacs-a", 2, timeout=_DEADLINE)
            with lock:
                holding[0] += 1
                peak[0] = max(peak[0], holding[0])
            time.sleep(0.005)  # the association's work
            with lock:
                holding[0] -= 1
                done[0] += 1
            node.release("pacs-a", slot)

    started = time.monotonic()
    threads = [_in_thread(lambda n=node: hammer(n)) for node in cluster for _ in range(4)]
    for thread, outcome in threads:
        thread.join(_DEADLINE)
        assert outcome == [None]
    assert done[0] == 60
    assert peak[0] == 2
    assert time.monotonic() - started < _DEADLINE
    assert cluster[0].cluster_held("pacs-a") == 0
    assert cluster[1].held() == {}


def test_a_waiter_wakes_by_notify_long_before_the_fallback(
    nodes: Callable[..., ClusterSlots],
) -> None:
    """A node waiting for the only slot wakes as soon as another node releases it: by
    NOTIFY, since its fallback retry is 30 s away."""
    holder, waiter = nodes(), nodes(fallback=30.0)
    slot = holder.acquire("pacs-b", 1)
    watched = _Watched()
    thread, outcome = _in_thread(lambda: waiter.acquire("pacs-b", 1, halt=watched))
    assert watched.waiting.wait(_DEADLINE)
    assert thread.is_alive()
    released = time.monotonic()
    holder.release("pacs-b", slot)
    thread.join(_DEADLINE)
    assert outcome == [0]
    assert time.monotonic() - released < 1.0
    assert waiter.held() == {"pacs-b": 1}
    assert holder.cluster_held("pacs-b") == 1


_HOLDER = """
import sys
from pacsman.jobstore.slots import ClusterSlots
node = ClusterSlots(sys.argv[1])
print(node.acquire("pacs-c", 2), node.acquire("pacs-c", 2), flush=True)
sys.stdin.read()
"""


def test_a_killed_node_frees_its_slots_a_stopped_one_keeps_them(
    nodes: Callable[..., ClusterSlots], url: str
) -> None:
    """A node process holding both slots: while SIGSTOPped it keeps them (it still holds
    its associations); once killed with -9 they are free for others within the fallback."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "0 1"
        other = nodes()
        assert other.cluster_held("pacs-c") == 2
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(TimeoutError, match=r"no association slot to PACS node 'pacs-c'"):
            other.acquire("pacs-c", 2, timeout=0.3)
        thread, outcome = _in_thread(lambda: other.acquire("pacs-c", 2, timeout=_DEADLINE))
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        thread.join(_DEADLINE)
        assert outcome in ([0], [1])
        assert time.monotonic() - killed < other.fallback + 1.0
    finally:
        holder.kill()
        holder.wait(_DEADLINE)


def test_a_terminated_backend_frees_its_slots(
    nodes: Callable[..., ClusterSlots], postgres: PostgresServer, url: str
) -> None:
    """A node whose connection the server ends (pg_terminate_backend) loses its slots at
    once; the waiter gets one within the fallback (no NOTIFY comes).  The node's next call
    opens a new connection."""
    holder, waiter = nodes(), nodes()
    holder.acquire("pacs-d", 1)
    thread, outcome = _in_thread(lambda: waiter.acquire("pacs-d", 1, timeout=_DEADLINE))
    with psycopg.connect(url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'pacsman-slots' AND pid IN "
            "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid)",
            (pacs_lock_key("pacs-d"),),
        ).fetchall()
    terminated = time.monotonic()
    assert ended == [(True,)]
    thread.join(_DEADLINE)
    assert outcome == [0]
    assert time.monotonic() - terminated < waiter.fallback + 1.0
    with capture_logs() as logs:
        holder.release("pacs-d", 0)
        assert holder.acquire("pacs-d2", 1, timeout=_DEADLINE) == 0
    events = [entry["event"] for entry in logs]
    assert events == ["cluster_slot_release_failed", "cluster_slots_reconnecting"]
    assert holder.held() == {"pacs-d2": 1}


def test_pace_spaces_starts_across_nodes(nodes: Callable[..., ClusterSlots]) -> None:
    """Three nodes reserving two C-MOVE starts each with interval 0.2 s, all at once: the
    starts are at least 0.2 s apart whatever the order."""
    cluster = [nodes(), nodes(), nodes()]
    barrier = threading.Barrier(3)
    starts: list[float] = []
    lock = threading.Lock()

    def reserve(node: ClusterSlots) -> None:
        barrier.wait(_DEADLINE)
        for _ in range(2):
            wait = node.pace("pacs-e", 0.2)
            start = time.monotonic() + wait
            with lock:
                starts.append(start)
            time.sleep(max(0.0, start - time.monotonic()))  # wait for the turn, as Courtesy

    threads = [_in_thread(lambda n=node: reserve(n)) for node in cluster]
    for thread, outcome in threads:
        thread.join(_DEADLINE)
        assert outcome == [None]
    starts.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == 6
    assert min(gaps) > 0.2 - 0.05, gaps
    assert cluster[0].pace("pacs-e", 0.0) == 0.0


def test_pace_without_the_table_names_the_fix(postgres: PostgresServer) -> None:
    """A job store whose schema has no pace table says so, and how to migrate it."""
    postgres.create_database("courtesy_no_pace")
    with (
        ClusterSlots(postgres.dsn("courtesy_no_pace")) as node,
        pytest.raises(JobStoreError, match=r"table 'pacs_pace' is missing .*pacsman serve"),
    ):
        node.pace("pacs-f", 0.5)


def test_a_halted_waiter_returns_promptly(nodes: Callable[..., ClusterSlots]) -> None:
    """A waiter whose halt is set stops waiting at once with Halted."""
    holder, waiter = nodes(), nodes(fallback=30.0)
    holder.acquire("pacs-g", 1)
    watched = _Watched()
    thread, outcome = _in_thread(lambda: waiter.acquire("pacs-g", 1, halt=watched))
    assert watched.waiting.wait(_DEADLINE)
    halted = time.monotonic()
    watched.event.set()
    thread.join(_DEADLINE)
    assert time.monotonic() - halted < 0.5
    assert len(outcome) == 1
    assert isinstance(outcome[0], Halted)
    assert "slot to PACS node 'pacs-g'" in str(outcome[0])
    assert waiter.held() == {}


def test_no_server_names_the_job_store() -> None:
    """A node that cannot reach PostgreSQL says which job store and what to check."""
    with pytest.raises(JobStoreError, match=r"cannot connect for the cluster's PACS slots"):
        ClusterSlots("postgresql://pacsman@127.0.0.1:1/none", connect_timeout=2)


# -- the throttle's hook -------------------------------------------------------------------


class _FakeGate:
    """A ClusterGate that records each call with the local slots in use at that moment."""

    def __init__(self, shared: SharedCourtesy, *, fail: Exception | None = None) -> None:
        self.shared, self.fail = shared, fail
        self.calls: list[tuple[str, str, float, int]] = []
        self.wait = 0.0

    def _local(self, pacs: str) -> int:
        return self.shared.in_use().get(pacs, 0)

    def acquire(
        self, pacs: str, limit: int, *, halt: Any = None, timeout: float | None = None
    ) -> int:
        self.calls.append(("acquire", pacs, limit, self._local(pacs)))
        if self.fail is not None:
            raise self.fail
        return 7

    def release(self, pacs: str, slot: int) -> None:
        self.calls.append(("release", pacs, slot, self._local(pacs)))

    def pace(self, pacs: str, interval: float) -> float:
        self.calls.append(("pace", pacs, interval, 0))
        return self.wait

    def held(self) -> dict[str, int]:
        return {}

    def cluster_held(self, pacs: str) -> int:
        return 5


def _shared_with_fake(**kwargs: Any) -> tuple[SharedCourtesy, _FakeGate]:
    shared = SharedCourtesy()
    gate = _FakeGate(shared, **kwargs)
    shared.cluster = gate
    return shared, gate


def test_slots_take_the_local_slot_then_the_clusters_and_give_back_in_reverse() -> None:
    """acquire: local slot first (1 in use when the gate is asked), then the cluster's;
    release: the cluster's first (the local one still counted), then the local one."""
    shared, gate = _shared_with_fake()
    with working_for(Ticket(job="j1", halt=Halt(), shared=shared)):
        slots = shared.slots("pacs-h", 2)
        slots.acquire()
        slots.release()
    assert gate.calls == [("acquire", "pacs-h", 2, 1), ("release", "pacs-h", 7, 1)]
    assert shared.in_use() == {"pacs-h": 0}
    assert shared.cluster_in_use() == {"pacs-h": 5}


def test_a_cluster_wait_that_fails_gives_the_local_slot_back() -> None:
    """A halted cluster wait ends in the job's own Halted, its local slot freed."""
    shared, _gate = _shared_with_fake(fail=Halted("cluster wait stopped"))
    halt = Halt()
    halt.set("cancelled by the operator")
    with (
        working_for(Ticket(job="j2", halt=halt, shared=shared)),
        pytest.raises(Halted, match=r"job j2: cancelled by the operator"),
    ):
        shared.slots("pacs-i", 1).acquire()
    assert shared.in_use() == {"pacs-i": 0}


def test_courtesy_reserves_each_start_in_the_cluster() -> None:
    """With an interval, every retrieve start is reserved in the cluster and waits what it
    says; without one, the cluster is not asked."""
    shared, gate = _shared_with_fake()
    gate.wait = 0.1
    courtesy = shared.courtesy("pacs-j", interval=0.05, window=None)
    started = time.monotonic()
    courtesy.wait_turn()
    assert time.monotonic() - started >= 0.1
    assert gate.calls == [("pace", "pacs-j", 0.05, 0)]
    shared.courtesy("pacs-k", interval=0.0, window=None).wait_turn()
    assert len(gate.calls) == 1


def test_associations_from_two_nodes_respect_the_clusters_limit(
    url: str, fake_pacs: Callable[..., FakePacs]
) -> None:
    """Two service processes' courtesy (two ClusterSlots), three threads each opening
    associations to one PACS with max_associations 2: the PACS never sees more than 2."""
    pacs = fake_pacs()
    node = PacsNode("fake", pacs.host, pacs.port, pacs.ae_title, max_associations=2)
    peer = DicomPeer(node, "PACSMAN")
    gates = [ClusterSlots(url), ClusterSlots(url)]
    try:
        services = [SharedCourtesy(cluster=gate) for gate in gates]

        def work(shared: SharedCourtesy, job: str) -> None:
            with working_for(Ticket(job=job, halt=Halt(), shared=shared)):
                for _ in range(3):
                    with associate(peer, [_VERIFICATION]) as association:
                        association.send_c_echo()

        threads = [
            _in_thread(lambda s=shared, j=f"job{i}": work(s, j))
            for shared in services
            for i in range(3)
        ]
        for thread, outcome in threads:
            thread.join(_DEADLINE)
            assert outcome == [None]
        assert pacs.peak_associations <= 2
        assert gates[0].cluster_held("fake") == 0
    finally:
        for gate in gates:
            gate.close()
