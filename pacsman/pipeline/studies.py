"""A service job's work, study by study, shared with the other head nodes.

Once the job's rows are queried, its studies are claimable by every head node working on
the job (:mod:`pacsman.jobstore.claims`).  This node claims a batch, works through it
exactly as the one-shot command does (retrieve, verify, de-identify, push: one pass, the
run seen through the batch's lease), settles the batch, and claims again.  The node that
claimed the job (its coordinator) also waits for the studies other nodes hold, and takes
over those whose lease expired; another node (a helper) stops when nothing is left to claim.

A batch is the share of the studies still open that keeps every live node busy: all of them
when this node is alone, else about half of an even share, so that a faster node claims
again while a slower one finishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from pacsman.errors import LeaseLost
from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.claims import ClaimCounts, LiveLeases
from pacsman.models import ItemState
from pacsman.throttle import check_halt, current_ticket

__all__ = ["batch_size", "work_by_study"]

_log = structlog.get_logger("pacsman.pipeline")

#: The most studies one batch claims (a pass with more would hold them from other nodes).
MAX_BATCH = 500
#: The fewest a batch claims while that many are left (each batch has a fixed cost).
MIN_BATCH = 2
#: How long a waiting coordinator sleeps at most between looks (a NOTIFY wakes it sooner).
_WAIT = 1.0


def batch_size(counts: ClaimCounts, live_nodes: int) -> int:
    """How many studies to claim now: all when alone; else half an even share of what is
    left (at least MIN_BATCH), and never more than this node's even share of the studies not
    yet settled (0: leave them to the others)."""
    if live_nodes <= 1:
        return max(1, min(counts.claimable, MAX_BATCH))
    share = math.ceil(counts.unsettled / live_nodes) - counts.mine
    batch = max(math.ceil(counts.claimable / (2 * live_nodes)), min(MIN_BATCH, counts.claimable))
    return max(0, min(batch, share, MAX_BATCH))


def work_by_study(
    store: JobStore,
    run: Run,
    *,
    job_id: int,
    node: str,
    lease_seconds: float,
    coordinator: bool,
    one_pass: Callable[[Run], int],
    wants: tuple[bool, str | None],
    leases: LiveLeases,
    takeover: bool = False,
) -> int:
    """Claim, work through and settle batches of the job's studies; return items worked on.

    ``one_pass(run)`` works on the run seen through a lease; ``wants`` is (de-identify,
    push target) to tell a study worked through from one that failed.  Each batch's lease is
    in ``leases`` while it is worked on (the node renews only those).  With ``takeover``,
    only studies whose lease expired are claimed (all of them at once), and the work ends
    when none is left: a dead node's studies need not wait for a batch to end.

    Raises:
        Halted: the job was asked to stop; this node's unfinished studies are given back.
    """
    store.open_studies(run, job_id)
    worked = 0
    for _ in range(1_000_000):  # bounded: every turn claims, or waits on a change
        check_halt()
        counts = store.claim_counts(job_id, node)
        limit = (
            counts.expired if takeover else batch_size(counts, _live_nodes(store, lease_seconds))
        )
        lease = None
        if limit > 0:
            lease = store.claim_studies(
                run,
                job_id,
                node,
                limit=limit,
                lease_seconds=lease_seconds,
                expired_only=takeover,
            )
        if lease is not None:
            with leases.working_on(lease):
                worked += _one_batch(store, replace(run, lease=lease), one_pass, wants)
            continue
        if not coordinator or takeover or counts.unsettled == 0:
            return worked
        _wait_for_others(store, counts.held)
    return worked


def _one_batch(
    store: JobStore, scoped: Run, one_pass: Callable[[Run], int], wants: tuple[bool, str | None]
) -> int:
    lease = scoped.lease
    assert lease is not None
    _log.info("studies_claimed", studies=lease.studies, generation=lease.generation)
    try:
        worked = one_pass(scoped)
    except LeaseLost as exc:
        _log.warning("lease_lost", generation=lease.generation, problem=str(exc))
        return 0
    except BaseException:
        store.release_studies(lease, "given back: the job stopped on this node")
        raise
    settled = store.settle_studies(scoped, failed=_failed_studies(store, scoped, wants))
    if settled < lease.studies:
        _log.warning(
            "lease_lost",
            generation=lease.generation,
            studies=lease.studies - settled,
            problem="taken over by another node while this one worked (its lease expired)",
        )
    return worked


def _failed_studies(store: JobStore, run: Run, wants: tuple[bool, str | None]) -> set[str]:
    """The studies of ``run``'s lease with a series that did not get as far as asked."""
    deidentify, target = wants
    pushed = store.push_states(run, target) if target is not None else {}
    failed = set()
    for series in store.series_for_push(run):
        ok = series.state is ItemState.COMPLETE
        if ok and deidentify:
            ok = series.anonymization is ItemState.ANONYMIZED
        if ok and target is not None:
            push = pushed.get((series.xnat_subject, series.xnat_session))
            ok = push is not None and push.state is ItemState.DONE
        if not ok:
            failed.add(series.study_instance_uid)
    return failed


#: A head node beats every 5 s: one silent for longer than this is not counted as live.
_ALIVE_WITHIN = 15.0


def _live_nodes(store: JobStore, lease_seconds: float) -> int:
    now = datetime.now(UTC)
    within = max(lease_seconds, _ALIVE_WITHIN)
    return sum(1 for n in store.service_nodes() if n.alive(now, within=within))


def _wait_for_others(store: JobStore, held: int) -> None:
    """Wait until a study changes hands (a NOTIFY, or SQLite's data version), the job's
    halt is set, or a second passes: then look again."""
    _log.debug("waiting_for_other_nodes", studies_held=held)
    halt = current_ticket().halt
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        if store.changed_elsewhere():
            return
        if halt is not None and halt.wait(0.1):
            return
        if halt is None:
            time.sleep(0.1)
