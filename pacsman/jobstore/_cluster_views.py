"""The head nodes of a job store and where each study of a job is, as status views read them
(private to the package; :class:`~pacsman.jobstore.JobStore` mixes :class:`ClusterViews` in).

Each method is one query, on SQLite and PostgreSQL alike: the head nodes with what they hold
and did (:meth:`ClusterViews.head_nodes`), each study of a job with the node that holds it
(:meth:`ClusterViews.study_places`), and the studies per node and state for ``/metrics``
(:meth:`ClusterViews.study_totals`).  Leases are timed by the database's clock; whether a
node is alive is read from its heartbeat, which it writes with its own clock.

A :class:`StudyPlace` carries the StudyInstanceUID: views show it only where they show
identifiers (the web page with the token); the others name a study by its query-file line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pacsman.jobstore._backend import EPOCH_NOW
from pacsman.jobstore.claims import StudyState

__all__ = ["ALIVE_WITHIN", "ClusterViews", "HeadNode", "NodeState", "StudyPlace"]

#: A head node beats every 5 s; one silent for longer than this (3 × the default
#: ``serve.lease_seconds``) is shown as stale: dead, stopped (SIGSTOP) or cut off.
ALIVE_WITHIN = 90.0


class NodeState(StrEnum):
    """A head node as its heartbeat shows it."""

    ALIVE = "alive"  # beat within ALIVE_WITHIN seconds
    STALE = "stale"  # no beat for longer: killed, paused or cut off (it did not stop cleanly)
    STOPPED = "stopped"  # stopped cleanly (drained)


def _ago(seconds: float) -> str:
    """``12 s``, ``3 min 05 s``, ``2 h 07 min``."""
    whole = max(round(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {whole:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class HeadNode:
    """A ``pacsman serve`` process of this job store, with the studies it holds and did."""

    node_name: str
    pid: int
    host: str
    http_url: str
    started_at: str
    heartbeat_at: str
    stopped_at: str
    status: str  # its one-line status (systemd's STATUS=), as of its last heartbeat
    ae_title: str  # its Storage SCP: the PACS's move destination for this node
    scp_port: int
    held: int  # studies it holds now, under an unexpired lease
    expired: int  # studies whose lease it let expire: another node takes them over
    done: int  # studies worked through on it (their files are on its disk)
    failed: int

    def heartbeat_age(self, now: datetime) -> float | None:
        """Seconds since its last heartbeat (None: never beat)."""
        if not self.heartbeat_at:
            return None
        return (now - datetime.fromisoformat(self.heartbeat_at)).total_seconds()

    def state(self, now: datetime) -> NodeState:
        if self.stopped_at:
            return NodeState.STOPPED
        age = self.heartbeat_age(now)
        return NodeState.ALIVE if age is not None and age <= ALIVE_WITHIN else NodeState.STALE

    def studies_text(self) -> str:
        """``2 held now, 5 done, 1 failed, 1 lease expired`` (``none`` when it has none)."""
        parts = [f"{self.held} held now"] if self.held else []
        parts += [f"{self.done} done"] if self.done else []
        parts += [f"{self.failed} failed"] if self.failed else []
        if self.expired:
            parts.append(f"{self.expired} lease(s) expired: another node will take them over")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class StudyPlace:
    """One study of a job: its state between the head nodes, and the node that holds it."""

    line: int  # the first query-file line that selected it (0: none known)
    pacs: str
    study_instance_uid: str  # an identifier: shown only where identifiers are
    state: StudyState
    owner_node: str  # the node that claimed it ('' once released)
    holder_node: str  # the node whose disk holds its files ('' before any)
    generation: int
    expires_in: float  # seconds left on the lease, by the database's clock (< 0: expired)
    detail: str
    series: int

    @property
    def expired(self) -> bool:
        return self.state is StudyState.CLAIMED and self.expires_in <= 0

    @property
    def node(self) -> str:
        """The node that holds it now: its owner while claimed, else where its files are."""
        return self.owner_node if self.state is StudyState.CLAIMED else self.holder_node

    @property
    def shown_state(self) -> str:
        """Its state, with ``EXPIRED`` for a claim past its lease."""
        return "EXPIRED" if self.expired else self.state

    def to_json(self, *, uids: bool = False) -> dict[str, Any]:
        """The study as ``status --json`` and the API give it; its StudyInstanceUID only with
        ``uids`` (where identifiers may be shown)."""
        shown: dict[str, Any] = {
            "line": self.line,
            "pacs": self.pacs,
            "state": self.shown_state,
            "node": self.node,
            "owner_node": self.owner_node,
            "holder_node": self.holder_node,
            "generation": self.generation,
            "lease_seconds_left": round(self.expires_in, 1)
            if self.state is StudyState.CLAIMED
            else None,
            "series": self.series,
            "where": self.where(),
        }
        if uids:
            shown["StudyInstanceUID"] = self.study_instance_uid
        return shown

    def where(self) -> str:
        """Which node holds it, in words (no identifier)."""
        if self.expired:
            return (
                f"lease of {self.owner_node} expired {_ago(-self.expires_in)} ago: "
                "another node will take it over"
            )
        if self.state is StudyState.CLAIMED:
            return (
                f"held by {self.owner_node}: lease {_ago(self.expires_in)} left "
                f"(generation {self.generation})"
            )
        if self.state is StudyState.OPEN:
            files = f"; files so far on {self.holder_node}" if self.holder_node else ""
            why = f" ({self.detail})" if self.detail else ""
            return f"open: the next node to ask claims it{files}{why}"
        return f"{self.state.lower()} on {self.holder_node or '-'}"

    @staticmethod
    def by_node(places: Iterable[StudyPlace]) -> dict[str, Counter[str]]:
        """node -> studies per shown state (``CLAIMED``, ``EXPIRED``, ``DONE``, ``FAILED``),
        nodes in name order; open studies belong to no node."""
        found: dict[str, Counter[str]] = {}
        for place in places:
            if place.state is not StudyState.OPEN and place.node:
                found.setdefault(place.node, Counter())[place.shown_state] += 1
        return dict(sorted(found.items()))

    @staticmethod
    def first_to_look_at(places: Iterable[StudyPlace]) -> list[StudyPlace]:
        """Expired leases first, then held, failed, open and done studies; by line within."""
        order = {"EXPIRED": 0, "CLAIMED": 1, "FAILED": 2, "OPEN": 3, "DONE": 4}
        return sorted(places, key=lambda p: (order.get(p.shown_state, 5), p.line, p.pacs))


#: Per node: studies held (unexpired), expired, done and failed.  A claimed study counts for
#: its owner, a settled one for the node whose disk holds it.
_PER_NODE = (
    "SELECT CASE WHEN state = 'CLAIMED' THEN owner_node ELSE holder_node END AS node, "
    f"SUM(CASE WHEN state = 'CLAIMED' AND lease_expires_at > {EPOCH_NOW} THEN 1 ELSE 0 END) "
    "AS held, "
    f"SUM(CASE WHEN state = 'CLAIMED' AND lease_expires_at <= {EPOCH_NOW} THEN 1 ELSE 0 END) "
    "AS expired, "
    "SUM(CASE WHEN state = 'DONE' THEN 1 ELSE 0 END) AS done, "
    "SUM(CASE WHEN state = 'FAILED' THEN 1 ELSE 0 END) AS failed "
    "FROM study_claims WHERE state != 'OPEN' "
    "GROUP BY CASE WHEN state = 'CLAIMED' THEN owner_node ELSE holder_node END"
)


def _head_node(r: Sequence[Any]) -> HeadNode:
    return HeadNode(
        node_name=str(r[0]),
        pid=int(r[1]),
        host=str(r[2]),
        http_url=str(r[3]),
        started_at=str(r[4]),
        heartbeat_at=str(r[5]),
        stopped_at=str(r[6]),
        status=str(r[7]),
        ae_title=str(r[8]),
        scp_port=int(r[9]),
        held=int(r[10]),
        expired=int(r[11]),
        done=int(r[12]),
        failed=int(r[13]),
    )


def _study_place(r: Sequence[Any]) -> StudyPlace:
    return StudyPlace(
        line=int(r[0] or 0),
        pacs=str(r[1]),
        study_instance_uid=str(r[2]),
        state=StudyState(str(r[3])),
        owner_node=str(r[4]),
        holder_node=str(r[5]),
        generation=int(r[6]),
        expires_in=float(r[7]),
        detail=str(r[8]),
        series=int(r[9] or 0),
    )


class ClusterViews:
    """Read-only views of the head nodes and the studies they hold; needs ``_read``."""

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # JobStore's

    def head_nodes(self) -> list[HeadNode]:
        """Every node that ever served this job store, by name, with its studies now."""
        rows = self._read(
            "SELECT n.node_name, n.pid, n.host, n.http_url, n.started_at, n.heartbeat_at, "
            "n.stopped_at, n.status, n.ae_title, n.scp_port, COALESCE(s.held, 0), "
            "COALESCE(s.expired, 0), COALESCE(s.done, 0), COALESCE(s.failed, 0) "
            f"FROM service_nodes n LEFT JOIN ({_PER_NODE}) s ON s.node = n.node_name "
            "ORDER BY n.node_name"
        )
        return [_head_node(r) for r in rows]

    def study_places(self, job_id: int) -> list[StudyPlace]:
        """Every study of job ``job_id`` with the node that holds it, in query-file order."""
        rows = self._read(
            "SELECT se.line, c.pacs, c.study_instance_uid, c.state, c.owner_node, "
            f"c.holder_node, c.generation, c.lease_expires_at - {EPOCH_NOW}, c.detail, "
            "se.series FROM study_claims c LEFT JOIN (SELECT run_id, pacs, "
            "study_instance_uid, MIN(line) AS line, COUNT(*) AS series FROM series "
            "WHERE run_id IN (SELECT run_id FROM study_claims WHERE job_id = ?) "
            "GROUP BY run_id, pacs, study_instance_uid) se ON se.run_id = c.run_id "
            "AND se.pacs = c.pacs AND se.study_instance_uid = c.study_instance_uid "
            "WHERE c.job_id = ? ORDER BY COALESCE(se.line, 0), c.pacs, c.study_instance_uid",
            (job_id, job_id),
        )
        return [_study_place(r) for r in rows]

    def study_totals(self) -> list[tuple[str, int, int, int, int]]:
        """(node, held, expired, done, failed) for every node with studies, over every job."""
        rows = self._read(f"SELECT node, held, expired, done, failed FROM ({_PER_NODE}) s")
        return [(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
