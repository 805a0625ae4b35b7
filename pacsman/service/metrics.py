"""``/metrics``: the running service in Prometheus' text format (prometheus-client).

Two sources, one registry of our own (never prometheus-client's global one):

* **Live counters**, counted from the service's start: what the service logs, handed over
  by :meth:`ServiceMetrics.observe` (a log observer, :func:`pacsman.log.add_observer`, which
  sees the de-identify/push process's forwarded events too), and the instances and bytes the
  job runner reports (:meth:`ServiceMetrics.retrieved`).  Retries by cause, final DIMSE
  statuses, series verdicts, push latency.
* **Gauges read at each scrape**: jobs and their rows, series, sessions and queues from the
  job store (a few aggregate queries in one snapshot, whatever the jobs' size), and
  readiness and associations from the running service (:class:`ServiceView`).

No patient data reaches a metric.  Every label value is a job's number, a name from the
config (PACS node, the service's node, the head nodes' ``serve.node_name``), or one of a
closed set (states, stages, causes, operations, ``0xA702``-style status codes); anything
else is counted as ``other``.  A job's name is free text typed by a person and is left out;
so are UIDs, labels and paths.  With several head nodes on one job store, the nodes and the
studies each holds are read from the store: any node's ``/metrics`` shows the whole cluster.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from pacsman import __version__
from pacsman.errors import PacsmanError
from pacsman.jobstore.jobs import FINAL_STATES, Job, JobState
from pacsman.models import ItemState
from pacsman.service.state import ServiceView

__all__ = ["ClusterTotals", "JobTotals", "ServiceMetrics", "retry_cause"]

#: Jobs that ended longer ago than this leave the per-job metrics (``pacsman_jobs`` keeps
#: counting them): the label sets stay bounded on a service that runs for months.
RECENT = timedelta(hours=24)
#: At most this many jobs (the newest) get per-job metrics.
MAX_JOBS = 200
#: Push latency buckets, seconds: a small session in a second, a large one in many minutes.
PUSH_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

_OTHER = "other"
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,39}")
_STATUS = re.compile(r"0x[0-9A-Fa-f]{4}")
_ITEM_STATES = frozenset(s.value for s in ItemState)
_SETTLED = frozenset(s.value for s in (ItemState.COMPLETE, ItemState.INCOMPLETE, ItemState.FAILED))


@runtime_checkable
class JobTotals(Protocol):
    """What ``/metrics`` reads of a job store beside its jobs: aggregates per job (the job
    store's ``MetricsViews``; a PostgreSQL backend answers the same three)."""

    def job_series_totals(
        self, job_ids: Sequence[int]
    ) -> Sequence[tuple[int, str, str, int, int, int]]: ...

    def job_row_totals(self, job_ids: Sequence[int]) -> Sequence[tuple[int, str, int]]: ...

    def job_session_totals(self, job_ids: Sequence[int]) -> Sequence[tuple[int, str, int]]: ...


class _HeadNode(Protocol):
    def state(self, now: datetime) -> str: ...


@runtime_checkable
class ClusterTotals(Protocol):
    """What ``/metrics`` reads of the head nodes sharing the job store (its
    ``ClusterViews``): one query each."""

    def head_nodes(self) -> Sequence[_HeadNode]: ...

    def study_totals(self) -> Sequence[tuple[str, int, int, int, int]]: ...


#: The states ``pacsman_cluster_nodes`` counts (``NodeState``).
_NODE_STATES = ("alive", "stale", "stopped")


# -- retry causes -----------------------------------------------------------------------------

#: (pattern in the retry's reason, cause), first match wins; the reason itself never leaves.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cause)
    for pattern, cause in (
        (r"0xA7[0-9A-F]{2}|out of resources", "congestion"),
        (r"0xFE00", "cancelled"),
        (r"rejected the association", "association_rejected"),
        (r"association request|open an association", "association_failed"),
        (r"connection refused|no TCP connection|connection failed|does not resolve", "connection"),
        (r"without a final status|got no answer|did not answer|no answer|undecodable", "no_answer"),
        (r"timed out|timeout|response within", "timeout"),
        (r"aborted|no longer established", "aborted"),
        (r"logging in again|login", "xnat_login"),
        (r"prearchive", "xnat_building"),
        (r"holds \d+ of \d+ file", "incomplete_on_target"),
        (r"0x[0-9A-F]{4}", "dimse_failure"),
    )
)
_HTTP = re.compile(r"XNAT answered (\d{3})")


def retry_cause(reason: str) -> str:
    """A short class for why an operation is retried, from its reason (a message that may
    name a session or a file): ``congestion``, ``http_503``, ``timeout``... or ``other``."""
    http = _HTTP.search(reason)
    if http is not None:
        return f"http_{http.group(1)}"
    for pattern, cause in _CAUSES:
        if pattern.search(reason):
            return cause
    return _OTHER


def _token(value: object) -> str:
    """``value`` if it is a short snake_case word (an operation, a cause), else ``other``."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else _OTHER


def _status(value: object) -> str:
    """A DIMSE status as ``0xA702``; ``none`` when no final status came; else ``other``."""
    if value is None:
        return "none"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return f"0x{value:04X}"
    if isinstance(value, str) and _STATUS.fullmatch(value):
        return f"0x{value[2:].upper()}"
    return _OTHER


def _state(value: object) -> str:
    return value if isinstance(value, str) and value in _ITEM_STATES else _OTHER


def _count(value: object, default: int = 1) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


# -- the live counters ------------------------------------------------------------------------


class _Live:
    """The counters events and the job runner feed (thread-safe: prometheus-client's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, text: str, labels: Sequence[str]) -> Counter:
            return Counter(name, text, labels, registry=registry)

        self.instances = counter(
            "pacsman_retrieved_instances_total",
            "Instances received from each PACS since the service started.",
            ["pacs"],
        )
        self.size = counter(
            "pacsman_retrieved_bytes_total",
            "Bytes of instances received from each PACS since the service started.",
            ["pacs"],
        )
        self.retries = counter(
            "pacsman_retries_total",
            "Operations retried after a transient failure, by operation, cause and PACS node "
            "('' for XNAT and push operations).",
            ["operation", "cause", "pacs"],
        )
        self.dimse = counter(
            "pacsman_dimse_responses_total",
            "Final DIMSE statuses the PACS nodes answered, by operation and status code "
            "('none': the exchange ended without one).",
            ["pacs", "operation", "status"],
        )
        self.verdicts = counter(
            "pacsman_series_verdicts_total",
            "Series whose retrieve pass ended, by PACS node and verdict "
            "(COMPLETE, INCOMPLETE, FAILED).",
            ["pacs", "state"],
        )
        self.pushes = counter(
            "pacsman_sessions_pushed_total",
            "Sessions (XNAT experiments) whose push ended, by outcome (DONE, FAILED).",
            ["state"],
        )
        self.push_seconds = Histogram(
            "pacsman_push_seconds",
            "Seconds from the start of a session's push to its outcome, retries included.",
            ["state"],
            buckets=PUSH_BUCKETS,
            registry=registry,
        )


# -- what the store and the view say at a scrape ---------------------------------------------


@dataclass
class _JobCounts:
    """One job's counts, summed from the store's aggregates."""

    rows: Tally[str] = field(default_factory=Tally)
    series: Tally[tuple[str, str]] = field(default_factory=Tally)  # (stage, state)
    sessions: Tally[str] = field(default_factory=Tally)
    expected: int = 0
    verified: int = 0
    undeidentified: int = 0  # COMPLETE series not de-identified yet


def _gauge(name: str, text: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=list(labels))


def _recent(jobs: Iterable[Job], now: datetime) -> list[Job]:
    """The jobs that get per-job metrics: not ended, or ended within :data:`RECENT`."""
    chosen = []
    for job in jobs:
        if job.state in FINAL_STATES and job.finished_at:
            with suppress(ValueError):
                if now - datetime.fromisoformat(job.finished_at) > RECENT:
                    continue
        chosen.append(job)
    return chosen[:MAX_JOBS]


def _job_counts(jobs: Sequence[Job], totals: JobTotals) -> dict[int, _JobCounts]:
    """Each job's counts, from the store's three aggregates."""
    ids = [job.id for job in jobs if job.run_id is not None]
    counts = {job.id: _JobCounts() for job in jobs}
    for job_id, state, anonymization, n, expected, verified in totals.job_series_totals(ids):
        job = counts[job_id]
        job.series["retrieve", _state(state)] += n
        if anonymization:
            job.series["deidentify", _state(anonymization)] += n
        elif state == ItemState.COMPLETE.value:
            job.undeidentified += n
        job.expected += expected
        job.verified += verified
    for job_id, state, n in totals.job_row_totals(ids):
        counts[job_id].rows[_state(state)] += n
    for job_id, state, n in totals.job_session_totals(ids):
        counts[job_id].sessions[_state(state)] += n
    return counts


def _queue_depth(job: Job, counts: _JobCounts) -> dict[str, int]:
    """What the job still has to do, per stage (a stage the job does not ask for: absent)."""
    retrieve = sum(n for (stage, state), n in counts.series.items() if stage == "retrieve")
    settled = sum(counts.series["retrieve", state] for state in _SETTLED)
    depth = {"query": counts.rows[ItemState.PENDING.value], "retrieve": retrieve - settled}
    if job.options.anonymize:
        depth["deidentify"] = counts.undeidentified
    if job.options.push:
        depth["push"] = counts.sessions[ItemState.PENDING.value]
    return depth


#: The per-job gauges: (name, help, labels after ``job_id``), by short name.  The label is
#: ``job_id``: ``job`` is the label Prometheus gives every target.
_JOB_GAUGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "state": ("pacsman_job_state", "1 for each job's current state.", ("state",)),
    "rows": ("pacsman_job_rows", "Query rows per job and state.", ("state",)),
    "series": (
        "pacsman_job_series",
        "Series per job, stage (retrieve, deidentify) and state.",
        ("stage", "state"),
    ),
    "sessions": (
        "pacsman_job_sessions",
        "De-identified sessions per job and push state (PENDING: no push yet).",
        ("state",),
    ),
    "expected": (
        "pacsman_job_instances_expected",
        "Instances the PACS said the job's series hold.",
        (),
    ),
    "verified": (
        "pacsman_job_instances_verified",
        "Instances received by the job's series verified COMPLETE.",
        (),
    ),
    "queue": (
        "pacsman_job_queue_depth",
        "What each job still has to do, per stage: rows to query, series to retrieve, "
        "series to de-identify, sessions to push.",
        ("stage",),
    ),
}


def _job_families(jobs: Sequence[Job], counts: Mapping[int, _JobCounts]) -> list[Metric]:
    """The per-job gauges; a job not started yet (no run) has its state only."""
    families = {
        key: _gauge(name, text, ("job_id", *labels))
        for key, (name, text, labels) in _JOB_GAUGES.items()
    }
    for job in jobs:
        families["state"].add_metric([str(job.id), job.state.value], 1)
        if job.run_id is not None:
            _add_job(families, job, counts[job.id])
    return list(families.values())


def _add_job(families: Mapping[str, GaugeMetricFamily], job: Job, counts: _JobCounts) -> None:
    key = str(job.id)
    for state, n in sorted(counts.rows.items()):
        families["rows"].add_metric([key, state], n)
    for (stage, state), n in sorted(counts.series.items()):
        families["series"].add_metric([key, stage, state], n)
    for state, n in sorted(counts.sessions.items()):
        families["sessions"].add_metric([key, state], n)
    families["expected"].add_metric([key], counts.expected)
    families["verified"].add_metric([key], counts.verified)
    for stage, n in _queue_depth(job, counts).items():
        families["queue"].add_metric([key, stage], n)


class _Scrape:
    """A prometheus-client collector: the store and the view, read at each scrape."""

    def __init__(self, view: ServiceView, clock: Callable[[], datetime]) -> None:
        self._view, self._clock = view, clock

    def describe(self) -> list[Metric]:
        return []  # registering must not read the store

    def collect(self) -> Iterator[Metric]:
        yield from self._service()
        yield from self._store()

    def _service(self) -> Iterator[Metric]:
        view = self._view
        info = _gauge(
            "pacsman_service_info", "This service: node name, version.", ["node", "version"]
        )
        info.add_metric([view.node_name, __version__], 1)
        yield info
        readiness = view.readiness()
        yield GaugeMetricFamily(
            "pacsman_ready", "1 when every /readyz check passes.", value=int(readiness.ready)
        )
        check = _gauge("pacsman_ready_check", "Each /readyz check: 1 passes, 0 fails.", ["check"])
        for name, passed in sorted(readiness.checks.items()):
            check.add_metric([name], int(passed))
        yield check
        yield GaugeMetricFamily(
            "pacsman_claiming",
            "1 while the service claims new retrieves (0: draining, or low on disk).",
            value=int(readiness.claiming),
        )
        yield from self._associations()

    def _associations(self) -> Iterator[Metric]:
        nodes = self._view.config.pacs
        in_use = self._view.associations_in_use()
        used = _gauge(
            "pacsman_associations_in_use", "Associations open now, per PACS node.", ["pacs"]
        )
        limit = _gauge("pacsman_associations_max", "Each PACS node's max_associations.", ["pacs"])
        for name, node in nodes.items():
            used.add_metric([name], in_use.get(name, 0))
            limit.add_metric([name], node.max_associations)
        yield used
        yield limit

    def _store(self) -> Iterator[Metric]:
        families: list[Metric] | None = None
        with suppress(PacsmanError), self._view.store.snapshot():
            families = self._store_families()
        yield GaugeMetricFamily(
            "pacsman_jobstore_readable",
            "1 when this scrape could read the job store.",
            value=int(families is not None),
        )
        yield from families or ()

    def _store_families(self) -> list[Metric]:
        store = self._view.store
        every = store.jobs()
        jobs_by_state = _gauge("pacsman_jobs", "Jobs in the job store, by state.", ["state"])
        tally = Tally(job.state for job in every)
        for state in JobState:
            jobs_by_state.add_metric([state.value], tally[state])
        cluster = (
            _cluster_families(store, self._clock()) if isinstance(store, ClusterTotals) else []
        )
        if not isinstance(store, JobTotals):
            return [jobs_by_state, *cluster]
        jobs = _recent(every, self._clock())
        return [jobs_by_state, *_job_families(jobs, _job_counts(jobs, store)), *cluster]


def _cluster_families(store: ClusterTotals, now: datetime) -> list[Metric]:
    """The head nodes by state, studies per node and state, and leases waiting for a
    take-over.  Labels are head node names (``serve.node_name``) and states, nothing else."""
    nodes = _gauge(
        "pacsman_cluster_nodes",
        "Head nodes of the job store: alive (heartbeat within 90 s), stale (silent: killed, "
        "paused or cut off), stopped (drained).",
        ["state"],
    )
    tally = Tally(str(node.state(now)) for node in store.head_nodes())
    for state in _NODE_STATES:
        nodes.add_metric([state], tally[state])
    studies = _gauge(
        "pacsman_studies",
        "Studies per head node and state: CLAIMED (held now under a live lease), DONE and "
        "FAILED (worked through on that node, whose disk holds the files).",
        ["node", "state"],
    )
    expired = 0
    for node, held, lapsed, done, failed in sorted(store.study_totals()):
        expired += lapsed
        for state, n in (("CLAIMED", held), ("DONE", done), ("FAILED", failed)):
            studies.add_metric([node or "-", state], n)
    leases = GaugeMetricFamily(
        "pacsman_study_leases_expired",
        "Study claims past their lease (their node stopped renewing): the next node to ask "
        "takes them over.",
        value=expired,
    )
    return [nodes, studies, leases]


class _WithoutCreated:
    """The registry without prometheus-client's ``*_created`` samples: a second series per
    counter that says only when the service started, which ``pacsman_service_info`` and
    ``process_start_time_seconds`` already say."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


# -- the whole ------------------------------------------------------------------------------


class ServiceMetrics:
    """The service's metrics: live counters, and gauges read at each scrape.

    ``render`` serves ``/metrics``; ``observe`` is registered as a log observer
    (``pacsman.log.add_observer(metrics.observe, events=metrics.events)``); the job runner
    calls ``retrieved`` as instances arrive.
    """

    def __init__(
        self,
        view: ServiceView,
        *,
        process: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.registry = CollectorRegistry()
        self._view = view
        self._live = _Live(self.registry)
        self._nodes = frozenset(view.config.pacs)
        self.registry.register(_Scrape(view, clock))
        if process:  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            ProcessCollector(registry=self.registry)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "retrying": self._retrying,
            "dimse_status": self._dimse_status,
            "series_retrieved": self._series_retrieved,
            "series_failed": self._series_failed,
            "push_done": self._push_ended,
            "push_failed": self._push_ended,
        }
        #: The events counted: register with ``add_observer(m.observe, events=m.events)``,
        #: so they reach ``observe`` whatever the log's level (``dimse_status`` is debug).
        self.events = frozenset(self._handlers)

    def render(self) -> tuple[bytes, str]:
        """``/metrics``: the text exposition format and its content type.

        The 0.0.4 text format: every Prometheus reads it, and our names need none of 1.0.0's
        escaping.

        Raises:
            Exception: what the service view raises (the HTTP server answers 500).
        """
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_PLAIN_0_0_4

    def retrieved(self, pacs: str, instances: int, size: int) -> None:
        """Count ``instances`` (``size`` bytes) received from PACS node ``pacs``."""
        node = self._pacs(pacs)
        self._live.instances.labels(node).inc(max(instances, 0))
        self._live.size.labels(node).inc(max(size, 0))

    def observe(self, event: Mapping[str, Any]) -> None:
        """Count what ``event`` (a log event's fields) says; cheap, and never raises."""
        with suppress(Exception):
            handler = self._handlers.get(event.get("event", ""))
            if handler is not None:
                handler(event)

    def _pacs(self, value: object) -> str:
        """A PACS node's name from the config; '' for none; ``other`` for anything else."""
        if value is None or value == "":
            return ""
        return value if isinstance(value, str) and value in self._nodes else _OTHER

    def _retrying(self, event: Mapping[str, Any]) -> None:
        given = event.get("cause")
        cause = _token(given) if given else retry_cause(str(event.get("reason", "")))
        operation = _token(event.get("operation"))
        self._live.retries.labels(operation, cause, self._pacs(event.get("pacs"))).inc()

    def _dimse_status(self, event: Mapping[str, Any]) -> None:
        pacs, operation = self._pacs(event.get("pacs")), _token(event.get("operation"))
        self._live.dimse.labels(pacs, operation, _status(event.get("status"))).inc()

    def _series_retrieved(self, event: Mapping[str, Any]) -> None:
        state = _state(event.get("state"))
        self._live.verdicts.labels(self._pacs(event.get("pacs")), state).inc()

    def _series_failed(self, event: Mapping[str, Any]) -> None:
        pacs = self._pacs(event.get("pacs"))
        self._live.verdicts.labels(pacs, "FAILED").inc(_count(event.get("series")))

    def _push_ended(self, event: Mapping[str, Any]) -> None:
        state = "DONE" if event.get("event") == "push_done" else "FAILED"
        self._live.pushes.labels(state).inc()
        elapsed = event.get("elapsed_s")
        if isinstance(elapsed, int | float) and not isinstance(elapsed, bool) and elapsed >= 0:
            self._live.push_seconds.labels(state).observe(float(elapsed))
