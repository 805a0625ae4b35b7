"""The retrieve as a user runs it (issue 15): the whole ``pacsman --queryfile q.csv --save``
as a subprocess, beside DCMTK and pynetdicom, in one run, interleaved.

    python3 benchmarks/retrieve_command.py [--instances 3000] [--repeat 3] [--nagle]
        [--only thirty,one] [--lines dcmtk,study,...] [--out-dir DIR] [--json OUT]
        [--keep-logs DIR] [--as-is] [--quick]

One Orthanc (TCP_NODELAY=1 unless ``--nagle``; ``ConcurrentJobs`` 4) is loaded once over
REST with two cohorts of the same size: THIRTY studies of 100 MR instances (2 series each)
and ONE study of 3,000 (10 series), ~400 MB each (``--instances`` scales both).  Lines, each
a fresh process (and a fresh output folder) per run, every run's files counted (a run that
lost a file is void: left out of the median, reported, exit status 1):

* ``dcmtk``: DCMTK ``/usr/bin/storescp`` (``TCP_NODELAY=1``), already listening, and
  ``/usr/bin/movescu`` with every study query on ONE association; wall from launching
  movescu until it exits.
* ``study``, ``series``: ``pacsman --queryfile q.csv --save`` (a StudyInstanceUID column)
  with ``retrieve_level: study`` / ``series``; wall from exec until the last process of its
  tree exits (this script is a child subreaper, so a pacsman child that outlives the command
  is waited for too).  CPU (user + system) from ``wait4`` (every process of the tree, the
  children reaped by pacsman included); peak RSS from GNU ``/usr/bin/time`` as launcher
  (``%M``) and a /proc sampler of every process of the tree (VmHWM every 0.1 s).
* ``assoc2`` (30 studies only): the same, study level, ``max_associations: 2`` (2 retrieve
  workers, one association each).
* ``fork2`` (30 studies only): DCMTK ``storescp --fork`` and 2 movescu in parallel, 15
  studies each: the reference for ``assoc2``.
* ``pynetdicom``: pynetdicom's ``python -m pynetdicom storescp`` app and DCMTK movescu.
* ``serve``: ``pacsman serve`` READY (not timed), then one ``pacsman submit q.csv --save``;
  wall from the start of the submit until the job store shows the job ended (polled every
  50 ms); CPU: the service's process tree over that span, the submit included.
* ``component``: component only, pacsman's :class:`~pacsman.dicom.scp.StorageSCP` alone
  (``retrieve_throughput.py --serve``) fed by DCMTK movescu, as ``retrieve_throughput.py``
  measures it.
* ``python``, ``import``, ``version``: ``python -c pass``, ``python -c 'import pynetdicom'``
  and ``pacsman --version``, the fixed-cost references (pooled over the scenarios).

For the reference lines, CPU is the receiver's (its reaped children included) plus
movescu's.  "PACS CPU" is Orthanc's over the same span.  pacsman's phases come from its own
log events (JSON lines on stderr; ``log.level`` info, what a user runs): start-up is exec ->
``pacs_ready`` (logged once the C-ECHO pre-flight has answered), the working span
``pacs_ready`` -> the last ``series_retrieved``, shutdown that event -> the exit; fixed cost
= start-up + shutdown = wall - working span.

pacsman runs as the installed entry script next to ``sys.executable`` (``bin/pacsman``,
what users run), else ``sys.executable -m pacsman``; every Python subprocess is
``sys.executable`` (not the pyenv shim).  Where ``PYTHONDONTWRITEBYTECODE`` is set, the
subprocesses get a private ``PYTHONPYCACHEPREFIX`` filled before the first run (every
pacsman module imported once, then one untimed command), as an installed pacsman has
compiled bytecode (``--as-is`` keeps the environment).  Output goes to /dev/shm by default
(``--out-dir``).  Ctrl-C or SIGTERM stops every process this script started.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from retrieve_throughput import (  # benchmarks/retrieve_throughput.py
    Cohort,
    Receiver,
    _count_files,
    _load,
    _movescu,
    _proc_cpu,
    _proc_hwm_kb,
    _query_file,
    _routes,
    _start_dcmtk,
    _start_pacsman,
    _start_pynetdicom,
    _thirty_studies,
)
from service import (  # benchmarks/service.py
    Pacs,
    bytecode_cache,
    children_cpu,
    count_instances,
    finish_submit,
    job_states,
    run_script,
    service_running,
    sigterm_as_interrupt,
    status_kb,
    tree_cpu,
    wait_until,
    write_config,
)

from pacsman.jobstore.jobs import FINAL_STATES, JobState
from pacsman.testing.dcmtk import dcmtk_env, dcmtk_tool
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import benchmark_cohort

MB = 1_000_000
RUN_TIMEOUT = 900.0  # seconds: any one run
SAMPLE_INTERVAL = 0.1  # seconds: the /proc sampler of child processes' peak RSS
PR_SET_CHILD_SUBREAPER = 36
TIME = Path("/usr/bin/time")  # GNU time: the peak RSS of a command, measured from outside

LABELS = {
    "dcmtk": "DCMTK storescp + movescu, 1 association",
    "study": "pacsman --save, retrieve_level: study",
    "series": "pacsman --save, retrieve_level: series",
    "assoc2": "pacsman --save, study, max_associations: 2",
    "fork2": "DCMTK storescp --fork + 2 movescu in parallel",
    "pynetdicom": "pynetdicom storescp app + movescu",
    "serve": "pacsman serve, 1 job via pacsman submit",
    "component": "component only: StorageSCP + movescu",
}
FIXED_LABELS = {
    "python": "python -c pass",
    "import": "python -c 'import pynetdicom'",
    "version": "pacsman --version",
}
COMMAND_LINES = ("study", "series", "assoc2")
ALL_LINES = (*LABELS, *FIXED_LABELS)
THIRTY_ONLY = ("assoc2", "fork2")
SCENARIOS = ("thirty", "one")

#: Events that say pacsman has started talking to the PACS (the earliest one counts).
FIRST_NETWORK_EVENTS = ("pacs_ready", "association_opened", "echo_ok")


# -- /proc and wait4 ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _tree(roots: Sequence[int]) -> list[int]:
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += _children(pid)
    return found


def _hwm_kb(pid: int) -> int:
    try:
        return status_kb(pid, "VmHWM")
    except (OSError, ValueError):
        return 0


class TreeWatch:
    """Samples /proc every ``SAMPLE_INTERVAL`` s: the peak RSS (VmHWM) of each process of the
    trees under ``roots``, so that a child's peak counts even if nobody reaps it for us."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-watch", daemon=True)

    def sample(self) -> None:
        for pid in _tree(self.roots):
            self.peaks[pid] = max(self.peaks.get(pid, 0), _hwm_kb(pid))

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    @property
    def peak_kb(self) -> int:
        return max(self.peaks.values(), default=0)

    @property
    def processes(self) -> int:
        return len(self.peaks)

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _become_subreaper() -> bool:
    """Orphans of our children become ours: the whole tree of a command can be waited for."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Ended:
    """A process tree that ran to its end: its leader's exit code, wall seconds, CPU seconds
    (user + system of every process reaped), peak RSS (kB: the largest of ru_maxrss and of
    what the sampler saw), how many processes the sampler saw, wall-clock exec and exit."""

    code: int
    seconds: float
    cpu: float
    rss_kb: int
    processes: int
    exec_wall: float
    exit_wall: float


def _watchdog(pgid: int, timeout: float) -> threading.Timer:
    def kill() -> None:
        print(f"  run took more than {timeout:g} s: killing process group {pgid}", flush=True)
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    return timer


def _reap_group(process: subprocess.Popen[bytes]) -> tuple[int, float, int]:
    """wait4 every process of the leader's group that is (or becomes) our child."""
    code, cpu, rss = -1, 0.0, 0
    while True:
        try:
            pid, status, usage = os.wait4(-process.pid, 0)
        except ChildProcessError:
            break
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)
        if pid == process.pid:
            code = os.waitstatus_to_exitcode(status)
            process.returncode = code
    return code, cpu, rss


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM what is left of the group, then SIGKILL; reap it."""
    for signum, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                pid, status, _ = os.wait4(-process.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == process.pid:
                process.returncode = os.waitstatus_to_exitcode(status)
            if pid == 0:
                time.sleep(0.05)


def run_tree(
    argv: Sequence[str],
    *,
    cwd: Path,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
) -> Ended:
    """Run ``argv`` in a session of its own until every process of it has exited.

    The peak RSS comes from GNU ``/usr/bin/time`` (``%M``: the command's ru_maxrss, its
    reaped children included) and the /proc sampler, never from our own wait4: a child
    spawned by this (large) Python process inherits our RSS as the floor of its ru_maxrss
    (Linux records the old memory's high-water mark at exec, and vfork shares ours).
    """
    report = cwd / f".maxrss-{time.monotonic_ns()}"
    launcher = ["/usr/bin/time", "-f", "%M", "-o", str(report)] if TIME.is_file() else []
    exec_wall, started = time.time(), time.perf_counter()
    process = subprocess.Popen(
        [*launcher, *argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    timer = _watchdog(process.pid, RUN_TIMEOUT)
    try:
        with TreeWatch([process.pid]) as watch:
            code, cpu, _ = _reap_group(process)
            seconds, exit_wall = time.perf_counter() - started, time.time()
    finally:
        timer.cancel()
        _stop_group(process)
    rss = watch.peak_kb
    with suppress(OSError, ValueError, IndexError):
        rss = max(rss, int(report.read_text().split()[-1]))
        report.unlink()
    processes = watch.processes - (1 if launcher else 0)
    return Ended(code, seconds, cpu, rss, processes, exec_wall, exit_wall)


def _wait_rusage(processes: Sequence[subprocess.Popen[bytes]]) -> tuple[list[int], float]:
    """wait4 each of ``processes`` (already running): exit codes and their CPU seconds."""
    codes, cpu = [], 0.0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        codes.append(process.returncode)
        cpu += usage.ru_utime + usage.ru_stime
    return codes, cpu


def _signal_all(processes: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for process in processes:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signum)


def _kill(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            process.wait()


# -- what one run gives ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """Where a pacsman command's wall time went, from its own log events (seconds)."""

    startup: float  # exec -> the first event that talks to the PACS (pacs_ready)
    query: float  # pacs_ready -> preflight_ok (C-FIND of every row, the C-MOVE pre-flight)
    retrieving: float  # preflight_ok -> the last series_retrieved
    shutdown: float  # the last series_retrieved -> the last process exits

    @property
    def fixed(self) -> float:
        return self.startup + self.shutdown

    @property
    def working(self) -> float:
        return self.query + self.retrieving


@dataclass(frozen=True)
class Measured:
    """One run of one line."""

    seconds: float
    cpu: float  # the contender's processes (for references: receiver + movescu)
    rss_kb: int  # the largest process
    pacs_cpu: float  # Orthanc over the same span
    processes: int = 1
    phases: Phases | None = None


class Void(Exception):
    """A run that lost files or failed: left out of the medians, reported."""


def _events(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.startswith("{"):
            with suppress(json.JSONDecodeError):
                yield json.loads(line)


def _when(fields: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(fields["timestamp"])).timestamp()


def phases(log: str, ended: Ended) -> Phases | None:
    """Start-up, query, retrieving and shutdown from the JSON events on pacsman's stderr."""
    first = preflight = last = None
    for fields in _events(log):
        event = fields.get("event")
        if event in FIRST_NETWORK_EVENTS and first is None:
            first = _when(fields)
        elif event == "preflight_ok" and preflight is None:
            preflight = _when(fields)
        elif event == "series_retrieved":
            last = _when(fields)
    if first is None or last is None:
        return None
    preflight = first if preflight is None else preflight
    return Phases(
        startup=first - ended.exec_wall,
        query=preflight - first,
        retrieving=last - preflight,
        shutdown=ended.exit_wall - last,
    )


# -- the bench: Orthanc, cohorts, work folder -----------------------------------------------------


@dataclass
class Scenario:
    """A cohort in Orthanc, its query file for pacsman and its query files for movescu."""

    key: str
    title: str
    cohort: Cohort
    csv: Path
    queries: list[Path]
    lines: tuple[str, ...]

    @property
    def halves(self) -> list[list[Path]]:
        middle = len(self.queries) // 2
        return [self.queries[:middle], self.queries[middle:]]


@dataclass
class Bench:
    """What every run shares."""

    orthanc: OrthancServer
    work: Path
    pacsman: list[str]
    routes: Path = Path()
    orthanc_pid: int | None = None
    keep_logs: Path | None = None
    runs: int = 0
    voids: list[str] = field(default_factory=list)

    def fresh(self) -> Path:
        self.runs += 1
        path = self.work / "runs" / str(self.runs)
        path.mkdir(parents=True)
        return path

    def pacs_cpu(self) -> float:
        return 0.0 if self.orthanc_pid is None else _proc_cpu(self.orthanc_pid)

    def config(self, run: Path, level: str, node: str = "") -> Path:
        """A config with the Orthanc node, registered in Orthanc as the move destination."""
        port = free_port()
        pacs = Pacs(self.orthanc.dicom_port, self.orthanc.ae_title)
        setup = write_config(run, pacs, local_port=port, level=level, node=node)
        self.orthanc.add_modality("PACSMAN", "PACSMAN", "127.0.0.1", port)
        return setup.config


def _pacsman_argv() -> tuple[list[str], str]:
    script = Path(sys.executable).parent / "pacsman"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], f"{script} (the installed entry script)"
    return [sys.executable, "-m", "pacsman"], f"{sys.executable} -m pacsman"


def _orthanc_pid() -> int | None:
    for pid in _children(os.getpid()):
        with suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "Orthanc":
                return pid
    return None


def _csv(path: Path, cohort: Cohort) -> Path:
    rows = "".join(f"{spec.study_instance_uid}\n" for spec in cohort.specs)
    path.write_text("StudyInstanceUID\n" + rows, encoding="utf-8")
    return path


def _scenario(key: str, cohort: Cohort, work: Path, lines: Sequence[str]) -> Scenario:
    folder = work / "queries" / key
    folder.mkdir(parents=True)
    queries = [
        _query_file(folder, "STUDY", StudyInstanceUID=str(spec.study_instance_uid))
        for spec in cohort.specs
    ]
    n = cohort.n_instances
    per = n // len(cohort.specs)
    series = len(cohort.specs[0].series)
    if len(cohort.specs) == 1:
        title = f"1 study of {n:,} instances ({series} series)"
    else:
        title = f"{len(cohort.specs)} studies of {per:,} instances ({series} series each)"
    wanted = tuple(
        line for line in ALL_LINES if line in lines and (key == "thirty" or line not in THIRTY_ONLY)
    )
    return Scenario(key, title, cohort, _csv(work / f"{key}.csv", cohort), queries, wanted)


# -- the lines ------------------------------------------------------------------------------------


def run_command(bench: Bench, scenario: Scenario, level: str, node: str = "") -> Measured:
    """``pacsman --queryfile q.csv --save``: the whole process tree, from exec to its end."""
    run = bench.fresh()
    config = bench.config(run, level, node)
    argv = [*bench.pacsman, "--queryfile", str(scenario.csv), "--save", "--config", str(config)]
    with (run / "stdout.txt").open("wb") as out, (run / "stderr.txt").open("wb") as err:
        pacs0 = bench.pacs_cpu()
        ended = run_tree(argv, cwd=run, stdout=out, stderr=err)
        pacs_cpu = bench.pacs_cpu() - pacs0
    log = (run / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    if bench.keep_logs is not None:
        name = f"{scenario.key}-{level}{'-' + node.split(':')[0] if node else ''}-{bench.runs}.log"
        shutil.copy(run / "stderr.txt", bench.keep_logs / name)
    found, expected = count_instances(run / "data"), scenario.cohort.n_instances
    if ended.code != 0 or found != expected:
        summary = (run / "stdout.txt").read_text(encoding="utf-8", errors="replace")
        raise Void(
            f"exit {ended.code}, {found} of {expected} files\n{summary[-1500:]}\n{log[-1500:]}"
        )
    return Measured(
        ended.seconds, ended.cpu, ended.rss_kb, pacs_cpu, ended.processes, phases(log, ended)
    )


def _settle(pid: int, timeout: float = 5.0) -> None:
    """Wait until ``pid`` has reaped its children (storescp --fork), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def run_receiver(bench: Bench, scenario: Scenario, line: str) -> Measured:
    """A receiver already listening; movescu (2 in parallel for fork2) times the moves."""
    run = bench.fresh()
    out = run / "out"
    out.mkdir()
    groups = scenario.halves if line == "fork2" else [scenario.queries]
    starters: dict[str, Callable[[], Receiver]] = {
        "dcmtk": lambda: _start_dcmtk(out, "DCMTK", fork=False),
        "fork2": lambda: _start_dcmtk(out, "DCMTK", fork=True),
        "pynetdicom": lambda: _start_pynetdicom(out, "PYNETDICOM"),
        "component": lambda: _start_pacsman(out, bench.routes, "PACSMANSCP"),
    }
    receiver = starters[line]()
    moves: list[subprocess.Popen[bytes]] = []
    try:
        ae, pid = receiver.ae_title, receiver.process.pid
        bench.orthanc.add_modality(ae, ae, "127.0.0.1", receiver.port)
        with TreeWatch([pid]) as watch:
            cpu0, pacs0 = _proc_cpu(pid), bench.pacs_cpu()
            started = time.perf_counter()
            for n, group in enumerate(groups):
                with (run / f"movescu{n}.txt").open("wb") as log:
                    moves.append(
                        subprocess.Popen(
                            _movescu(bench.orthanc, ae, group),
                            env=dcmtk_env(),
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            timer = threading.Timer(RUN_TIMEOUT, _signal_all, (moves, signal.SIGKILL))
            timer.daemon = True
            timer.start()
            try:
                codes, scu_cpu = _wait_rusage(moves)
            finally:
                timer.cancel()
            seconds = time.perf_counter() - started
            _settle(pid)
            cpu = _proc_cpu(pid) - cpu0 + scu_cpu
            pacs_cpu = bench.pacs_cpu() - pacs0
            rss = max(_proc_hwm_kb(pid), watch.peak_kb)
            processes = watch.processes + len(moves)
    finally:
        _kill(moves)
        receiver.stop()
    found, expected = _count_files(out), scenario.cohort.n_instances
    if any(codes) or found != expected:
        said = " | ".join(p.read_text(errors="replace")[-500:] for p in run.glob("movescu*.txt"))
        raise Void(f"movescu exit {codes}, {found} of {expected} files; movescu said: {said}")
    return Measured(seconds, cpu, rss, pacs_cpu, processes)


def run_serve(bench: Bench, scenario: Scenario) -> Measured:
    """``pacsman serve`` READY; from the start of ``pacsman submit`` until the job ended."""
    run = bench.fresh()
    config = bench.config(run, "study")
    jobstore = run / "jobs.sqlite"
    with service_running(config) as service, TreeWatch([service.pid]) as watch:
        cpu0, children0, pacs0 = tree_cpu(service.pid), children_cpu(), bench.pacs_cpu()
        argv = [*bench.pacsman, "submit", str(scenario.csv), "--save", "--config", str(config)]
        wall, started = time.time(), time.perf_counter()
        submitted = finish_submit(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            started,
            wall,
        )
        job = submitted.job_id

        def ended() -> bool:
            return job_states(jobstore, [job])[job] in FINAL_STATES

        wait_until(ended, timeout=RUN_TIMEOUT, what=f"job {job}", interval=0.05, service=service)
        seconds = time.perf_counter() - started
        cpu = tree_cpu(service.pid) - cpu0 + children_cpu() - children0
        pacs_cpu = bench.pacs_cpu() - pacs0
        rss = max(status_kb(service.pid, "VmHWM"), watch.peak_kb)
        state = job_states(jobstore, [job])[job]
        processes = watch.processes + 1
    found, expected = count_instances(run / "data"), scenario.cohort.n_instances
    if state != JobState.DONE or found != expected:
        raise Void(f"job {job} {state.value}, {found} of {expected} files")
    return Measured(seconds, cpu, rss, pacs_cpu, processes)


def run_python(bench: Bench, argv: Sequence[str]) -> Measured:
    """A short command (the fixed-cost references): wall, CPU, peak RSS."""
    ended = run_tree(argv, cwd=bench.work)
    if ended.code != 0:
        raise Void(f"{' '.join(argv)} exited {ended.code}")
    return Measured(ended.seconds, ended.cpu, ended.rss_kb, 0.0, ended.processes)


def run_line(bench: Bench, scenario: Scenario, line: str) -> Measured:
    if line == "study":
        return run_command(bench, scenario, "study")
    if line == "series":
        return run_command(bench, scenario, "series")
    if line == "assoc2":
        return run_command(bench, scenario, "study", "max_associations: 2")
    if line == "serve":
        return run_serve(bench, scenario)
    if line == "python":
        return run_python(bench, [sys.executable, "-c", "pass"])
    if line == "import":
        return run_python(bench, [sys.executable, "-c", "import pynetdicom"])
    if line == "version":
        return run_python(bench, [*bench.pacsman, "--version"])
    return run_receiver(bench, scenario, line)


# -- rounds ---------------------------------------------------------------------------------------

Results = dict[str, dict[str, list[Measured]]]  # scenario -> line -> runs


def measure(bench: Bench, scenarios: Sequence[Scenario], repeat: int) -> Results:
    """``repeat`` rounds; in each, every scenario's lines, each first in turn."""
    results: Results = {s.key: {line: [] for line in s.lines} for s in scenarios}
    for attempt in range(repeat):
        for scenario in scenarios:
            order = list(scenario.lines)
            shift = attempt % len(order)
            for line in order[shift:] + order[:shift]:
                tag = f"  #{attempt + 1} {scenario.key} {line}"
                try:
                    got = run_line(bench, scenario, line)
                except (Exception, SystemExit) as exc:
                    # a failed run (pacsman crashed, a service never READY, a timeout) is void
                    kind = "" if isinstance(exc, Void) else f"{type(exc).__name__}: "
                    bench.voids.append(f"{tag.strip()}: {kind}{exc}")
                    print(f"{tag}: VOID: {kind}{str(exc)[:600]}", flush=True)
                    continue
                finally:
                    shutil.rmtree(bench.work / "runs", ignore_errors=True)
                results[scenario.key][line].append(got)
                fixed = "" if got.phases is None else f", fixed {got.phases.fixed:.2f} s"
                print(
                    f"{tag}: {got.seconds:.2f} s, CPU {got.cpu:.2f} s, "
                    f"RSS {got.rss_kb / 1024:.0f} MB{fixed}",
                    flush=True,
                )
    return results


@dataclass(frozen=True)
class Median:
    """The median of a line's runs; peak RSS is the largest of them."""

    runs: int
    seconds: float
    cpu: float
    rss_kb: int
    pacs_cpu: float
    processes: int
    phases: Phases | None

    @classmethod
    def of(cls, runs: Sequence[Measured]) -> Median:
        timed = [r.phases for r in runs if r.phases is not None]
        middle = None
        if timed:
            middle = Phases(
                *(statistics.median(getattr(p, name) for p in timed) for name in _PHASE_FIELDS)
            )
        return cls(
            runs=len(runs),
            seconds=statistics.median(r.seconds for r in runs),
            cpu=statistics.median(r.cpu for r in runs),
            rss_kb=max(r.rss_kb for r in runs),
            pacs_cpu=statistics.median(r.pacs_cpu for r in runs),
            processes=max(r.processes for r in runs),
            phases=middle,
        )


_PHASE_FIELDS = ("startup", "query", "retrieving", "shutdown")
Medians = dict[str, dict[str, Median]]


def medians_of(results: Results) -> Medians:
    return {
        key: {line: Median.of(runs) for line, runs in lines.items() if runs}
        for key, lines in results.items()
    }


# -- report ---------------------------------------------------------------------------------------


def _mb(cohort: Cohort) -> float:
    return cohort.size / MB


def table(scenario: Scenario, medians: dict[str, Median], repeat: int) -> list[str]:
    size = _mb(scenario.cohort)
    reference = medians.get("dcmtk")
    lines = [
        "",
        f"{scenario.title}: {scenario.cohort.n_instances:,} instances, {size:.0f} MB; "
        f"median of {repeat} runs, interleaved",
        f"  {'line':46} {'wall s':>7} {'MB/s':>7} {'CPU s':>6} {'CPU s/100MB':>11} "
        f"{'peak RSS MB':>11} {'PACS CPU s':>10} {'x DCMTK':>8}",
    ]
    for line in scenario.lines:
        if line in FIXED_LABELS:
            continue
        m = medians.get(line)
        if m is None:
            lines.append(f"  {LABELS[line]:46} {'void':>7}")
            continue
        ratio = f"{reference.seconds / m.seconds:7.2f}x" if reference else f"{'-':>8}"
        runs = "" if m.runs == repeat else f"  ({m.runs} valid runs)"
        lines.append(
            f"  {LABELS[line]:46} {m.seconds:7.2f} {size / m.seconds:7.1f} {m.cpu:6.2f} "
            f"{m.cpu / size * 100:11.2f} {m.rss_kb / 1024:11.0f} {m.pacs_cpu:10.2f} "
            f"{ratio}{runs}"
        )
    lines += _phase_table(scenario, medians)
    return lines


def _phase_table(scenario: Scenario, medians: dict[str, Median]) -> list[str]:
    size = _mb(scenario.cohort)
    rows = [(line, medians[line].phases) for line in COMMAND_LINES if line in medians]
    if not any(p for _, p in rows):
        return []
    lines = [
        "  pacsman's phases (median s, from its log events): start-up = exec -> pacs_ready; "
        "query = -> preflight_ok;",
        "  retrieving = -> last series_retrieved; shutdown = -> last process exited",
        f"  {'line':46} {'start-up':>8} {'query':>6} {'retrieving':>10} {'shutdown':>8} "
        f"{'fixed':>6} {'MB/s retrieving':>15}",
    ]
    for line, p in rows:
        if p is None:
            lines.append(f"  {LABELS[line]:46} (no pacs_ready/series_retrieved events)")
            continue
        lines.append(
            f"  {LABELS[line]:46} {p.startup:8.2f} {p.query:6.2f} {p.retrieving:10.2f} "
            f"{p.shutdown:8.2f} {p.fixed:6.2f} {size / p.retrieving:15.1f}"
        )
    return lines


def _pooled(results: Results, line: str) -> Median | None:
    runs = [r for lines in results.values() for r in lines.get(line, [])]
    return Median.of(runs) if runs else None


def fixed_lines(results: Results) -> list[str]:
    lines = ["", "fixed-cost references (every scenario's runs pooled):"]
    for line, label in FIXED_LABELS.items():
        m = _pooled(results, line)
        if m is not None:
            lines.append(
                f"  {label:46} {m.seconds:7.3f} s wall, {m.cpu:5.2f} s CPU, "
                f"peak RSS {m.rss_kb / 1024:.0f} MB (median of {m.runs})"
            )
    return lines


@dataclass(frozen=True)
class Target:
    what: str
    value: str
    ok: bool | None  # None: not measured in this run

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]
        return f"  {verdict:4}  {self.what}: {self.value}"


def targets(
    scenarios: Sequence[Scenario], medians: Medians, results: Results, *, nagle: bool
) -> list[Target]:
    found: list[Target] = []
    for s in scenarios:
        m = medians[s.key]
        found += _speed_targets(s, m, nagle=nagle)
    if not nagle:  # the 2-association targets are set against TCP_NODELAY=1
        found += _association_targets(medians.get("thirty", {}))
    found += _fixed_targets(scenarios, medians, results)
    found += _rss_targets(medians)
    for s in scenarios:
        found += _cpu_targets(s, medians[s.key])
    return found


def _ratio(m: dict[str, Median], line: str, reference: str = "dcmtk") -> float | None:
    if line not in m or reference not in m:
        return None
    return m[reference].seconds / m[line].seconds


def _at_least(what: str, ratio: float | None, limit: float, unit: str = "x") -> Target:
    if ratio is None:
        return Target(f"{what} >= {limit:g}{unit}", "not measured", None)
    return Target(f"{what} >= {limit:g}{unit}", f"{ratio:.2f}{unit}", ratio >= limit)


def _speed_targets(s: Scenario, m: dict[str, Median], *, nagle: bool) -> list[Target]:
    where = s.title.split(" (")[0]
    if nagle:
        return [
            _at_least(f"{where}: Nagle-on Orthanc, study level vs DCMTK", _ratio(m, "study"), 10)
        ]
    return [
        _at_least(f"{where}: study level vs DCMTK", _ratio(m, "study"), 0.8),
        _at_least(f"{where}: series level vs DCMTK", _ratio(m, "series"), 0.7),
    ]


def _association_targets(m: dict[str, Median]) -> list[Target]:
    return [
        _at_least(
            "max_associations: 2 vs one association (30 studies)", _ratio(m, "assoc2", "study"), 1.2
        ),
        _at_least(
            "max_associations: 2 vs storescp --fork + 2 parallel movescu (30 studies)",
            _ratio(m, "assoc2", "fork2"),
            0.9,
        ),
    ]


def _fixed_targets(
    scenarios: Sequence[Scenario], medians: Medians, results: Results
) -> list[Target]:
    reference = _pooled(results, "import")
    found = []
    for s in scenarios:
        for line in (line for line in COMMAND_LINES if line in s.lines):
            m = medians[s.key].get(line)
            where = s.title.split(" (")[0]
            what = f"{where}: fixed cost, {line} <= import pynetdicom + 0.3 s"
            if m is None or m.phases is None or reference is None:
                found.append(Target(what, "not measured", None))
                continue
            limit = reference.seconds + 0.3
            value = (
                f"{m.phases.fixed:.2f} s (start-up {m.phases.startup:.2f} + shutdown "
                f"{m.phases.shutdown:.2f}) vs {limit:.2f} s"
            )
            found.append(Target(what, value, m.phases.fixed <= limit))
    return found


def _rss_targets(medians: Medians) -> list[Target]:
    peaks = [
        m.rss_kb for lines in medians.values() for line, m in lines.items() if line in COMMAND_LINES
    ]
    found = [
        Target(
            "peak RSS of the pacsman command <= 150 MB (every command line)",
            f"{max(peaks) / 1024:.0f} MB" if peaks else "not measured",
            (max(peaks) <= 150 * 1024) if peaks else None,
        )
    ]
    one, thirty = medians.get("one", {}).get("study"), medians.get("thirty", {}).get("study")
    what = "peak RSS flat, 30 x 100 vs 1 x 3,000 (study level), within 10 %"
    if one is None or thirty is None:
        return [*found, Target(what, "not measured", None)]
    high, low = max(one.rss_kb, thirty.rss_kb), min(one.rss_kb, thirty.rss_kb)
    value = f"{thirty.rss_kb / 1024:.0f} MB vs {one.rss_kb / 1024:.0f} MB"
    return [*found, Target(what, value, high - low <= 0.1 * high)]


def _cpu_targets(s: Scenario, m: dict[str, Median]) -> list[Target]:
    found = []
    for line in COMMAND_LINES:
        what = f"{s.title.split(' (')[0]}: CPU per 100 MB, {line} <= 1.5x DCMTK's"
        if line not in m or "dcmtk" not in m:
            if line in s.lines:
                found.append(Target(what, "not measured", None))
            continue
        ratio = m[line].cpu / m["dcmtk"].cpu
        value = f"{ratio:.2f}x ({m[line].cpu:.2f} s vs {m['dcmtk'].cpu:.2f} s)"
        found.append(Target(what, value, ratio <= 1.5))
    return found


def as_json(
    environment: dict[str, Any],
    scenarios: Sequence[Scenario],
    medians: Medians,
    results: Results,
    found: Sequence[Target],
    voids: Sequence[str],
) -> dict[str, Any]:
    def line(m: Median, size: float) -> dict[str, Any]:
        data = asdict(m)
        data["mb_per_s"] = size / m.seconds
        data["cpu_per_100mb"] = m.cpu / size * 100
        data["rss_mb"] = m.rss_kb / 1024
        if m.phases is not None:
            data["phases"]["fixed"] = m.phases.fixed
            data["phases"]["working"] = m.phases.working
        return data

    out: dict[str, Any] = {"environment": environment, "scenarios": {}}
    for s in scenarios:
        size = _mb(s.cohort)
        m = medians[s.key]
        out["scenarios"][s.key] = {
            "title": s.title,
            "instances": s.cohort.n_instances,
            "mb": size,
            "lines": {
                key: {
                    **line(value, size),
                    "x_dcmtk": _ratio(m, key),
                    "walls": [r.seconds for r in results[s.key][key]],
                }
                for key, value in m.items()
                if key not in FIXED_LABELS
            },
        }
    out["fixed_references"] = {
        key: asdict(pooled) for key in FIXED_LABELS if (pooled := _pooled(results, key)) is not None
    }
    out["targets"] = [asdict(t) for t in found]
    out["void_runs"] = list(voids)
    return out


# -- set-up and main ------------------------------------------------------------------------------

WARM_IMPORTS = """
import importlib, pkgutil, pacsman, pynetdicom
for module in pkgutil.walk_packages(pacsman.__path__, "pacsman."):
    if not module.name.endswith("__main__"):
        try:
            importlib.import_module(module.name)
        except Exception:
            pass
"""


def warm_up(bench: Bench, cohort: Cohort) -> str:
    """Every pacsman module imported once (its bytecode cached), then one untimed command
    retrieving one study: nothing the timed runs do is compiled or read cold."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], check=True, timeout=600)
    run = bench.fresh()
    csv = run / "warm.csv"
    csv.write_text(f"StudyInstanceUID\n{cohort.specs[0].study_instance_uid}\n", encoding="utf-8")
    config = bench.config(run, "study")
    argv = [*bench.pacsman, "--queryfile", str(csv), "--save", "--config", str(config)]
    ended = run_tree(argv, cwd=run)
    shutil.rmtree(bench.work / "runs", ignore_errors=True)
    if ended.code != 0:
        raise SystemExit(f"the warm-up command failed (exit {ended.code}): {' '.join(argv)}")
    return f"warm-up (imports + one untimed 1-study command) {time.perf_counter() - started:.1f} s"


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _revision(directory: Path) -> str:
    argv = ["git", "-C", str(directory), "describe", "--always", "--dirty"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() if done.returncode == 0 else "not a git checkout"


def _describe(args: argparse.Namespace, orthanc: OrthancServer, work: Path) -> dict[str, Any]:
    storescp = dcmtk_tool("storescp")
    code = Path(_first_line([sys.executable, "-c", "import pacsman; print(pacsman.__file__)"]))
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "pacsman_code": str(code.parent),
        "revision": _revision(code.parent),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "orthanc": str(orthanc.rest("GET", "/system").get("Version")),
        "orthanc_tcp_nodelay": not args.nagle,
        "orthanc_concurrent_jobs": 4,
        "dcmtk": _first_line([str(storescp), "--version"]) if storescp else "missing",
        "out_dir": str(work),
        "instances": args.instances,
        "repeat": args.repeat,
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--instances", type=int, help="instances per cohort (default 3000)")
    parser.add_argument("--repeat", type=int, help="runs per line, median (default 3)")
    parser.add_argument("--nagle", action="store_true", help="Orthanc without TCP_NODELAY")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios: thirty,one")
    parser.add_argument(
        "--lines", default=",".join(ALL_LINES), help=f"lines: {','.join(ALL_LINES)}"
    )
    parser.add_argument("--out-dir", type=Path, help="where everything writes (default /dev/shm)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the medians as JSON")
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy each pacsman command's log here"
    )
    parser.add_argument(
        "--as-is", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if it is set"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: --instances 600 --repeat 1"
    )
    args = parser.parse_args()
    args.json = args.json.resolve() if args.json else None
    args.keep_logs = args.keep_logs.resolve() if args.keep_logs else None
    args.out_dir = args.out_dir.resolve() if args.out_dir else None
    args.instances = args.instances or (600 if args.quick else 3000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    args.lines = [part.strip() for part in args.lines.split(",") if part.strip()]
    for name, chosen, known in (
        ("--only", args.only, SCENARIOS),
        ("--lines", args.lines, ALL_LINES),
    ):
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen:
            parser.error(f"{name} {','.join(unknown) or '(empty)'}: choose from {','.join(known)}")
    if args.instances < 60:
        parser.error(f"--instances {args.instances}: at least 60 (30 studies of 2 series)")
    return args


def main() -> int:
    args = _parse()
    base = args.out_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    began = time.perf_counter()
    load_start = _load_average()
    subreaper = _become_subreaper()
    pacsman, how = _pacsman_argv()
    home = Path.cwd()
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="pacsman-retrieve-command-", dir=base) as tmp,
        OrthancServer(tcp_nodelay=not args.nagle, concurrent_jobs=4, scu_timeout=60) as orthanc,
        ExitStack() as stack,
    ):
        work = Path(tmp)
        os.chdir(work)  # no subprocess imports pacsman from the directory we were started in
        stack.callback(os.chdir, home)
        bytecode = bytecode_cache(work, as_is=args.as_is)
        bench = Bench(orthanc, work, pacsman, orthanc_pid=_orthanc_pid())
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            bench.keep_logs = args.keep_logs
        cohorts = {}
        if "thirty" in args.only:
            cohorts["thirty"] = _load(orthanc, "thirty studies", _thirty_studies(args.instances))
        if "one" in args.only:
            cohorts["one"] = _load(orthanc, "one study", benchmark_cohort(args.instances))
        bench.routes = _routes(list(cohorts.values()), work / "routes.json")
        scenarios = [_scenario(key, cohort, work, args.lines) for key, cohort in cohorts.items()]
        warm = warm_up(bench, next(iter(cohorts.values())))
        environment = _describe(args, orthanc, work)
        environment.update(
            bytecode=bytecode, pacsman=how, subreaper=subreaper, load_average_start=load_start
        )
        print(
            f"environment: {bytecode}; {warm}\n"
            f"  Orthanc {environment['orthanc']} TCP_NODELAY={0 if args.nagle else 1}, "
            f"ConcurrentJobs 4; {environment['dcmtk']}; Python {environment['python']}\n"
            f"  pacsman: {how}, code {environment['pacsman_code']} "
            f"(revision {environment['revision']}); output: {work}; "
            f"child subreaper: {'yes' if subreaper else 'NO (orphans not waited for)'}\n"
            f"  {os.cpu_count()} cores, load average {load_start} at the start",
            flush=True,
        )
        if args.repeat < 3:
            print(f"  --repeat {args.repeat}: a smoke run, not figures for the record", flush=True)
        results = measure(bench, scenarios, args.repeat)
    medians = medians_of(results)
    environment["load_average_end"] = _load_average()
    for scenario in scenarios:
        print("\n".join(table(scenario, medians[scenario.key], args.repeat)))
    print("\n".join(fixed_lines(results)))
    found = targets(scenarios, medians, results, nagle=args.nagle)
    print(f"\ntargets (issue 15){', Nagle-on Orthanc' if args.nagle else ''}:")
    print("\n".join(t.line() for t in found))
    print(
        f"\n{time.perf_counter() - began:.0f} s in all; load average {load_start} at the start, "
        f"{environment['load_average_end']} at the end (1, 5, 15 min)"
    )
    if bench.voids:
        print(f"\n{len(bench.voids)} void run(s):")
        print("\n".join(f"  {v}" for v in bench.voids))
    if args.json:
        data = as_json(environment, scenarios, medians, results, found, bench.voids)
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"medians written to {args.json}")
    return 1 if bench.voids else 0


if __name__ == "__main__":
    run_script(main)
