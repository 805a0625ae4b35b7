"""``pacsman serve`` measured as a user runs it (issue 13): throughput against the one-shot
command, idle CPU, memory with a long queue, and submit-to-first-C-FIND latency.

    python3 benchmarks/service.py [--repeat 3] [--instances 3000] [--series]
        [--idle-seconds 60] [--rows 10000] [--latency-runs 5]
        [--only throughput,idle,rss,latency] [--workdir DIR] [--as-is] [--quick]

Every service is ``python -m pacsman serve`` in a subprocess
(:class:`pacsman.testing.service.ServiceProcess`, with a stand-in NOTIFY_SOCKET), timed only
once it has said READY=1.  Everything listens on 127.0.0.1 on ports the OS chose.

1. **Throughput.**  Orthanc (TCP_NODELAY=1) holds 30 MR studies of 100 instances (~400 MB),
   loaded once.  The service gets 3 jobs of 10 studies, queued by three ``pacsman submit``
   right after each other, timed from the start of the first submit until the job store
   shows all three DONE.  The reference is the same 30 studies as one ``pacsman --queryfile
   q.csv --save``, timed as a whole subprocess.  A third line hands the same 3 jobs over
   with ``POST /api/jobs`` (curl, with the API token) instead of ``pacsman submit``.
   ``retrieve_level: study`` (``--series`` adds a round at series level).  Each run has a
   fresh service, job store and output folder; the runs are interleaved and the median of
   ``--repeat`` is printed.  Target: service wall <= 1.1x the single command.
2. **Idle CPU.**  ``retrieve_window`` is a one-minute window 12 hours from now (closed), and
   10 small jobs are submitted.  Once every claimed job waits for the window (its
   ``waiting_for_window`` event), the CPU time of the service (user + system from /proc, its
   children included) over ``--idle-seconds``.  Target <= 1 % of one core.
3. **RSS.**  10 jobs of 10,000 rows (StudyInstanceUID and PatientID of studies that do not
   exist), the window closed, and a fake PACS that answers each C-FIND after a pause, so the
   claimed jobs stay in their query stage holding their rows while the others wait QUEUED.
   Once every claimed job has its rows in the job store and the HTTP API has listed every
   job (``/api/jobs``, each ``/api/jobs/{id}``, ``/metrics``, ``/``): the peak RSS (VmHWM).
   Target <= 200 MB.
4. **Submit to first C-FIND.**  The service READY and idle, against the fake PACS (in this
   process, polled every 2 ms): from the start of ``pacsman submit`` (a subprocess) until the
   PACS receives the job's first C-FIND; median of 5.  A line labelled "component only":
   from the ``job_queued`` log event (written by ``submit``) to that C-FIND.  The same for
   ``POST /api/jobs`` with curl, interleaved.  Target <= 1 s.

Work folders go to /dev/shm by default (``--workdir`` to change it), as in
``retrieve_throughput.py``.  Where ``PYTHONDONTWRITEBYTECODE`` is set (the development
machines), pacsman's subprocesses get a private bytecode cache instead, as an installed
pacsman has (``--as-is`` keeps the environment).  Ctrl-C (or SIGTERM) stops every process
this script started.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import NoReturn

from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import FINAL_STATES, Job, JobState
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.service import ServiceProcess
from pacsman.testing.synthetic import SeriesSpec, StudySpec, benchmark_cohort, iter_datasets

MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACSMAN = [sys.executable, "-m", "pacsman"]
SUBMIT_TIMEOUT = 120.0
TARGETS = {"throughput": 1.1, "idle": 1.0, "rss": 200.0, "latency": 1.0}


# -- /proc ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc now)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, the reaped ones included."""
    total = 0
    for member in _descendants(pid):
        try:
            total += sum(int(f) for f in _stat_fields(member)[11:15])  # utime stime cu* cs*
        except (OSError, ValueError):
            continue
    return total / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. VmHWM or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def thread_switches(pid: int) -> dict[int, int]:
    """Voluntary + involuntary context switches per thread of ``pid`` (wake-ups, roughly)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        found[int(task.name)] = sum(
            int(line.split()[1]) for line in text.splitlines() if "ctxt_switches" in line
        )
    return found


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of ``pid``."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- waits, config, submit -------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    service: ServiceProcess | None = None,
) -> None:
    """Poll ``condition`` every ``interval`` s for at most ``timeout`` s.

    Raises:
        SystemExit: not in time, or the service exited first (its log's tail is shown).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if service is not None and service.exited():
            raise SystemExit(f"pacsman serve exited while waiting for {what}:\n{_tail(service)}")
        if time.monotonic() >= deadline:
            log = "" if service is None else f"\n{_tail(service)}"
            raise SystemExit(f"gave up after {timeout:g} s waiting for {what}{log}")
        time.sleep(interval)


def _tail(service: ServiceProcess) -> str:
    return service.log_text()[-3000:]


@dataclass(frozen=True)
class Pacs:
    """Where the PACS is: its port and AE title."""

    port: int
    ae_title: str


@dataclass(frozen=True)
class Setup:
    """One config: its file, the service's HTTP address, a curl header file holding the API
    token (0600, so that the token is on no command line), its job store."""

    config: Path
    url: str
    auth_header: Path

    @property
    def jobstore(self) -> Path:
        return self.config.parent / "jobs.sqlite"


def write_config(
    work: Path, pacs: Pacs, *, local_port: int, level: str = "study", node: str = ""
) -> Setup:
    """A config for one PACS node and the service (the one-shot command reads it too), with
    an API token file (0600) for ``POST /api/jobs``."""
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    token_file, header = work / "http-token", work / "http-auth-header"
    _private_file(token_file, token)
    _private_file(header, f"Authorization: Bearer {token}\n")
    http_port = free_port()
    text = (
        f"local: {{ae_title: PACSMAN, bind_host: 127.0.0.1, port: {local_port}}}\n"
        f"pacs:\n  bench:\n    host: 127.0.0.1\n    port: {pacs.port}\n"
        f"    called_ae_title: {pacs.ae_title}\n    retrieve_level: {level}\n"
        + "".join(f"    {line}\n" for line in node.strip().splitlines())
        + f"store_root: {work}/data\njobstore: {work}/jobs.sqlite\n"
        "serve:\n  node_name: bench\n  min_free_gb: 0\n  drain_timeout: 5\n"
        f"  http: {{port: {http_port}, token_file: {token_file}}}\n"
    )
    path = work / "pacsman.yaml"
    path.write_text(text, encoding="utf-8")
    return Setup(path, f"http://127.0.0.1:{http_port}", header)


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def closed_window(now: datetime | None = None) -> str:
    """A one-minute ``retrieve_window`` twelve hours from now: closed for the next 12 h."""
    start = (now or datetime.now()) + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    return f'"{start:%H:%M}-{end:%H:%M}"'


@dataclass(frozen=True)
class Submitted:
    """One submission: the job's id, when it started (both clocks), and when the job_queued
    event says it was queued (from ``pacsman submit``'s log; None for HTTP)."""

    job_id: int
    started: float  # perf_counter
    started_wall: float  # time.time()
    seconds: float
    queued_wall: float | None


#: How a job is handed to the service: ``pacsman submit``, or ``POST /api/jobs`` with curl.
VIA = ("submit", "http")
_JOB_ID = re.compile(r"\bjob (\d+) queued\b")


def start_submit(
    setup: Setup, queryfile: Path, via: str
) -> tuple[subprocess.Popen[str], float, float]:
    if via == "submit":
        command = [*PACSMAN, "submit", str(queryfile), "--save", "--config", str(setup.config)]
    else:
        command = ["/usr/bin/curl", "-sS", "--fail-with-body", "--max-time", "60"]
        command += ["-H", f"@{setup.auth_header}", "-F", f"file=@{queryfile}"]
        command += ["-F", "save=true", f"{setup.url}/api/jobs"]
    wall, started = time.time(), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, started, wall


def finish_submit(process: subprocess.Popen[str], started: float, wall: float) -> Submitted:
    try:
        out, err = process.communicate(timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise SystemExit(f"{process.args!r} took more than {SUBMIT_TIMEOUT:g} s") from None
    except BaseException:  # Ctrl-C: it goes too
        _kill(process)
        raise
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"submission failed ({process.returncode}):\n{out}\n{err[-2000:]}")
    if out.startswith("{"):  # POST /api/jobs answers the job as JSON
        return Submitted(int(json.loads(out)["id"]), started, wall, seconds, None)
    found = _JOB_ID.search(out)
    if found is None:
        raise SystemExit(f"pacsman submit printed no job id:\n{out}\n{err[-2000:]}")
    return Submitted(int(found.group(1)), started, wall, seconds, _event_time(err, "job_queued"))


def submit(setup: Setup, queryfile: Path, via: str = "submit") -> Submitted:
    return finish_submit(*start_submit(setup, queryfile, via))


def _kill(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate()


def _events(text: str) -> Iterator[dict[str, object]]:
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _event_time(text: str, event: str, **match: object) -> float | None:
    for fields in _events(text):
        if fields.get("event") == event and all(fields.get(k) == v for k, v in match.items()):
            return datetime.fromisoformat(str(fields["timestamp"])).timestamp()
    return None


def job_states(jobstore: Path, ids: Sequence[int] = ()) -> dict[int, JobState]:
    with JobStore(jobstore, read_only=True) as store:
        jobs = [store.job(i) for i in ids] if ids else store.jobs()
    return {job.id: job.state for job in jobs}


def jobs(jobstore: Path) -> list[Job]:
    with JobStore(jobstore, read_only=True) as store:
        return store.jobs()


def queryfile(path: Path, specs: Sequence[StudySpec]) -> Path:
    rows = "".join(f"{s.study_instance_uid},{s.patient_id}\n" for s in specs)
    path.write_text("StudyInstanceUID,PatientID\n" + rows, encoding="utf-8")
    return path


def count_instances(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.dcm"))


@contextmanager
def service_running(config: Path) -> Iterator[ServiceProcess]:
    """``pacsman serve`` READY; stopped (SIGTERM, then SIGKILL of its group) on the way out."""
    process = ServiceProcess(config)
    try:
        process.start()
        process.wait_ready(timeout=60)
        yield process
    finally:
        process.stop(timeout=30)


def _small_study(tag: str, n: int) -> StudySpec:
    return StudySpec(
        patient_id=f"{tag}{n:03d}",
        patient_name=f"Bench^{tag}{n}",
        study_date="20240301",
        accession_number=f"{tag}{n:04d}",
        study_description=f"service benchmark {tag}",
        series=(SeriesSpec(series_number=1, series_description="S1", n_instances=2),),
        uid_seed=f"svc-bench-{tag}-{n}",
    )


# -- 1. throughput -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measured run: wall seconds, CPU seconds of pacsman's processes (the service's and
    every submit's), and the part of the wall spent handing the jobs over (the service)."""

    seconds: float
    cpu: float
    submit_seconds: float = 0.0


@dataclass
class Cohort:
    specs: tuple[StudySpec, ...]
    size: int  # bytes, as Orthanc stores them
    all_queries: Path
    job_queries: list[Path] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(spec.n_instances for spec in self.specs)


def load_cohort(orthanc: OrthancServer, work: Path, instances: int, jobs_n: int) -> Cohort:
    started = time.perf_counter()
    studies = jobs_n * 10
    specs = benchmark_cohort(instances, n_studies=studies, series_per_study=2)
    orthanc.upload_datasets(ds for spec in specs for ds in iter_datasets(spec))
    size = sum(
        int(orthanc.rest("GET", f"/studies/{s['ID']}/statistics")["UncompressedSize"])
        for s in orthanc.studies()
    )
    work.mkdir(parents=True, exist_ok=True)
    cohort = Cohort(specs, size, queryfile(work / "all.csv", specs))
    per_job = len(specs) // jobs_n
    for j in range(jobs_n):
        chunk = specs[j * per_job : (j + 1) * per_job]
        cohort.job_queries.append(queryfile(work / f"job{j + 1}.csv", chunk))
    print(
        f"Orthanc (TCP_NODELAY=1): {cohort.instances} instances in {studies} studies, "
        f"{size / MB:.0f} MB, loaded in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return cohort


def _orthanc_setup(orthanc: OrthancServer, work: Path, level: str) -> Setup:
    local_port = free_port()
    pacs = Pacs(orthanc.dicom_port, orthanc.ae_title)
    setup = write_config(work, pacs, local_port=local_port, level=level)
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", local_port)
    return setup


def run_command(orthanc: OrthancServer, cohort: Cohort, work: Path, level: str) -> Run:
    """The reference: one ``pacsman --queryfile all.csv --save``, the whole subprocess."""
    setup = _orthanc_setup(orthanc, work, level)
    command = [*PACSMAN, "--queryfile", str(cohort.all_queries), "--save"]
    cpu0 = children_cpu()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [*command, "--config", str(setup.config)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit("pacsman --save took more than 900 s") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pacsman --save failed ({done.returncode}):\n{done.stderr[-3000:]}")
    _check_files(work, cohort, "pacsman --save")
    return Run(seconds, children_cpu() - cpu0)


def run_service(orthanc: OrthancServer, cohort: Cohort, work: Path, level: str, *, via: str) -> Run:
    """3 jobs handed one after the other to an already READY service: from the start of
    the first hand-over until the job store shows all three ended (DONE, or the run fails)."""
    setup = _orthanc_setup(orthanc, work, level)
    with service_running(setup.config) as service:
        cpu0, children0 = tree_cpu(service.pid), children_cpu()
        started = time.perf_counter()
        ids = [submit(setup, path, via).job_id for path in cohort.job_queries]
        submitted = time.perf_counter() - started

        def ended() -> bool:
            return all(s in FINAL_STATES for s in job_states(setup.jobstore, ids).values())

        wait_until(ended, timeout=900, what="3 jobs to end", service=service)
        seconds = time.perf_counter() - started
        cpu = tree_cpu(service.pid) - cpu0 + children_cpu() - children0
        states = job_states(setup.jobstore, ids)
        if set(states.values()) != {JobState.DONE}:
            raise SystemExit(f"service jobs ended {states}:\n{_tail(service)}")
    _check_files(work, cohort, "pacsman serve")
    return Run(seconds, cpu, submitted)


def _check_files(work: Path, cohort: Cohort, who: str) -> None:
    found = count_instances(work / "data")
    if found != cohort.instances:
        raise SystemExit(f"{who}: {found} files on disk, expected {cohort.instances}")


COMMAND = "pacsman --save, one command"
SERVICE_SUBMIT = "serve, 3 x pacsman submit"
SERVICE_HTTP = "serve, 3 x POST /api/jobs"


def throughput(
    orthanc: OrthancServer, cohort: Cohort, base: Path, levels: Sequence[str], repeat: int
) -> list[str]:
    contenders: dict[str, Callable[[OrthancServer, Cohort, Path, str], Run]] = {
        COMMAND: run_command,
        SERVICE_SUBMIT: functools.partial(run_service, via="submit"),
        SERVICE_HTTP: functools.partial(run_service, via="http"),
    }
    lines = []
    for level in levels:
        runs: dict[str, list[Run]] = {name: [] for name in contenders}
        for attempt in range(repeat):
            order = list(contenders)
            shift = attempt % len(order)  # interleaved, each first in turn
            for index, name in enumerate(order[shift:] + order[:shift]):
                work = base / f"{level}-{attempt}-{index}"
                result = contenders[name](orthanc, cohort, work, level)
                runs[name].append(result)
                _remove(work)
                print(
                    f"  {level} #{attempt + 1} {name}: {result.seconds:.2f} s wall, "
                    f"{result.cpu:.1f} s CPU",
                    flush=True,
                )
        lines += _throughput_table(level, cohort, runs, repeat)
    return lines


def _throughput_table(level: str, cohort: Cohort, runs: dict[str, list[Run]], n: int) -> list[str]:
    medians = {
        name: Run(
            statistics.median(r.seconds for r in values),
            statistics.median(r.cpu for r in values),
            statistics.median(r.submit_seconds for r in values),
        )
        for name, values in runs.items()
    }
    reference = medians[COMMAND].seconds
    lines = [
        f"1. throughput, retrieve_level: {level}: {cohort.instances} instances, "
        f"{cohort.size / MB:.0f} MB, {len(cohort.specs)} studies (3 jobs of "
        f"{len(cohort.specs) // 3}); median of {n}",
        f"   {'contender':30} {'wall s':>7} {'MB/s':>6} {'CPU s':>6} {'hand-over s':>12} "
        f"{'x command':>10}",
    ]
    for name, r in medians.items():
        handover = f"{r.submit_seconds:12.2f}" if name != COMMAND else f"{'':12}"
        lines.append(
            f"   {name:30} {r.seconds:7.2f} {cohort.size / MB / r.seconds:6.1f} "
            f"{r.cpu:6.1f} {handover} {r.seconds / reference:9.2f}x"
        )
    lines.append(
        "   (wall: the command as a whole process; the service from the first hand-over to "
        "all 3 DONE; CPU: pacsman's processes, submits included)"
    )
    ratio = medians[SERVICE_SUBMIT].seconds / reference
    lines.append(
        f"   target: serve with pacsman submit <= {TARGETS['throughput']}x the command: "
        f"{_verdict(ratio, 'throughput')}"
    )
    return lines


def _remove(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--", str(path)], check=False, timeout=120)


def _fake_setup(pacs: FakePacs, work: Path, node: str = "") -> Setup:
    local_port = free_port()
    pacs.add_move_destination("PACSMAN", "127.0.0.1", local_port)
    return write_config(work, Pacs(pacs.port, pacs.ae_title), local_port=local_port, node=node)


# -- 2. idle CPU ----------------------------------------------------------------------------------


def idle_cpu(base: Path, seconds: float, n_jobs: int) -> list[str]:
    specs = [_small_study("IDLE", n) for n in range(n_jobs)]
    window = closed_window()
    with ExitStack() as stack:
        pacs = stack.enter_context(FakePacs.from_specs(specs))
        setup = _fake_setup(pacs, base / "idle", node=f"retrieve_window: {window}")
        service = stack.enter_context(service_running(setup.config))
        for n, spec in enumerate(specs):
            submit(setup, queryfile(setup.config.parent / f"idle{n}.csv", [spec]))
        waiting = _wait_windowed(service, setup.jobstore, n_jobs)
        time.sleep(2.0)  # whatever the last claim started has settled
        cpu0, threads0 = tree_cpu(service.pid), thread_cpu(service.pid)
        switches0 = thread_switches(service.pid)
        started = time.perf_counter()
        _sleep_watching(service, seconds)
        elapsed = time.perf_counter() - started
        cpu = tree_cpu(service.pid) - cpu0
        threads1, switches1 = thread_cpu(service.pid), thread_switches(service.pid)
        states = list(job_states(setup.jobstore).values())
        echoes = sum(c.startswith("C-ECHO") for c in pacs.calls)
        pid = service.pid
    percent = cpu / elapsed * 100
    running, queued = states.count(JobState.RUNNING), states.count(JobState.QUEUED)
    used = sorted(((threads1[t] - threads0.get(t, 0.0), t) for t in threads1), reverse=True)
    switches = sum(n - switches0.get(t, 0) for t, n in switches1.items()) / elapsed
    return [
        f"2. idle CPU, {n_jobs} jobs, retrieve_window {window} (closed), over {elapsed:.0f} s: "
        f"{cpu:.2f} CPU s = {percent:.2f} % of a core",
        f"   jobs: {running} RUNNING (each waiting for the window: {waiting} events), "
        f"{queued} QUEUED; {len(threads1)} threads, {switches:.0f} context switches/s; "
        f"{echoes} C-ECHO(s) in all",
        "   busiest threads (CPU s): "
        + ", ".join(f"{'main' if t == pid else f'tid {t}'} {s:.2f}" for s, t in used[:4]),
        f"   target <= {TARGETS['idle']:g} % of a core: {_verdict(percent, 'idle')}",
    ]


def _wait_windowed(service: ServiceProcess, jobstore: Path, n_jobs: int) -> int:
    """Wait until every RUNNING job logged ``waiting_for_window`` and the rest are QUEUED."""

    def waiting() -> int:
        return sum(1 for f in _events(service.log_text()) if f.get("event") == "waiting_for_window")

    def settled() -> bool:
        states = list(job_states(jobstore).values())
        running = states.count(JobState.RUNNING)
        return (
            len(states) == n_jobs
            and running > 0
            and running + states.count(JobState.QUEUED) == n_jobs
            and waiting() >= running
        )

    wait_until(settled, timeout=120, what="the jobs to wait for the window", service=service)
    return waiting()


def _sleep_watching(service: ServiceProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if service.exited():
            raise SystemExit(f"pacsman serve exited while idle:\n{_tail(service)}")
        time.sleep(min(left, 1.0))


# -- 3. RSS with a long queue ----------------------------------------------------------------------


def big_queryfile(path: Path, job: int, rows: int) -> Path:
    lines = [
        f"1.2.826.0.1.3680043.9.7433.{job}.{n + 1},NOSUCH{job:02d}{n:05d}" for n in range(rows)
    ]
    path.write_text("StudyInstanceUID,PatientID\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def rss(base: Path, n_jobs: int, rows: int) -> list[str]:
    with ExitStack() as stack:
        pacs = stack.enter_context(FakePacs.from_specs([_small_study("RSS", 0)]))
        pacs.faults = Faults(find_delay=0.5)  # the claimed jobs stay in their query stage
        setup = _fake_setup(pacs, base / "rss", node=f"retrieve_window: {closed_window()}")
        service = stack.enter_context(service_running(setup.config))
        ready_hwm = status_kb(service.pid, "VmHWM")
        started = time.perf_counter()
        for n in range(n_jobs):
            submit(setup, big_queryfile(setup.config.parent / f"big{n}.csv", n, rows))
        submit_seconds = time.perf_counter() - started
        wait_until(
            lambda: _rows_loaded(setup.jobstore, rows),
            timeout=300,
            what="the claimed jobs to hold their rows",
            interval=0.5,
            service=service,
        )
        looked = _look_at_jobs(setup)
        time.sleep(1.0)
        hwm, now = status_kb(service.pid, "VmHWM"), status_kb(service.pid, "VmRSS")
        states = list(job_states(setup.jobstore).values())
        children = [status_kb(p, "VmHWM") for p in _descendants(service.pid)[1:]]
    running, queued = states.count(JobState.RUNNING), states.count(JobState.QUEUED)
    peak = hwm / 1024
    return [
        f"3. RSS, {n_jobs} jobs of {rows:,} rows (pacsman submit): peak (VmHWM) {peak:.0f} MB, "
        f"now {now / 1024:.0f} MB; peak at READY, before any job: {ready_hwm / 1024:.0f} MB",
        f"   jobs: {running} RUNNING (rows loaded, querying a slow PACS), {queued} QUEUED; "
        f"{n_jobs} submits took {submit_seconds:.1f} s; HTTP: {looked}"
        + (f"; child processes' peak {max(children) / 1024:.0f} MB" if children else ""),
        f"   target <= {TARGETS['rss']:g} MB: {_verdict(peak, 'rss')}",
    ]


def _rows_loaded(jobstore: Path, rows: int) -> bool:
    with JobStore(jobstore, read_only=True) as store:
        running = store.jobs([JobState.RUNNING])
        if not running:
            return False
        for job in running:
            if job.run_id is None:
                return False
            if len(store.row_states(store.run_by_id(job.run_id))) < rows:
                return False
    return True


def _look_at_jobs(setup: Setup) -> str:
    """GET what an operator's page and a Prometheus scrape would: every job, each job, the
    metrics and the page.  Returns the status codes seen."""
    ids = [job.id for job in jobs(setup.jobstore)]
    paths = ["/api/jobs", *(f"/api/jobs/{i}" for i in ids), "/metrics", "/"]
    codes: dict[int, int] = {}
    for path in paths:
        code = _get(setup.url + path)
        codes[code] = codes.get(code, 0) + 1
    return f"{len(paths)} GETs, " + ", ".join(f"{n}x {code}" for code, n in sorted(codes.items()))


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- 4. submit to first C-FIND ---------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    total: float  # hand-over start -> first C-FIND
    from_queued: float  # job_queued event -> first C-FIND
    to_queued: float  # hand-over start -> job_queued
    queued_to_started: float  # job_queued -> the service's job_started
    started_to_find: float  # job_started -> first C-FIND


def latency(base: Path, repeat: int) -> list[str]:
    specs = [_small_study("LAT", n) for n in range(repeat * len(VIA))]
    found: dict[str, list[Latency]] = {via: [] for via in VIA}
    with ExitStack() as stack:
        pacs = stack.enter_context(FakePacs.from_specs(specs))
        setup = _fake_setup(pacs, base / "latency")
        service = stack.enter_context(service_running(setup.config))
        for n in range(repeat):
            for via in VIA if n % 2 == 0 else VIA[::-1]:  # interleaved
                spec = specs[len(found["submit"]) + len(found["http"])]
                query = queryfile(setup.config.parent / f"{spec.patient_id}.csv", [spec])
                found[via].append(_one_latency(pacs, service, setup, query, via))
                print(f"  latency #{n + 1} {via}: {found[via][-1].total:.3f} s", flush=True)
    return _latency_lines(found, repeat)


def _one_latency(
    pacs: FakePacs, service: ServiceProcess, setup: Setup, query: Path, via: str
) -> Latency:
    # idle: the previous job's end has settled; a random phase against the service's loop
    time.sleep(2.0 + random.random())
    before = sum(c.startswith("C-FIND") for c in pacs.calls)
    process, started, wall = start_submit(setup, query, via)
    try:
        find, find_wall = _first_find(pacs, before, process)
    except BaseException:
        _kill(process)
        raise
    submitted = finish_submit(process, started, wall)
    _wait_job_ended(service, setup.jobstore, submitted.job_id)
    log = service.log_text()
    queued = submitted.queued_wall or _event_time(log, "job_queued", job_id=submitted.job_id)
    job_started = _event_time(log, "job_started", job_id=submitted.job_id)
    if queued is None or job_started is None:
        raise SystemExit("no job_queued or job_started event: is log.level info?")
    return Latency(
        total=find - started,
        from_queued=find_wall - queued,
        to_queued=queued - wall,
        queued_to_started=job_started - queued,
        started_to_find=find_wall - job_started,
    )


def _latency_lines(found: dict[str, list[Latency]], repeat: int) -> list[str]:
    lines = [f"4. hand-over to first C-FIND (fake PACS, service idle), median of {repeat}:"]
    names = {"submit": "pacsman submit", "http": "POST /api/jobs (curl)"}
    for via, runs in found.items():
        med = {k: statistics.median(getattr(x, k) for x in runs) for k in Latency.__annotations__}
        lines += [
            f"   {names[via]:22} {med['total']:6.3f} s  (runs: "
            + ", ".join(f"{x.total:.2f}" for x in runs)
            + ")",
            f"   {'':22} breakdown: start -> job_queued {med['to_queued']:.3f} s, job_queued "
            f"-> job_started (claim) {med['queued_to_started']:.3f} s, job_started -> C-FIND "
            f"{med['started_to_find']:.3f} s",
        ]
        if via == "submit":
            total, component = med["total"], med["from_queued"]
            lines.append(
                f"   component only: job_queued event -> first C-FIND {component:.3f} s "
                "(leaves out the command's start-up)"
            )
    lines.append(
        f"   target (pacsman submit) <= {TARGETS['latency']:g} s: {_verdict(total, 'latency')}"
    )
    return lines


def _wait_job_ended(service: ServiceProcess, jobstore: Path, job_id: int) -> None:
    def ended() -> bool:
        return job_states(jobstore, [job_id])[job_id] in FINAL_STATES

    wait_until(ended, timeout=60, what=f"job {job_id} to end", service=service)


def _first_find(pacs: FakePacs, before: int, process: subprocess.Popen[str]) -> tuple[float, float]:
    """Poll the fake PACS every 2 ms for a C-FIND after the first ``before``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(c.startswith("C-FIND") for c in pacs.calls) > before:
            return time.perf_counter(), time.time()
        if process.poll() not in (None, 0):
            raise SystemExit(f"the submission failed: {process.communicate()}")
        time.sleep(0.002)
    raise SystemExit("no C-FIND within 30 s of the submission")


# -- report -------------------------------------------------------------------------------------


def _verdict(value: float, target: str) -> str:
    limit = TARGETS[target]
    if target == "throughput":
        return f"{value:.2f}x {'PASS' if value <= limit else 'MISS'}"
    return "PASS" if value <= limit else f"MISS ({value:.2f} > {limit:g})"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def bytecode_cache(work: Path, *, as_is: bool) -> str:
    """Let pacsman's subprocesses load compiled bytecode, as an installed pacsman does.

    Under ``PYTHONDONTWRITEBYTECODE`` (set on the development machines) every process
    compiles each module whose ``.pyc`` is stale again, which is a cost of the checkout, not
    of pacsman.  The subprocesses get a private ``PYTHONPYCACHEPREFIX`` instead, filled once
    here; nothing is written into the source tree.
    """
    if as_is or not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "bytecode as this environment has it"
    os.environ.pop("PYTHONDONTWRITEBYTECODE")
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    modules = "pacsman.cli, pacsman.service.cli, pacsman.service.scheduler, pacsman.pipeline"
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, timeout=600)
    return f"bytecode cached in {work / 'pycache'} (PYTHONDONTWRITEBYTECODE dropped; --as-is)"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that every ``finally`` stops what it started."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_script(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; Ctrl-C (or SIGTERM, see :func:`sigterm_as_interrupt`)
    exits 130 once every ``finally`` has stopped what it started."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process this script started was stopped", file=sys.stderr)
        sys.exit(130)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, help="throughput runs per contender (default 3)")
    parser.add_argument("--instances", type=int, help="instances in all 3 jobs (default 3000)")
    parser.add_argument("--series", action="store_true", help="also retrieve_level: series")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 60)")
    parser.add_argument("--rows", type=int, help="rows per job in the RSS test (default 10000)")
    parser.add_argument("--latency-runs", type=int, help="submit-to-C-FIND runs (default 5)")
    parser.add_argument(
        "--only", default="throughput,idle,rss,latency", help="comma-separated measurements"
    )
    parser.add_argument("--workdir", type=Path, help="where the runs write (default /dev/shm)")
    parser.add_argument(
        "--as-is",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE if set (every process compiles stale modules again)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 instances, 1 run, 15 s idle, 2,000 rows, 3 latency runs",
    )
    args = parser.parse_args()
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    instances = args.instances or (300 if quick else 3000)
    idle_seconds = args.idle_seconds or (15.0 if quick else 60.0)
    rows = args.rows or (2000 if quick else 10_000)
    latency_runs = args.latency_runs or (3 if quick else 5)
    only = {part.strip() for part in args.only.split(",")}
    base = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    levels = ["study", "series"] if args.series else ["study"]
    lines: list[str] = []
    began = time.perf_counter()
    print(f"start: {_load()}", flush=True)
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="pacsman-service-bench-", dir=base) as tmp,
    ):
        work = Path(tmp)
        print(bytecode_cache(work, as_is=args.as_is), flush=True)
        if "throughput" in only:
            with OrthancServer(concurrent_jobs=4, scu_timeout=60) as orthanc:
                cohort = load_cohort(orthanc, work / "queries", instances, 3)
                lines += throughput(orthanc, cohort, work, levels, repeat)
        if "idle" in only:
            lines += idle_cpu(work, idle_seconds, 10)
        if "rss" in only:
            lines += rss(work, 10, rows)
        if "latency" in only:
            lines += latency(work, latency_runs)
    print(f"\nservice benchmark, {time.perf_counter() - began:.0f} s; end: {_load()}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
