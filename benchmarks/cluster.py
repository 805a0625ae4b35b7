"""Several ``pacsman serve`` head nodes on one PostgreSQL job store (issue 14): throughput
with 1, 2 and 3 nodes, and the latency of a study claim on PostgreSQL against SQLite.

    python3 benchmarks/cluster.py [--repeat 3] [--studies 60] [--instances 20]
        [--level series] [--only fake,orthanc,claims] [--claims 500] [--queued 10000]
        [--workdir DIR] [--as-is] [--quick]

Every head node is ``python -m pacsman serve`` in a subprocess
(:class:`pacsman.testing.service.ServiceProcess`) with its own Storage SCP AE title
(HEAD1, HEAD2, HEAD3) and port, its own ``store_root`` and ``serve.node_name``, and the same
``jobstore: postgresql://...`` (:class:`pacsman.testing.postgres.PostgresServer`, one
throw-away cluster; a fresh database per round).  Everything listens on 127.0.0.1 on ports
the OS chose.

1. **Fake PACS.**  :class:`pacsman.testing.fakepacs.FakePacs` (in this process) serves
   ``--studies`` synthetic MR studies of ``--instances`` instances (2 series, 64x64) and
   waits 20 ms before each C-STORE sub-operation and each pending C-FIND answer
   (``Faults(pending_delay=0.02)``): the PACS's latency, not this CPU, is what parallel
   nodes can overlap.  ``max_associations: 6`` for the cluster and
   ``max_associations_per_head_node: 1`` (one association, so one retrieve worker, per
   node).  The studies go in 3 jobs, ``--save`` only (no de-identification, no push: this
   measures how retrieval scales), queued by 3 ``pacsman submit`` one after the other once
   every node is READY, timed from the start of the first submit until the job store shows
   every job DONE.  Rounds are interleaved (1, 2, 3 nodes, then 1, 2, 3 ...), the median of
   ``--repeat`` is printed with the ratio against 1 node (target >= 2.5x at 3 nodes), the
   PACS's peak of concurrent associations per round (must stay <= 6), the studies each node
   retrieved (``study_claims.holder_node``) and, per node, where its time went (from the
   log events ``job_started``, ``job_joined``, ``studies_claimed``, ``series_retrieved``,
   ``job_helped``).
2. **Orthanc.**  The same shape from Orthanc (TCP_NODELAY=1, loaded once, no added
   latency), 1 and 3 nodes: on 2 cores this is CPU-bound, so expect little scaling.
3. **Claim latency.**  A job store with one job whose run has ``--queued`` series (4 per
   study), every study OPEN; ``--claims`` times ``claim_studies(limit=1)`` then
   ``settle_studies``, each timed, on SQLite (a file in the work folder) and on PostgreSQL.
   Then ``claim_job`` with ``--queued`` QUEUED jobs (inserted in bulk by this script).

Work folders go to /dev/shm by default (``--workdir`` to change it).  Where
``PYTHONDONTWRITEBYTECODE`` is set, the subprocesses get a private bytecode cache, as an
installed pacsman has (``--as-is`` keeps the environment).  Every wait is bounded; Ctrl-C
(or SIGTERM) stops every process this script started.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import count
from pathlib import Path

import psycopg
from service import bytecode_cache, run_script, sigterm_as_interrupt  # benchmarks/service.py

from pacsman.jobstore import JobStore, Run
from pacsman.jobstore.jobs import FINAL_STATES, JobOptions, JobState
from pacsman.models import QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.postgres import PostgresServer
from pacsman.testing.service import ServiceProcess
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets

PACSMAN = [sys.executable, "-m", "pacsman"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOBS = 3
SERIES_PER_STUDY = 2
PENDING_DELAY = 0.02
MAX_ASSOCIATIONS = 6
PER_NODE = 1
LEASE_SECONDS = 30.0
TARGET = 2.5
ROUND_TIMEOUT = 900.0
SUBMIT_TIMEOUT = 120.0
_ids = count(1)
#: Where each node's log is copied (``--logs``), or None.
LOGS: Path | None = None


# -- waits, processes ----------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    services: Sequence[ServiceProcess] = (),
) -> None:
    """Poll ``condition`` every ``interval`` s for at most ``timeout`` s.

    Raises:
        SystemExit: not in time, or a service exited first (its log's tail is shown).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        for service in services:
            if service.exited():
                raise SystemExit(
                    f"{service.config} exited while waiting for {what}:\n{_tail(service)}"
                )
        if time.monotonic() >= deadline:
            tails = "\n".join(_tail(s) for s in services)
            raise SystemExit(f"gave up after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(interval)


def _tail(service: ServiceProcess) -> str:
    return f"--- {service.log_path}\n" + service.log_text()[-2500:]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


# -- the cohort ----------------------------------------------------------------------------------


def cohort(studies: int, instances: int) -> list[StudySpec]:
    """``studies`` MR studies of ``instances`` 64x64 images in 2 series."""
    per_series = [
        instances // SERIES_PER_STUDY + (s < instances % SERIES_PER_STUDY) for s in (0, 1)
    ]
    return [
        StudySpec(
            patient_id=f"CLB{n:04d}",
            patient_name=f"Bench^Cluster{n}",
            study_date="20240301",
            accession_number=f"CB{n:05d}",
            study_description="cluster benchmark",
            series=tuple(
                SeriesSpec(series_number=s + 1, series_description=f"S{s + 1}", n_instances=k)
                for s, k in enumerate(per_series)
            ),
            uid_seed=f"cluster-bench-{n}",
        )
        for n in range(studies)
    ]


def queryfiles(folder: Path, specs: Sequence[StudySpec]) -> list[Path]:
    """The studies split into ``JOBS`` query files (StudyInstanceUID, PatientID)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in range(JOBS):
        chunk = specs[j::JOBS]
        rows = "".join(f"{s.study_instance_uid},{s.patient_id}\n" for s in chunk)
        path = folder / f"job{j + 1}.csv"
        path.write_text("StudyInstanceUID,PatientID\n" + rows, encoding="utf-8")
        paths.append(path)
    return paths


# -- one round: N head nodes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """The PACS: where it is, and how to tell it a head node's AE title as a move
    destination."""

    name: str
    port: int
    ae_title: str
    add_destination: Callable[[str, int], None]
    reset: Callable[[], None] = lambda: None
    peak: Callable[[], int | None] = lambda: None


@dataclass
class Round:
    """One measured round."""

    nodes: int
    seconds: float
    submit_seconds: float
    peak: int | None
    studies: dict[str, int]
    cpu: dict[str, float]
    profile: dict[str, NodeProfile] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return sum(self.studies.values()) / self.seconds


@dataclass(frozen=True)
class NodeProfile:
    """Where one node's time went, from its log events (seconds from the first submit)."""

    first_claim: float | None
    last_event: float | None
    batches: int
    batch_sizes: tuple[int, ...]
    series: int
    query_seconds: float  # job_started -> its first studies_claimed, summed over jobs it ran


def write_config(folder: Path, node: str, port: int, peer: Peer, url: str, level: str) -> Path:
    folder.mkdir(mode=0o700, parents=True)
    path = folder / "pacsman.yaml"
    path.write_text(
        f"local: {{ae_title: {node.upper()}, bind_host: 127.0.0.1, port: {port}}}\n"
        f"pacs:\n  bench:\n    host: 127.0.0.1\n    port: {peer.port}\n"
        f"    called_ae_title: {peer.ae_title}\n    retrieve_level: {level}\n"
        f"    max_associations: {MAX_ASSOCIATIONS}\n"
        f"    max_associations_per_head_node: {PER_NODE}\n"
        f"store_root: {folder}/data\njobstore: {url}\n"
        f"serve:\n  node_name: {node}\n  min_free_gb: 0\n  drain_timeout: 5\n"
        f"  lease_seconds: {LEASE_SECONDS:g}\n  http: {{port: {free_port()}}}\n",
        encoding="utf-8",
    )
    return path


def submit(config: Path, query: Path) -> None:
    command = [*PACSMAN, "submit", str(query), "--save", "--config", str(config)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pacsman submit took more than {SUBMIT_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise SystemExit(f"pacsman submit failed ({done.returncode}):\n{done.stderr[-2000:]}")


def one_round(
    postgres: PostgresServer,
    peer: Peer,
    queries: Sequence[Path],
    work: Path,
    nodes: int,
    level: str,
) -> Round:
    database = f"bench_{peer.name}_{next(_ids)}_{nodes}"
    postgres.create_database(database)
    url = postgres.dsn(database)
    names = [f"head{n + 1}" for n in range(nodes)]
    configs = {}
    for name in names:
        port = free_port()
        peer.add_destination(name.upper(), port)
        configs[name] = write_config(work / name, name, port, peer, url, level)
    with ExitStack() as stack:
        services = {name: ServiceProcess(configs[name]) for name in names}
        for service in services.values():
            stack.callback(service.stop, 30.0)
            service.start()
        for service in services.values():
            service.wait_ready(timeout=120)
        peer.reset()
        cpu0 = {name: tree_cpu(s.pid) for name, s in services.items()}
        here0, main0 = time.process_time(), time.thread_time()
        started_wall, started = time.time(), time.perf_counter()
        for query in queries:
            submit(configs[names[0]], query)
        submitted = time.perf_counter() - started
        with JobStore(url, read_only=True) as watcher:  # one connection, not one per look
            wait_until(
                lambda: _all_ended(watcher),
                timeout=ROUND_TIMEOUT,
                what=f"{len(queries)} jobs on {nodes} node(s) to end",
                interval=0.25,
                services=list(services.values()),
            )
        seconds = time.perf_counter() - started
        cpu = {name: tree_cpu(s.pid) - cpu0[name] for name, s in services.items()}
        main = time.thread_time() - main0  # submits waited on, the job store polled
        cpu["this process's other threads (the fake PACS)"] = time.process_time() - here0 - main
        cpu["this process's main thread (polling)"] = main
        with JobStore(url, read_only=True) as store:
            states = {job.id: job.state for job in store.jobs()}
            holders = Counter(
                h.holder_node for job in store.jobs() for h in store.study_places(job.id)
            )
        if set(states.values()) != {JobState.DONE}:
            tails = "\n".join(_tail(s) for s in services.values())
            raise SystemExit(f"jobs ended {states}:\n{tails}")
        profile = {n: _profile(s.log_text(), started_wall) for n, s in services.items()}
        if LOGS is not None:
            LOGS.mkdir(parents=True, exist_ok=True)
            for name, service in services.items():
                (LOGS / f"{work.name}-{name}.log").write_text(service.log_text())
    return Round(nodes, seconds, submitted, peer.peak(), dict(holders), cpu, profile)


def _all_ended(store: JobStore) -> bool:
    jobs = store.jobs()
    return len(jobs) == JOBS and all(job.state in FINAL_STATES for job in jobs)


def _events(text: str) -> Iterator[tuple[float, dict[str, object]]]:
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            fields = json.loads(line)
            at = datetime.fromisoformat(str(fields["timestamp"])).timestamp()
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
        yield at, fields


def _profile(log: str, t0: float) -> NodeProfile:
    claims: list[tuple[float, int]] = []
    series, last = 0, None
    job_start: dict[object, float] = {}
    query = 0.0
    for at, fields in _events(log):
        event = fields.get("event")
        if at < t0:
            continue
        last = at - t0
        if event == "job_started":
            job_start[fields.get("job_id")] = at
        elif event == "studies_claimed":
            claims.append((at - t0, int(str(fields.get("studies", 0)))))
            began = job_start.pop(fields.get("job_id"), None)
            if began is not None:
                query += at - began
        elif event == "series_retrieved":
            series += 1
    return NodeProfile(
        first_claim=claims[0][0] if claims else None,
        last_event=last,
        batches=len(claims),
        batch_sizes=tuple(n for _, n in claims),
        series=series,
        query_seconds=query,
    )


def scaling(
    postgres: PostgresServer,
    peer: Peer,
    queries: Sequence[Path],
    base: Path,
    node_counts: Sequence[int],
    repeat: int,
    level: str,
) -> dict[int, list[Round]]:
    rounds: dict[int, list[Round]] = {n: [] for n in node_counts}
    for attempt in range(repeat):
        for nodes in node_counts:  # interleaved: 1, 2, 3, 1, 2, 3, ...
            work = base / f"{peer.name}-{attempt}-{nodes}"
            result = one_round(postgres, peer, queries, work, nodes, level)
            rounds[nodes].append(result)
            subprocess.run(["rm", "-rf", str(work)], check=False, timeout=120)
            print(f"  {peer.name} #{attempt + 1}, {_round_line(result)}", flush=True)
    return rounds


def _round_line(r: Round) -> str:
    peak = "" if r.peak is None else f", PACS peak {r.peak} associations"
    spread = ", ".join(f"{n} {k}" for n, k in sorted(r.studies.items()))
    cpu = ", ".join(f"{n} {c:.1f}" for n, c in r.cpu.items())
    return (
        f"{r.nodes} node(s): {r.seconds:.2f} s ({r.rate:.2f} studies/s; submits "
        f"{r.submit_seconds:.2f} s){peak}; studies: {spread}; CPU s: {cpu}; {_load()}"
    )


def scaling_table(title: str, settings: str, rounds: dict[int, list[Round]]) -> list[str]:
    base = statistics.median(r.seconds for r in rounds[min(rounds)])
    lines = [title, f"   settings: {settings}"]
    lines.append("   | head nodes | wall (median) | studies/s | x 1 node | PACS peak | runs |")
    lines.append("   |---|---|---|---|---|---|")
    for nodes, runs in rounds.items():
        wall = statistics.median(r.seconds for r in runs)
        rate = statistics.median(r.rate for r in runs)
        peaks = [r.peak for r in runs if r.peak is not None]
        peak = str(max(peaks)) if peaks else "-"
        each = ", ".join(f"{r.seconds:.1f}" for r in runs)
        lines.append(
            f"   | {nodes} | {wall:.2f} s | {rate:.2f} | {base / wall:.2f}x | {peak} | {each} |"
        )
    lines.append("   studies retrieved per node, each run:")
    for nodes, runs in rounds.items():
        spread = " / ".join(
            ", ".join(f"{n} {k}" for n, k in sorted(r.studies.items())) for r in runs
        )
        lines.append(f"     {nodes} node(s): {spread}")
    lines += _profile_lines(rounds)
    return lines


def _profile_lines(rounds: dict[int, list[Round]]) -> list[str]:
    """Per node of the median run of each node count: when it first claimed, its batches,
    its series, its query time, when it last logged and its CPU."""
    lines = ["   where each node's time went (the median run; seconds from the first submit):"]
    for nodes, runs in rounds.items():
        ordered = sorted(runs, key=lambda r: r.seconds)
        median = ordered[len(ordered) // 2]
        for name, p in median.profile.items():
            first = "-" if p.first_claim is None else f"{p.first_claim:.2f}"
            last = "-" if p.last_event is None else f"{p.last_event:.2f}"
            sizes = ",".join(str(n) for n in p.batch_sizes)
            lines.append(
                f"     {nodes} node(s) {name}: first study claim at {first} s, last event at "
                f"{last} s (wall {median.seconds:.2f} s), {p.batches} batches [{sizes}], "
                f"{p.series} series, query stage {p.query_seconds:.2f} s, "
                f"CPU {median.cpu.get(name, 0.0):.1f} s"
            )
    return lines


def fake_pacs_scaling(
    postgres: PostgresServer, base: Path, specs: list[StudySpec], repeat: int, level: str
) -> list[str]:
    queries = queryfiles(base / "queries-fake", specs)
    with FakePacs.from_specs(specs, faults=Faults(pending_delay=PENDING_DELAY)) as pacs:

        def reset() -> None:
            pacs.peak_associations = 0

        peer = Peer(
            "fake",
            pacs.port,
            pacs.ae_title,
            lambda ae, port: pacs.add_move_destination(ae, "127.0.0.1", port),
            reset,
            lambda: pacs.peak_associations,
        )
        rounds = scaling(postgres, peer, queries, base, (1, 2, 3), repeat, level)
    ratio = statistics.median(r.seconds for r in rounds[1]) / statistics.median(
        r.seconds for r in rounds[3]
    )
    peak = max(r.peak or 0 for runs in rounds.values() for r in runs)
    lines = scaling_table(
        f"1. fake PACS, 1/2/3 head nodes, median of {repeat}:",
        _settings(specs, level, f"fake PACS pending_delay {PENDING_DELAY * 1000:g} ms"),
        rounds,
    )
    verdict = "PASS" if ratio >= TARGET else "MISS"
    lines.append(f"   3 nodes / 1 node: {ratio:.2f}x, target >= {TARGET:g}x: {verdict}")
    within = "PASS" if peak <= MAX_ASSOCIATIONS else "FAIL"
    lines.append(
        f"   PACS peak associations over every round: {peak} <= {MAX_ASSOCIATIONS}: {within}"
    )
    return lines


def orthanc_scaling(
    postgres: PostgresServer, base: Path, specs: list[StudySpec], repeat: int, level: str
) -> list[str]:
    queries = queryfiles(base / "queries-orthanc", specs)
    with OrthancServer(concurrent_jobs=4, scu_timeout=60) as orthanc:
        started = time.perf_counter()
        orthanc.upload_datasets(ds for spec in specs for ds in iter_datasets(spec))
        print(f"Orthanc loaded in {time.perf_counter() - started:.0f} s", flush=True)

        def add(ae: str, port: int) -> None:
            orthanc.add_modality(ae.lower(), ae, "127.0.0.1", port)

        peer = Peer("orthanc", orthanc.dicom_port, orthanc.ae_title, add)
        rounds = scaling(postgres, peer, queries, base, (1, 3), repeat, level)
    return scaling_table(
        f"2. Orthanc (TCP_NODELAY=1, no added latency), 1/3 head nodes, median of {repeat}:",
        _settings(specs, level, "Orthanc concurrent_jobs 4"),
        rounds,
    )


def _settings(specs: Sequence[StudySpec], level: str, peer: str) -> str:
    instances = sum(s.n_instances for s in specs)
    return (
        f"{len(specs)} studies x {instances // len(specs)} instances ({instances} in all, "
        f"{SERIES_PER_STUDY} series/study, 64x64 MR) in {JOBS} jobs via `pacsman submit`, "
        f"--save only (no de-identify/push: retrieval scaling); {peer}; "
        f"max_associations {MAX_ASSOCIATIONS} (cluster), max_associations_per_head_node "
        f"{PER_NODE} (1 retrieve worker/node); retrieve_level {level}; lease_seconds "
        f"{LEASE_SECONDS:g}; PostgreSQL job store, fresh database and folders per round; "
        "timed from the first submit to every job DONE"
    )


# -- 3. claim latency ----------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Claims:
    """Timed study claims: claim_studies alone, and claim + settle."""

    claim: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimTimes:
    build: float
    as_is: Claims
    indexed: Claims
    claim_job: list[float]


#: What claim_studies' ORDER BY needs: the first line of a study's series (benchmark only).
STUDY_INDEX = "CREATE INDEX bench_series_by_study ON series(run_id, study_instance_uid, line)"


def _fill_run(store: JobStore, studies: int, series: int) -> tuple[Run, int]:
    """One job whose run has ``studies`` studies of ``series`` series, every study OPEN."""
    uids = [f"1.2.826.0.1.3680043.9.7433.77.{n + 1}" for n in range(studies)]
    rows = tuple(QueryRow(line=n + 2, keys={"StudyInstanceUID": uid}) for n, uid in enumerate(uids))
    content = ("StudyInstanceUID\n" + "\n".join(uids) + "\n").encode()
    job = store.add_job(
        name="claims", queryfile_name="q.csv", content=content, options=JobOptions(save=True)
    )
    queryfile = QueryFile(path=Path("q.csv"), sha256="0" * 64, rows=rows)
    run = store.open_run(queryfile, "c" * 64, default_pacs="bench", job_id=job.id)
    store.attach_run(job.id, run.id)
    store.add_rows(run, [(row, "bench") for row in rows])
    for row, uid in zip(rows, uids, strict=True):
        matches = tuple(
            SeriesMatch(uid, f"{uid}.{s + 1}", series_number=str(s + 1), expected_instances=10)
            for s in range(series)
        )
        study = StudyMatch(uid, patient_id="P", study_date="20240101", series=matches)
        store.record_query(run, RowResult(row, "bench", (study,)))
    store.open_studies(run, job.id)
    return run, job.id


def _raw(location: str, sql: str) -> None:
    """One statement on the store's database, outside pacsman (benchmark set-up only)."""
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]
        return
    connection = sqlite3.connect(location)
    try:
        with connection:
            connection.execute(sql)
    finally:
        connection.close()


def _bulk_jobs(location: str, n: int) -> None:
    """``n`` QUEUED jobs, copied in one statement from the last one (benchmark only)."""
    _raw(
        location,
        f"WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {int(n)}) "
        "INSERT INTO jobs(name, priority, state, options_json, queryfile_name, queryfile, "
        "source, submitted_at) SELECT j.name, j.priority, 'QUEUED', j.options_json, "
        "j.queryfile_name, j.queryfile, j.source, j.submitted_at FROM k, "
        "(SELECT * FROM jobs ORDER BY id DESC LIMIT 1) j",
    )


def _claim_loop(
    store: JobStore, run: Run, job_id: int, claims: int, budget: float, out: Claims
) -> None:
    """Up to ``claims`` claim + settle round trips, or ``budget`` seconds."""
    deadline = time.monotonic() + budget
    for _ in range(claims):
        if time.monotonic() > deadline:
            return
        t0 = time.perf_counter()
        lease = store.claim_studies(run, job_id, "bench1", limit=1, lease_seconds=30.0)
        t1 = time.perf_counter()
        if lease is None:
            raise SystemExit(f"{store.where}: no study left to claim")
        store.settle_studies(replace(run, lease=lease), failed=set())
        out.claim.append(t1 - t0)
        out.round_trip.append(time.perf_counter() - t0)


def claim_times(
    location: str, studies: int, series: int, claims: int, queued: int, budget: float
) -> ClaimTimes:
    """Claims as the schema has it (for at most ``budget`` s), then with an index on the
    series' study, then claim_job with ``queued`` QUEUED jobs."""
    started = time.perf_counter()
    as_is, indexed = Claims(), Claims()
    with JobStore(location) as store:
        run, job_id = _fill_run(store, studies, series)
        build = time.perf_counter() - started
        _claim_loop(store, run, job_id, claims, budget, as_is)
        _raw(location, STUDY_INDEX)
        _claim_loop(store, run, job_id, claims, budget, indexed)
        store.settle_job(job_id, JobState.DONE)
    _bulk_jobs(location, queued)
    job_claims = []
    with JobStore(location) as store:
        for _ in range(claims):
            t0 = time.perf_counter()
            job = store.claim_job("bench1", lease_seconds=30.0)
            job_claims.append(time.perf_counter() - t0)
            if job is None:
                raise SystemExit(f"{location}: no job left to claim")
    return ClaimTimes(build, as_is, indexed, job_claims)


def claim_latency(
    postgres: PostgresServer,
    base: Path,
    queued: int,
    claims: int,
    budget: float,
    series: int = 4,
) -> list[str]:
    studies = queued // series
    found = {}
    for name in ("SQLite", "PostgreSQL"):
        if name == "SQLite":
            location = str(base / "claims.sqlite")
        else:
            postgres.create_database("claims")
            location = postgres.dsn("claims")
        found[name] = t = claim_times(location, studies, series, claims, queued, budget)
        print(
            f"  {name}: filled in {t.build:.1f} s; claim p50 "
            f"{_ms(statistics.median(t.as_is.claim))} ({len(t.as_is.claim)} claims), with "
            f"the index {_ms(statistics.median(t.indexed.claim))}",
            flush=True,
        )
    lines = [
        f"3. claim latency: one job, {studies * series:,} queued series ({studies:,} studies x "
        f"{series} series, all OPEN, filled through the JobStore API); up to {claims} x "
        f"claim_studies(limit=1) + settle_studies (at most {budget:g} s as the schema is), "
        f"then {claims} more with `{STUDY_INDEX}` added by this script; then {claims} x "
        f"claim_job with {queued:,} QUEUED jobs. SQLite file on {base}; PostgreSQL "
        "on 127.0.0.1 TCP (fsync off)",
        "   | job store | index | claims | claim_studies p50 | p99 | claim + settle p50 | p99 |",
        "   |---|---|---|---|---|---|---|",
    ]
    for name, t in found.items():
        for label, c in (("schema v9", t.as_is), ("+ series(run_id, study, line)", t.indexed)):
            cells = [
                str(len(c.claim)),
                _ms(statistics.median(c.claim)),
                _ms(_percentile(c.claim, 0.99)),
                _ms(statistics.median(c.round_trip)),
                _ms(_percentile(c.round_trip, 0.99)),
            ]
            lines.append(f"   | {name} | {label} | " + " | ".join(cells) + " |")
    for name, t in found.items():
        lines.append(
            f"   claim_job, {name}, {queued:,} QUEUED: p50 "
            f"{_ms(statistics.median(t.claim_job))}, p99 {_ms(_percentile(t.claim_job, 0.99))}"
        )
    sq, pg = found["SQLite"], found["PostgreSQL"]

    def ratio(get: Callable[[ClaimTimes], list[float]]) -> str:
        return f"{statistics.median(get(pg)) / statistics.median(get(sq)):.2f}x"

    lines.append(
        "   PostgreSQL / SQLite, p50: claim + settle as is "
        f"{ratio(lambda t: t.as_is.round_trip)}, with the index "
        f"{ratio(lambda t: t.indexed.round_trip)}, claim_job {ratio(lambda t: t.claim_job)}"
    )
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, help="rounds per node count (default 3)")
    parser.add_argument("--studies", type=int, help="studies in the 3 jobs (default 60)")
    parser.add_argument("--instances", type=int, help="instances per study (default 20)")
    parser.add_argument(
        "--delay", type=float, default=20.0, help="fake PACS ms per instance (default 20)"
    )
    parser.add_argument(
        "--level", default="series", choices=("series", "study"), help="retrieve_level"
    )
    parser.add_argument("--only", default="fake,orthanc,claims", help="comma-separated parts")
    parser.add_argument("--claims", type=int, help="timed claims per store (default 500)")
    parser.add_argument("--queued", type=int, help="queued series and jobs (default 10000)")
    parser.add_argument(
        "--claim-budget", type=float, help="seconds for the claims without the index (60)"
    )
    parser.add_argument("--workdir", type=Path, help="where the runs write (default /dev/shm)")
    parser.add_argument("--logs", type=Path, help="copy every node's log into this folder")
    parser.add_argument("--as-is", action="store_true", help="keep PYTHONDONTWRITEBYTECODE")
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 30 studies, 2,000 queued, 200 claims"
    )
    args = parser.parse_args()
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    studies = args.studies or (30 if quick else 60)
    instances = args.instances or 20
    claims = args.claims or (200 if quick else 500)
    queued = args.queued or (2000 if quick else 10_000)
    budget = args.claim_budget or (20.0 if quick else 60.0)
    global LOGS, PENDING_DELAY
    LOGS = args.logs
    PENDING_DELAY = args.delay / 1000
    only = {part.strip() for part in args.only.split(",")}
    base = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    specs = cohort(studies, instances)
    lines: list[str] = []
    began = time.perf_counter()
    print(f"start: {_load()}", flush=True)
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="pacsman-cluster-bench-", dir=base) as tmp,
        PostgresServer() as postgres,
    ):
        work = Path(tmp)
        print(bytecode_cache(work, as_is=args.as_is), flush=True)
        if "fake" in only:
            lines += fake_pacs_scaling(postgres, work, specs, repeat, args.level)
        if "orthanc" in only:
            lines += orthanc_scaling(postgres, work, specs, repeat, args.level)
        if "claims" in only:
            lines += claim_latency(postgres, work, queued, claims, budget)
    print(f"\ncluster benchmark, {time.perf_counter() - began:.0f} s; end: {_load()}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
