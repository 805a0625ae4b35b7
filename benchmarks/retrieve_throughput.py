"""Retrieve throughput: C-MOVE ~3,000 MR instances (~400 MB) from Orthanc into each receiver.

    python3 benchmarks/retrieve_throughput.py [--instances 3000] [--repeat 3] [--nagle]
        [--out-dir DIR] [--quick]

One Orthanc (TCP_NODELAY=1 unless --nagle) is loaded once over REST with two cohorts of the
same size: ONE study of 3,000 instances (10 series) and THIRTY studies of 100 (2 series
each).  DCMTK ``movescu`` is the move SCU for every contender; the receivers, each a fresh
process per run so that its peak RSS is its own:

* pacsman: :class:`pacsman.dicom.scp.StorageSCP` in a subprocess (this script, ``--serve``),
  with every series routed as the pipeline routes them;
* DCMTK ``/usr/bin/storescp`` with ``TCP_NODELAY=1`` (``--fork`` when moves run in parallel);
* pynetdicom's ``python -m pynetdicom storescp`` app (``-ba 127.0.0.1``, its defaults).

Scenarios: the one-study move; the thirty studies as 30 C-MOVEs on one movescu association
(30 store associations); the one study split in two halves moved in parallel (2 associations
at once), where pacsman also runs as two processes (one per association, both cores).

Each run counts the files written (a lossy contender fails), and reads from /proc the
receiver's CPU time (user + system, children included) and peak RSS (VmHWM).  Output goes to
a tmpfs (/dev/shm) by default so that the figures are the receivers', not the disk's; use
``--out-dir`` for a real filesystem.  Prints the median of ``--repeat`` runs and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset

from pacsman.testing.dcmtk import dcmtk_env, dcmtk_tool
from pacsman.testing.net import accepts_tcp, free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import StudySpec, benchmark_cohort, iter_datasets

MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cohort:
    """Studies loaded in Orthanc, with their size as Orthanc stores them."""

    name: str
    specs: tuple[StudySpec, ...]
    size: int  # bytes

    @property
    def n_instances(self) -> int:
        return sum(spec.n_instances for spec in self.specs)


@dataclass(frozen=True)
class Result:
    """One run of one receiver: wall seconds, CPU seconds, peak RSS in kB."""

    seconds: float
    cpu: float
    rss_kb: int


# -- receivers ---------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


def _proc_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Receiver:
    """A receiver process listening on 127.0.0.1: its AE title, port and process."""

    def __init__(self, ae_title: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.ae_title, self.port, self.process = ae_title, port, process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _listening(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        return accepts_tcp("127.0.0.1", port)

    wait_for(ready, timeout=30, what=f"{what} to listen on {port}")


def _start_pacsman(out: Path, routes: Path, ae_title: str) -> Receiver:
    command = [sys.executable, __file__, "--serve", str(out), str(routes), ae_title]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    port = int(process.stdout.readline() or 0)
    _listening(process, port, "pacsman's StorageSCP")
    return Receiver(ae_title, port, process)


def _start_dcmtk(out: Path, ae_title: str, *, fork: bool) -> Receiver:
    binary = dcmtk_tool("storescp")
    if binary is None:
        raise SystemExit("DCMTK storescp not found in /usr/bin: apt-get install dcmtk")
    port = free_port()
    args = [str(binary), "-aet", ae_title, "-od", str(out), *(["--fork"] if fork else [])]
    process = subprocess.Popen([*args, str(port)], env=dcmtk_env(), stdout=subprocess.DEVNULL)
    _listening(process, port, "DCMTK storescp")
    return Receiver(ae_title, port, process)


def _start_pynetdicom(out: Path, ae_title: str) -> Receiver:
    port = free_port()
    args = [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-aet", ae_title]
    args += ["-ba", "127.0.0.1", "-od", str(out), "-q"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _listening(process, port, "pynetdicom storescp")
    return Receiver(ae_title, port, process)


def serve(out: Path, routes_file: Path, ae_title: str) -> None:
    """``--serve``: run pacsman's StorageSCP until SIGTERM; print its port first."""
    from pacsman.dicom.scp import InstanceWriter, StorageSCP
    from pacsman.log import configure_logging

    configure_logging(level="warning", stream=sys.stderr)
    writer = InstanceWriter(unrouted_directory=out / "_unrouted")
    for series_uid, relative in json.loads(routes_file.read_text()).items():
        writer.route(series_uid, out / relative)
    scp = StorageSCP(
        writer,
        ae_title=ae_title,
        bind_host="127.0.0.1",
        port=0,
        allowed_calling_ae_titles=["ORTHANC"],
    ).start()

    def stop(*_: object) -> None:
        scp.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(scp.port, flush=True)
    signal.pause()


# -- Orthanc, moves ------------------------------------------------------------------------------


def _load(orthanc: OrthancServer, name: str, specs: tuple[StudySpec, ...]) -> Cohort:
    start = time.perf_counter()
    orthanc.upload_datasets(ds for spec in specs for ds in iter_datasets(spec))
    uids = {str(spec.study_instance_uid) for spec in specs}
    size = sum(
        int(orthanc.rest("GET", f"/studies/{s['ID']}/statistics")["UncompressedSize"])
        for s in orthanc.studies()
        if s["MainDicomTags"]["StudyInstanceUID"] in uids
    )
    print(
        f"loaded {name}: {len(specs)} studies, {size / MB:.0f} MB in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return Cohort(name, specs, size)


def _query_file(directory: Path, level: str, **keys: str) -> Path:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    path = directory / f"q{len(list(directory.iterdir()))}.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return path


def _movescu(orthanc: OrthancServer, destination: str, queries: Sequence[Path]) -> list[str]:
    binary = dcmtk_tool("movescu")
    if binary is None:
        raise SystemExit("DCMTK movescu not found in /usr/bin: apt-get install dcmtk")
    args = [str(binary), "-S", "-aet", "BENCH", "-aec", orthanc.ae_title, "-aem", destination]
    return [*args, "127.0.0.1", str(orthanc.dicom_port), *map(str, queries)]


def _count_files(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- one measured run --------------------------------------------------------------------------


Starter = Callable[[Path, int], list[Receiver]]


def _run(
    orthanc: OrthancServer, start: Starter, queries: list[list[Path]], out: Path, expected: int
) -> Result:
    """Start receivers (one per query group when asked), move, measure, clean up."""
    out.mkdir(parents=True)
    receivers = start(out, len(queries))
    try:
        for receiver in receivers:
            orthanc.add_modality(receiver.ae_title, receiver.ae_title, "127.0.0.1", receiver.port)
        pids = [r.process.pid for r in receivers]
        cpu0 = sum(_proc_cpu(pid) for pid in pids)
        began = time.perf_counter()
        moves = [
            subprocess.Popen(
                _movescu(orthanc, receivers[i % len(receivers)].ae_title, group),
                env=dcmtk_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i, group in enumerate(queries)
        ]
        failures = [m.stderr.read().decode() for m in moves if m.wait() != 0 and m.stderr]
        seconds = time.perf_counter() - began
        cpu = sum(_proc_cpu(pid) for pid in pids) - cpu0
        rss = max(_proc_hwm_kb(pid) for pid in pids)
    finally:
        for receiver in receivers:
            receiver.stop()
    found = _count_files(out)
    shutil.rmtree(out)
    if failures or found != expected:
        raise SystemExit(f"lossy run: {found} of {expected} files; movescu said {failures}")
    return Result(seconds, cpu, rss)


def _contenders(routes: Path) -> dict[str, Starter]:
    def pacsman(out: Path, n: int) -> list[Receiver]:
        return [_start_pacsman(out, routes, "PACSMAN")]

    def pacsman_procs(out: Path, n: int) -> list[Receiver]:
        return [_start_pacsman(out, routes, f"PACSMAN{i}") for i in range(n)]

    def dcmtk(out: Path, n: int) -> list[Receiver]:
        return [_start_dcmtk(out, "DCMTK", fork=n > 1)]

    def pynetdicom(out: Path, n: int) -> list[Receiver]:
        return [_start_pynetdicom(out, "PYNETDICOM")]

    return {
        "pacsman": pacsman,
        "pacsman x2 processes": pacsman_procs,
        "dcmtk storescp": dcmtk,
        "pynetdicom storescp": pynetdicom,
    }


# -- scenarios and report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What is moved, in how many parallel movescu groups, to which contenders."""

    name: str
    cohort: Cohort
    queries: list[list[Path]]
    contenders: tuple[str, ...]


def _routes(cohorts: Sequence[Cohort], path: Path) -> Path:
    from pacsman.dicom.scp import default_labels, series_directory

    routes = {}
    for spec in (spec for cohort in cohorts for spec in cohort.specs):
        subject, session = default_labels(spec.patient_id, spec.study_date)
        for series in spec.series:
            directory = series_directory(
                Path(),
                subject=subject,
                session=session,
                series_number=str(series.series_number),
                series_description=series.series_description,
            )
            routes[str(spec.series_instance_uid(series))] = str(directory)
    path.write_text(json.dumps(routes))
    return path


def _scenarios(one: Cohort, thirty: Cohort, queries: Path) -> list[Scenario]:
    (study,) = one.specs
    everyone = ("pacsman", "dcmtk storescp", "pynetdicom storescp")
    series = [str(study.series_instance_uid(s)) for s in study.series]
    halves = [series[: len(series) // 2], series[len(series) // 2 :]]
    uid = str(study.study_instance_uid)
    return [
        Scenario(
            "one study", one, [[_query_file(queries, "STUDY", StudyInstanceUID=uid)]], everyone
        ),
        Scenario(
            f"{len(thirty.specs)} studies",
            thirty,
            [
                [
                    _query_file(queries, "STUDY", StudyInstanceUID=str(s.study_instance_uid))
                    for s in thirty.specs
                ]
            ],
            everyone,
        ),
        Scenario(
            "one study, 2 moves in parallel",
            one,
            [
                [
                    _query_file(queries, "SERIES", StudyInstanceUID=uid, SeriesInstanceUID=s)
                    for s in half
                ]
                for half in halves
            ],
            ("pacsman", "pacsman x2 processes", "dcmtk storescp", "pynetdicom storescp"),
        ),
    ]


def _measure(
    orthanc: OrthancServer, scenario: Scenario, starters: dict[str, Starter], out: Path, repeat: int
) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {name: [] for name in scenario.contenders}
    for attempt in range(repeat):  # interleaved, so that a noisy moment hits everyone
        for name in scenario.contenders:
            result = _run(
                orthanc, starters[name], scenario.queries, out / "run", scenario.cohort.n_instances
            )
            results[name].append(result)
            print(f"  {scenario.name} #{attempt + 1} {name}: {result.seconds:.2f} s", flush=True)
    return results


def _median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.seconds for r in results),
        statistics.median(r.cpu for r in results),
        max(r.rss_kb for r in results),
    )


def _report(scenario: Scenario, results: dict[str, list[Result]]) -> dict[str, Result]:
    size = scenario.cohort.size
    medians = {name: _median(runs) for name, runs in results.items()}
    rate = {name: size / MB / r.seconds for name, r in medians.items()}
    print(
        f"\n{scenario.name}: {scenario.cohort.n_instances} instances, {size / MB:.0f} MB, "
        f"median of {len(next(iter(results.values())))} runs"
    )
    print(
        f"{'receiver':24} {'s':>6} {'MB/s':>7} {'CPU s/100MB':>12} {'peak RSS MB':>12} "
        f"{'vs pynetdicom':>14} {'vs DCMTK':>9}"
    )
    for name, r in medians.items():
        print(
            f"{name:24} {r.seconds:6.2f} {rate[name]:7.1f} {r.cpu / size * 100 * MB:12.2f} "
            f"{r.rss_kb / 1024:12.0f} {rate[name] / rate['pynetdicom storescp']:13.2f}x "
            f"{rate[name] / rate['dcmtk storescp']:8.2f}x"
        )
    return medians


def _targets(one: dict[str, Result], thirty: dict[str, Result]) -> None:
    ours, rss_one, rss_thirty = one["pacsman"], one["pacsman"].rss_kb, thirty["pacsman"].rss_kb
    checks = [
        ("MB/s >= 2x pynetdicom storescp", one["pynetdicom storescp"].seconds / ours.seconds, 2.0),
        ("MB/s >= 0.5x DCMTK storescp", one["dcmtk storescp"].seconds / ours.seconds, 0.5),
    ]
    print("\ntargets (one study):")
    for what, ratio, target in checks:
        print(f"  {what}: {ratio:.2f}x {'PASS' if ratio >= target else 'FAIL'}")
    same = abs(rss_one - rss_thirty) <= max(rss_one, rss_thirty) * 0.1
    ok = max(rss_one, rss_thirty) <= 200 * 1024 and same
    print(
        f"  peak RSS <= 200 MB, same for both shapes: {rss_one / 1024:.0f} MB (one study) vs "
        f"{rss_thirty / 1024:.0f} MB (30 studies) {'PASS' if ok else 'FAIL'}"
    )


def _thirty_studies(n_instances: int) -> tuple[StudySpec, ...]:
    """The same number of instances as 30 studies of 2 series, with UIDs of their own."""
    return tuple(
        replace(spec, patient_id=f"THIRTY{i:02d}", uid_seed="thirty")
        for i, spec in enumerate(benchmark_cohort(n_instances, n_studies=30, series_per_study=2))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nagle", action="store_true", help="start Orthanc without TCP_NODELAY")
    parser.add_argument("--out-dir", type=Path, help="where receivers write (default: tmpfs)")
    parser.add_argument("--serve", nargs=3, metavar=("OUT", "ROUTES", "AE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]), args.serve[2])
        return 0
    base = args.out_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    with (
        OrthancServer(tcp_nodelay=not args.nagle, concurrent_jobs=4, scu_timeout=60) as orthanc,
        tempfile.TemporaryDirectory(prefix="pacsman-bench-", dir=base) as tmp,
    ):
        work = Path(tmp)
        (work / "queries").mkdir()
        n = args.instances
        one = _load(orthanc, "one study", benchmark_cohort(n))
        thirty = _load(orthanc, "thirty studies", _thirty_studies(n))
        starters = _contenders(_routes([one, thirty], work / "routes.json"))
        print(f"Orthanc TCP_NODELAY={'0' if args.nagle else '1'}; receivers write to {work}")
        medians = {}
        for scenario in _scenarios(one, thirty, work / "queries"):
            results = _measure(orthanc, scenario, starters, work, args.repeat)
            medians[scenario.name] = _report(scenario, results)
        _targets(medians["one study"], medians["30 studies"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
