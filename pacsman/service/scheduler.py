"""``pacsman serve``: the scheduler loop of the head node's service.

One process holds the job store, one Storage SCP for every job (on ``local.port``), the
job threads, the HTTP server and the inbox.  Its main thread runs the loop below, every
half second or when woken (a submission, a request, a job that ended):

1. ping systemd's watchdog; reload the config after SIGHUP;
2. apply operators' requests (cancel, pause) to the jobs this node runs;
3. record how ended jobs ended, and tell whoever ``serve.notify`` names;
4. look at the inbox when it is due;
5. claim QUEUED jobs up to ``serve.max_jobs`` (highest priority, then oldest), unless
   draining; each runs in its own thread (:mod:`.runner`), sharing the PACS courtesy;
6. keep the heartbeat and systemd's STATUS= line current.

A PostgreSQL job store that goes away (a restart, a fail-over, a network cut) stops
nothing for good: the loop tries again every few seconds, ``/ready`` says why it is not
ready meanwhile, and a job whose thread lost its connection waits again (QUEUED) and
resumes; one that loses it more than :data:`STORE_LOSSES` times within
:data:`STORE_LOSS_WINDOW` seconds fails with the reason.

SIGTERM (or Ctrl-C) drains: STOPPING=1, no new claims, in-flight units and pushes may
finish until ``serve.drain_timeout``, then every open association is aborted and the
process exits 0; every series is left in a state the next start resumes.  A second
SIGTERM or SIGINT aborts at once.  SIGHUP reloads courtesy, the inbox and the limits;
settings that need a restart are named.
"""

from __future__ import annotations

import gc
import itertools
import queue
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace

import structlog

from pacsman.config import Config, load_config
from pacsman.errors import EXIT_OK, ConfigError, JobStoreConnectionLost, PacsmanError
from pacsman.jobstore import JobStore
from pacsman.jobstore.claims import LiveLeases
from pacsman.jobstore.jobs import JobAction, JobState
from pacsman.jobstore.slots import ClusterSlots
from pacsman.layout import private_directory
from pacsman.log import HUMAN, add_observer, remove_observer
from pacsman.pipeline.reception import Reception
from pacsman.pipeline.retrieve import storage_scp
from pacsman.service._health import Health
from pacsman.service._signals import exit_later, handling_signals
from pacsman.service.http import HttpServer, load_token, make_app
from pacsman.service.inbox import Inbox
from pacsman.service.metrics import ServiceMetrics
from pacsman.service.notify import JobNotifier, JobSummary
from pacsman.service.runner import JobEnd, JobThread, NodeShare, StopReason
from pacsman.service.state import Readiness
from pacsman.service.systemd import Notifier
from pacsman.throttle import SharedCourtesy

__all__ = ["Service", "run_service"]

_log = structlog.get_logger("pacsman.service")

#: Seconds between two turns of the loop when nothing wakes it.
TICK = 0.5
#: Seconds between two glances at the job store for another process's commit (a submit).
GLANCE = 0.1
#: Seconds between two heartbeats (and STATUS= lines).
BEAT = 5.0
#: Seconds between two C-ECHOs of an idle PACS node (readiness).
ECHO_EVERY = 60.0
#: Seconds a drain's abort may take before the process exits anyway.
ABORT_GRACE = 10.0
#: Times a job may lose the job store's connection (and wait again) within STORE_LOSS_WINDOW
#: seconds before it fails: a long job that meets a restart now and then never does.
STORE_LOSSES = 5
STORE_LOSS_WINDOW = 600.0
#: Seconds between two tries of a job store whose connection was lost.
STORE_RETRY = 2.0
#: Settings a SIGHUP cannot change: they need a restart.
_RESTART_KEYS = ("local", "jobstore", "store_root", "serve.http", "serve.node_name")


@dataclass
class _Clock:
    """When the loop last did each thing (:func:`time.monotonic`), and the drain's times."""

    turn: float = 0.0
    beat: float = 0.0
    inbox: float = 0.0
    watchdog: float = 0.0
    deadline: float | None = None
    abort_at: float | None = None


def run_service(config: Config) -> int:
    """Run ``pacsman serve`` until SIGTERM/SIGINT; return the exit code (0 after a drain).

    Raises:
        FatalError: the SCP port or the HTTP port cannot be bound, or the job store is
            unusable (the message names the key and the fix).
    """
    return Service(config).run()


class Service:
    """The service: the loop, the job threads, and what HTTP and metrics read of it."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._wake = threading.Event()
        self._ended: queue.Queue[JobThread] = queue.Queue()
        #: Job threads by a number of their own (a job may have two here during a take-over).
        self._running: dict[int, JobThread] = {}
        self._numbers = itertools.count(1)
        self._shared = SharedCourtesy()
        #: The study leases this node's job threads work on: the only ones it renews.
        self.leases = LiveLeases()
        self._lock = threading.Lock()
        self._term_signals = 0
        self._reload_asked = False
        self.health = Health(self._shared)
        self._scp_bound = False
        self._draining = False
        #: Set once the drain starts: the echo loop ends.
        self._stopped = threading.Event()
        #: Whether the drain ended by aborting what was left.
        self.aborted = False
        #: Set when the service leaves: lease renewal ends.
        self._left = threading.Event()
        self._store: JobStore | None = None
        #: Why the job store cannot be used now (its connection was lost), or None.
        self._store_problem: str | None = None
        #: Jobs by id: when their thread lost the job store's connection (time.monotonic).
        self._store_losses: dict[int, list[float]] = {}
        self._inbox: Inbox | None = None
        self.metrics = ServiceMetrics(self)
        self.systemd = Notifier.from_environ()
        self.notifier = JobNotifier(config.serve.notify)
        self.reception = Reception(
            config,
            config.store_root / "_unrouted",
            observer=lambda pacs, stored: self.metrics.retrieved(pacs, 1, stored.size),
        )
        self.reception.blocked = lambda: self.health.disk_problem

    # -- ServiceView ------------------------------------------------------------------------

    @property
    def store(self) -> JobStore:
        assert self._store is not None, "the job store opens when the service runs"
        return self._store

    @property
    def config(self) -> Config:
        return self._config

    @property
    def node_name(self) -> str:
        return self._config.serve.node_name

    def readiness(self) -> Readiness:
        store_usable = self._store is not None and self._store_problem is None
        checks = {"jobstore": store_usable, "storage_scp": self._scp_bound}
        found, problems = self.health.checks()
        checks.update(found)
        if self._store_problem is not None:
            problems.append(self._store_problem)
        if self._draining:
            problems.append("the service is stopping (drain): no new work is claimed")
        claiming = store_usable and not self._draining and self.health.disk_problem is None
        return Readiness(checks=checks, problems=tuple(problems), claiming=claiming)

    def associations_in_use(self) -> Mapping[str, int]:
        return self._shared.in_use()

    def wake(self) -> None:
        self._wake.set()

    def status_line(self) -> str:
        with self._lock:
            running = list(self._running.values())
        runs = [t.run_id for t in running if t.run_id is not None]
        settled, total, retrying = self.store.series_progress(runs)
        parts = [f"{len(running)} job(s) running"]
        if total:
            parts.append(f"{settled}/{total} series")
        if retrying:
            parts.append(f"{retrying} retrying")
        in_use = self._shared.in_use()
        for name, node in self._config.pacs.items():
            used = in_use.get(name, 0)
            parts.append(f"PACS {name} {used}/{node.head_node_associations} associations")
        if self.health.disk_problem:
            parts.append("disk low: not retrieving")
        if self._draining:
            parts.append("draining")
        return ", ".join(parts)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        config = self._config
        with ExitStack() as stack:
            self._store = stack.enter_context(JobStore(config.jobstore))
            if self.store.backend == "postgresql":  # courtesy for every head node together
                self._shared.cluster = stack.enter_context(ClusterSlots(str(config.jobstore)))
                self._shared.cluster_limits.update(
                    {name: node.max_associations for name, node in config.pacs.items()}
                )
            stack.callback(self._leave)
            resumed = self.store.requeue_owned(self.node_name)
            stack.enter_context(handling_signals(self.ask_to_stop, self.ask_to_reload))
            needs_scp = any(n.retrieve_method == "move" for n in config.pacs.values())
            private_directory(config.store_root)
            stack.enter_context(storage_scp(config, self.reception.writer, needed=needs_scp))
            self._scp_bound = True
            http = stack.enter_context(self._http())
            self.store.register_node(
                self.node_name,
                http_url=http.url,
                ae_title=config.local.ae_title,
                scp_port=config.local.port if needs_scp else 0,
            )
            threading.Thread(target=self._lease_loop, name="pacsman-lease", daemon=True).start()
            add_observer(self.metrics.observe, events=self.metrics.events)
            stack.callback(remove_observer, self.metrics.observe)
            self._inbox = Inbox(self.store, config)
            self._scan_inbox()  # makes its folders before READY; takes up a crash's files
            self.health.check_disk(self._config)
            self.systemd.ready()
            scp = f"Storage SCP {config.local.ae_title} on port {config.local.port}"
            _log.info(
                "service_ready",
                node=self.node_name,
                http=http.url,
                scp_port=config.local.port if needs_scp else None,
                resumed_jobs=resumed,
                **{
                    HUMAN: f"node {self.node_name}: web page and API {http.url}, "
                    f"{scp if needs_scp else 'no Storage SCP (C-GET only)'}; "
                    f"{len(resumed)} job(s) resumed; submit with 'pacsman submit', the inbox "
                    "or the web page"
                },
            )
            threading.Thread(target=self._echo_loop, name="pacsman-echo", daemon=True).start()
            gc.freeze()  # what start-up made lives on: the collector need not walk it again
            self._loop()
            if self.aborted:  # a peer thread that does not let go must not hold the exit
                exit_later(ABORT_GRACE)
        return EXIT_OK

    def _http(self) -> HttpServer:
        http = self._config.serve.http
        app = make_app(self, token=load_token(http), metrics=self.metrics.render)
        return HttpServer(app, http)

    def _loop(self) -> None:
        clock = _Clock()
        watchdog = self.systemd.watchdog_interval()
        while True:
            woken = self._wake.wait(GLANCE)
            self._wake.clear()
            now = time.monotonic()
            if watchdog is not None and now - clock.watchdog >= watchdog:
                self.systemd.watchdog()
                clock.watchdog = now
            if self._store_problem is not None and now - clock.turn < STORE_RETRY:
                continue  # the job store was lost: try again every STORE_RETRY seconds
            try:
                # A full turn every TICK, or at once when woken or when another process
                # (pacsman submit, a job's own connection) committed: a glance is cheap.
                if not (woken or now - clock.turn >= TICK or self.store.changed_elsewhere()):
                    continue
                clock.turn = now
                if self._turn(now, clock):
                    return
            except JobStoreConnectionLost as exc:
                clock.turn = now
                self._store_lost(exc)
                continue
            self._store_back()

    def _turn(self, now: float, clock: _Clock) -> bool:
        """One full turn of the loop; True when the service is to leave it (drained)."""
        if self._reload_asked:
            self._reload_asked = False
            self._reload()
        self._settle_ended()
        if self._term_signals and not self._draining:
            clock.deadline = self._start_drain(now)
        if self._draining:
            clock.abort_at = self._drain_step(now, clock.deadline, clock.abort_at)
            if clock.abort_at is not None and now >= clock.abort_at:
                return True
            if not self._running:
                return True
        else:
            self._apply_requests()
            if self._inbox is not None and now - clock.inbox >= self._config.serve.inbox_interval:
                self._scan_inbox()
                clock.inbox = now
            self._claim()
        if now - clock.beat >= BEAT:
            self._beat()
            clock.beat = now
        return False

    def _claim(self) -> None:
        """Claim QUEUED jobs (or jobs a dead node held); then join jobs other nodes run whose
        studies are not all claimed, up to ``serve.max_jobs`` threads in all.  A job whose
        studies wait to be taken over from a dead node gets a take-over thread at once, even
        when a thread of this node is busy with it or every thread is taken."""
        if self.health.disk_problem is not None:
            return
        lease, limit = self._config.serve.lease_seconds, self._config.serve.max_jobs
        while len(self._running) < limit:
            job = self.store.claim_job(
                self.node_name, skip=self._job_ids(coordinating=True), lease_seconds=lease
            )
            if job is None:
                break
            self._start(JobThread(job))
        here = self._job_ids()
        for job in self.store.joinable_jobs(skip=()):
            if self.store.claim_counts(job.id).expired and not any(
                t.takeover for t in self._threads_of(job.id)
            ):  # a take-over may not wait for a free thread: it is one batch
                _log.info("job_takeover", job_id=job.id, coordinator=job.owner_node)
                self._start(JobThread(job, coordinator=False, takeover=True))
            elif job.id not in here and len(self._running) < limit:
                _log.info("job_joined", job_id=job.id, coordinator=job.owner_node)
                self._start(JobThread(job, coordinator=False))
                here.append(job.id)

    def _job_ids(self, *, coordinating: bool = False) -> list[int]:
        """The jobs this node has threads for (only those it coordinates, if asked)."""
        with self._lock:
            threads = list(self._running.values())
        return [t.job.id for t in threads if t.coordinator or not coordinating]

    def _threads_of(self, job_id: int) -> list[JobThread]:
        with self._lock:
            return [t for t in self._running.values() if t.job.id == job_id]

    def _start(self, thread: JobThread) -> None:
        thread.number = next(self._numbers)
        with self._lock:
            self._running[thread.number] = thread
        share = NodeShare(self.store, self._config, self.reception, self._shared, self.leases)
        thread.start(share, self._job_ended)

    def _job_ended(self, thread: JobThread) -> None:
        self._ended.put(thread)
        self._wake.set()

    def _settle_ended(self) -> None:
        while True:
            try:
                thread = self._ended.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._running.pop(thread.number, None)
            end = thread.end or JobEnd(JobState.FAILED, "the job's thread ended without a word")
            job = thread.job
            if not thread.coordinator:  # the node that claimed the job settles it
                _log.info("job_left", job_id=job.id, state=end.state.value, detail=end.detail)
                continue
            end = self._bounded(job.id, end)
            try:
                settled = self.store.settle_job(job.id, end.state, end.detail, owner=self.node_name)
            except JobStoreConnectionLost:
                self._ended.put(thread)  # settled at the next turn that reaches the store
                raise
            if not settled:
                _log.warning("job_lost", job_id=job.id, detail="another node took it over")
                continue
            _log.info(
                "job_ended",
                job_id=job.id,
                state=end.state.value,
                detail=end.detail,
                **{HUMAN: f"job {job.id} ({job.name}) {end.state.value}: {end.detail}"},
            )
            if end.state in (JobState.DONE, JobState.FAILED):
                self._notify(thread, end)

    def _bounded(self, job_id: int, end: JobEnd) -> JobEnd:
        """``end``, or FAILED once the job has lost the job store's connection more than
        :data:`STORE_LOSSES` times within :data:`STORE_LOSS_WINDOW` seconds (a server that
        drops it at the same step each time would otherwise have it wait again for ever)."""
        if not end.store_lost:
            self._store_losses.pop(job_id, None)
            return end
        now = time.monotonic()
        losses = [t for t in self._store_losses.get(job_id, []) if now - t < STORE_LOSS_WINDOW]
        losses.append(now)
        self._store_losses[job_id] = losses
        if len(losses) <= STORE_LOSSES:
            return end
        del self._store_losses[job_id]
        return JobEnd(
            JobState.FAILED,
            f"lost the job store's connection {len(losses)} times in "
            f"{now - losses[0]:.0f} s, the last: {end.store_lost}; see the PostgreSQL server's "
            "log, then queue the job again (pacsman retry-failed)",
        )

    def _store_lost(self, exc: JobStoreConnectionLost) -> None:
        """The loop met a job store it cannot reach: said once, tried again later."""
        if self._store_problem is None:
            _log.warning(
                "job_store_unreachable",
                problem=str(exc),
                **{HUMAN: f"{exc}; trying again every {STORE_RETRY:g} s, jobs go on"},
            )
        self._store_problem = f"the job store cannot be reached: {exc}"

    def _store_back(self) -> None:
        if self._store_problem is not None:
            self._store_problem = None
            _log.info("job_store_reachable", **{HUMAN: "the job store is reachable again"})

    def _notify(self, thread: JobThread, end: JobEnd) -> None:
        job = self.store.job(thread.job.id)
        self.notifier.job_ended(JobSummary.from_job(job, node=self.node_name, counts=_counts(end)))

    def _apply_requests(self) -> None:
        asked = dict(self.store.requests_for(self.node_name))
        helping = sorted(set(self._job_ids()) - set(self._job_ids(coordinating=True)))
        for job in self.store.jobs_by_id(helping):
            if job.state in _LET_GO:
                asked[job.id] = (
                    JobAction.CANCEL if job.state is JobState.CANCELLED else JobAction.PAUSE
                )
            elif job.requested in (JobAction.CANCEL.value, JobAction.PAUSE.value):
                asked[job.id] = JobAction(job.requested)
        for job_id, action in asked.items():
            reason = StopReason.CANCEL if action is JobAction.CANCEL else StopReason.PAUSE
            for thread in self._threads_of(job_id):
                if not thread.halt.is_set():
                    thread.halt.set(reason)
                    _log.info("job_stopping", job_id=job_id, reason=reason)

    def _scan_inbox(self) -> None:
        if self._inbox is None or self._inbox.folder is None:
            return
        try:
            self._inbox.scan()
        except PacsmanError as exc:  # the inbox must never stop the service
            _log.warning("inbox_failed", problem=str(exc))
        except OSError as exc:
            _log.warning("inbox_failed", problem=f"{exc.strerror}: {exc.filename}")

    # -- drain --------------------------------------------------------------------------------

    def ask_to_stop(self) -> None:
        """SIGTERM/SIGINT: the first drains, the second aborts at once."""
        self._term_signals += 1  # the loop acts on it: a signal handler only takes note
        self._wake.set()

    def _start_drain(self, now: float) -> float:
        self._draining = True
        self._stopped.set()
        deadline = now + self._config.serve.drain_timeout
        self.systemd.stopping()
        self.systemd.extend_timeout(self._config.serve.drain_timeout + ABORT_GRACE + 20)
        timeout = self._config.serve.drain_timeout
        _log.info(
            "service_draining",
            running_jobs=len(self._running),
            drain_timeout_s=timeout,
            **{
                HUMAN: f"stopping: no new work; {len(self._running)} job(s) finish what is in "
                f"flight (at most {timeout:g} s); a second Ctrl-C or SIGTERM aborts at once"
            },
        )
        for thread in list(self._running.values()):
            thread.halt.set(StopReason.DRAIN, deadline=deadline)
        return deadline

    def _drain_step(
        self, now: float, deadline: float | None, abort_at: float | None
    ) -> float | None:
        late = deadline is not None and now >= deadline
        if abort_at is None and (self._term_signals >= 2 or late):
            why = "drain_timeout passed" if late else "a second stop signal"
            _log.warning("service_aborting", reason=why, jobs=len(self._running))
            for thread in list(self._running.values()):
                thread.halt.set(StopReason.DRAIN)  # no deadline: the children stop now
            # Aborting waits for each association's thread: never in the loop itself.
            threading.Thread(target=self._shared.abort_all, daemon=True).start()
            self.aborted = True
            return now + ABORT_GRACE
        return abort_at

    def _leave(self) -> None:
        """Record that the service stopped; tell pending notifications to go out."""
        self._left.set()
        self.notifier.close(timeout=5.0)
        self.systemd.close()
        if self._store is not None:
            self.store.stop_node(self.node_name, "stopped")
        _log.info(
            "service_stopped",
            node=self.node_name,
            jobs_left=len(self._running),
            **{HUMAN: "stopped; the next start resumes every job that was not finished"},
        )

    # -- reload, readiness, heartbeat -----------------------------------------------------------

    def ask_to_reload(self) -> None:
        self._reload_asked = True
        self._wake.set()

    def _reload(self) -> None:
        self.systemd.reloading()
        try:
            fresh = load_config(self._config.source)
        except ConfigError as exc:
            _log.error("reload_failed", problem=str(exc), kept="the settings in force")
            self.systemd.ready()
            return
        old = self._config
        restart = [key for key in _RESTART_KEYS if _lookup(old, key) != _lookup(fresh, key)]
        kept = replace(
            fresh,
            local=old.local,
            jobstore=old.jobstore,
            store_root=old.store_root,
            serve=replace(fresh.serve, http=old.serve.http, node_name=old.serve.node_name),
        )
        for name, node in kept.pacs.items():
            self._shared.reconfigure(
                name,
                limit=node.head_node_associations,
                interval=node.move_interval,
                window=node.retrieve_window,
                cluster_limit=node.max_associations,
            )
        try:
            if self._inbox is not None:
                self._inbox.reload(kept)  # the folder and serve.inbox_job
        except PacsmanError as exc:
            _log.error("reload_failed", problem=str(exc), kept="the inbox in force")
        self._config = kept
        self.health.check_disk(self._config)
        _log.info("config_reloaded", needs_restart=restart or None)
        self.systemd.ready()

    def _lease_loop(self) -> None:
        """Renew this node's leases on jobs and studies every third of ``serve.lease_seconds``
        (its own thread: a busy loop must not cost the node its work)."""
        while not self._stopped.is_set() or self._running:
            lease = self._config.serve.lease_seconds
            try:
                self.store.renew_leases(
                    self.node_name, lease, generations=self.leases.generations()
                )
            except PacsmanError as exc:
                _log.warning("lease_renewal_failed", problem=str(exc))
            if self._left.wait(lease / 3):
                return

    def _echo_loop(self) -> None:
        """C-ECHO each idle PACS node and look at the disk every ECHO_EVERY seconds."""
        while not self._draining:
            self.health.echo_all(self._config)
            self.health.check_disk(self._config)
            self._stopped.wait(ECHO_EVERY)

    def _beat(self) -> None:
        self.health.check_disk(self._config)
        line = self.status_line()
        self.systemd.status(line)
        try:
            self.store.beat_node(self.node_name, line)
        except PacsmanError as exc:
            _log.warning("heartbeat_failed", problem=str(exc))


#: A job in these states is let go by every node that helps with it.
_LET_GO = (JobState.CANCELLED, JobState.PAUSED)


def _counts(end: JobEnd) -> dict[str, int]:
    summary = end.summary
    if summary is None:
        return {}
    return {
        "rows": summary.rows,
        "studies": summary.studies,
        "series": summary.series,
        "expected_instances": summary.expected_instances,
        "received_instances": summary.received_instances,
        "anonymized_instances": summary.anonymized_instances,
        "files_on_target": summary.files_on_target,
        "failed_rows": len(summary.failed_lines),
    }


def _lookup(config: Config, key: str) -> object:
    value: object = config
    for part in key.split("."):
        value = getattr(value, part)
    return value
