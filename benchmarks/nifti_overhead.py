"""What ``--nifti`` costs the whole command (issue 16 B): ``pacsman --save --anonymize --push xnat``
against the same with ``--nifti``, interleaved, each a fresh process, median of 3.

    python3 benchmarks/nifti_overhead.py [--instances 3000] [--repeat 3] [--out-dir DIR]
        [--keep-logs DIR] [--quick]

The cohort is retrieve_command.py's "thirty": 30 MR studies of 2 series (3,000 instances of
256x256 by default, ~400 MB), loaded once into one Orthanc (TCP_NODELAY=1, ConcurrentJobs 4).
The target is the XNAT emulator, a fresh process (and folder) per run.  Every run starts from
an empty output folder, job store, key and mapping table; it is void (left out of the
median, reported, exit status 1) unless it exits 0 and the emulator holds every instance
(and, with ``--nifti``, one NIFTI resource per series).

Printed per line: wall seconds (median, and every run), CPU of pacsman's process tree and
the emulator; for ``--nifti`` also the dcm2niix conversion time per series (median and total,
from pacsman's ``series_converted`` events) next to the retrieve time per series (the
retrieving span, ``pacs_ready`` -> the last ``series_retrieved``, divided by the series).
Target: ``--nifti`` slows the command by at most 10 %.

``--quick`` is a smoke run (300 instances, 1 repeat): it checks that the script works, not the
figure.  Run the real one only on a quiet machine (2 cores: nothing else running).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from push_e2e import children_cpu, emulator_process, write_config  # benchmarks/push_e2e.py
from retrieve_command import _events, _when  # benchmarks/retrieve_command.py
from retrieve_throughput import Cohort, _load, _thirty_studies  # benchmarks/retrieve_throughput.py
from service import bytecode_cache, run_script, sigterm_as_interrupt  # benchmarks/service.py

from pacsman.testing.orthanc import OrthancServer

RUN_TIMEOUT = 1800.0  # seconds: any one run
TARGET = 1.10  # --nifti at most 10 % slower
LINES = {
    "push": "pacsman --save --anonymize --push xnat",
    "nifti": "pacsman --save --anonymize --push xnat --nifti",
}


@dataclass
class Measured:
    """One run: wall and CPU seconds, and what pacsman's events say."""

    wall: float
    cpu: float
    series: int = 0
    retrieving: float | None = None
    conversions: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)


class Void(Exception):
    """A run that does not count (the reason)."""


def _queryfile(work: Path, cohort: Cohort) -> Path:
    lines = ["PatientID,StudyInstanceUID,Subject,Session"]
    lines += [
        f"{s.patient_id},{s.study_instance_uid},S{i:03d},E{i:03d}"
        for i, s in enumerate(cohort.specs)
    ]
    path = work / "q.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pacsman() -> list[str]:
    """The installed entry script next to this Python (what users run), else ``-m``."""
    script = Path(sys.executable).with_name("pacsman")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pacsman"]


def run_once(
    orthanc: OrthancServer,
    cohort: Cohort,
    queryfile: Path,
    work: Path,
    *,
    nifti: bool,
    keep_log: Path | None = None,
) -> Measured:
    """One whole command against a fresh emulator; raises :class:`Void`."""
    work.mkdir(parents=True)
    emulator, url = emulator_process(work / "xnat")
    try:
        config, env = write_config(work, orthanc, url, extra="log: {level: info}\n")
        command = [*_pacsman(), "-q", str(queryfile), "--save", "--anonymize", "--push", "xnat"]
        command += ["--config", str(config), *(["--nifti"] if nifti else [])]
        cpu_before = children_cpu()
        start = time.perf_counter()
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT
        )
        wall = time.perf_counter() - start
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    cpu = children_cpu() - cpu_before
    if keep_log is not None:
        keep_log.write_text(result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise Void(f"pacsman exited {result.returncode}: {result.stderr[-1500:]}")
    _check_target(work, cohort, nifti=nifti)
    return _measured(result.stderr, wall, cpu)


def _check_target(work: Path, cohort: Cohort, *, nifti: bool) -> None:
    scans = [p for p in (work / "xnat").rglob("*") if p.is_file() and "/scans/" in str(p)]
    dicom = sum(1 for p in scans if "/resources/DICOM/" in str(p))
    if dicom != cohort.n_instances:
        raise Void(f"the emulator holds {dicom} DICOM files, expected {cohort.n_instances}")
    if nifti:
        series = sum(len(spec.series) for spec in cohort.specs)
        resources = {p.parent for p in scans if "/resources/NIFTI/" in str(p)}
        if len(resources) != series:
            raise Void(f"{len(resources)} NIFTI resource(s) on the emulator, expected {series}")


def _measured(log: str, wall: float, cpu: float) -> Measured:
    found = Measured(wall, cpu)
    first = last = None
    for fields in _events(log):
        event = fields.get("event")
        if event == "pacs_ready" and first is None:
            first = _when(fields)
        elif event == "series_retrieved":
            last, found.series = _when(fields), found.series + 1
        elif event == "series_converted":
            found.conversions.append(float(fields.get("seconds", 0.0)))
            outcome = str(fields.get("outcome"))
            found.outcomes[outcome] = found.outcomes.get(outcome, 0) + 1
    if first is not None and last is not None:
        found.retrieving = last - first
    return found


def measure(
    orthanc: OrthancServer, cohort: Cohort, work: Path, repeat: int, keep_logs: Path | None
) -> tuple[dict[str, list[Measured]], list[str]]:
    """Every line ``repeat`` times, interleaved (the order alternates each round)."""
    queryfile = _queryfile(work, cohort)
    runs: dict[str, list[Measured]] = {line: [] for line in LINES}
    voids: list[str] = []
    for round_ in range(repeat):
        order = list(LINES) if round_ % 2 == 0 else list(reversed(LINES))
        for line in order:
            folder = work / f"{line}-{round_}"
            try:
                log = None if keep_logs is None else keep_logs / f"{line}-{round_ + 1}.log"
                one = run_once(
                    orthanc, cohort, queryfile, folder, nifti=line == "nifti", keep_log=log
                )
            except Void as exc:
                voids.append(f"{line} run {round_ + 1}: {exc}")
                print(f"  {line} run {round_ + 1}: VOID ({exc})", flush=True)
                continue
            finally:
                _remove(folder)
            runs[line].append(one)
            print(f"  {line} run {round_ + 1}: {one.wall:.1f} s wall", flush=True)
    return runs, voids


def _remove(folder: Path) -> None:
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: dict[str, list[Measured]], cohort: Cohort, repeat: int) -> list[str]:
    lines = [f"\n{cohort.n_instances} instances, {len(cohort.specs)} studies; median of {repeat}:"]
    for line, label in LINES.items():
        found = runs[line]
        walls = ", ".join(f"{m.wall:.1f}" for m in found)
        lines.append(
            f"  {label:<48} {_median([m.wall for m in found]):7.1f} s wall ({walls}), "
            f"{_median([m.cpu for m in found]):6.1f} s CPU"
        )
    converting = runs["nifti"]
    per_series = [m.retrieving / m.series for m in converting if m.retrieving and m.series]
    conversions = [s for m in converting for s in m.conversions]
    if conversions:
        outcomes = converting[-1].outcomes
        lines.append(
            f"  per series: retrieve {_median(per_series):.2f} s (the retrieving span / series), "
            f"dcm2niix conversion {statistics.median(conversions):.2f} s median, "
            f"{max(conversions):.2f} s max, {sum(conversions) / len(converting):.1f} s in all "
            f"per run ({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))})"
        )
    push, nifti = _median([m.wall for m in runs["push"]]), _median([m.wall for m in converting])
    ratio = nifti / push if push else float("nan")
    verdict = "MET" if ratio <= TARGET else "MISSED"
    lines.append(f"  --nifti / without: {ratio:.3f}x (target <= {TARGET:.2f}x): {verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, help="where runs write (default: /dev/shm)")
    parser.add_argument("--quick", action="store_true", help="300 instances, 1 repeat: a smoke run")
    parser.add_argument("--as-is", action="store_true", help="keep the bytecode environment")
    parser.add_argument("--keep-logs", type=Path, help="write each run's log (JSON) here")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.repeat = 300, 1
    if args.keep_logs is not None:
        args.keep_logs = args.keep_logs.resolve()
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    base = args.out_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    began = time.perf_counter()
    home = Path.cwd()
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="pacsman-nifti-overhead-", dir=base) as tmp,
        OrthancServer(tcp_nodelay=True, concurrent_jobs=4, scu_timeout=60) as orthanc,
    ):
        work = Path(tmp)
        os.chdir(work)  # no subprocess imports pacsman from the directory we were started in
        try:
            bytecode = bytecode_cache(work, as_is=args.as_is)
            cohort = _load(orthanc, "thirty studies", _thirty_studies(args.instances))
            print(f"environment: {bytecode}; {os.cpu_count()} cores, load {os.getloadavg()}")
            if args.quick:
                print("  --quick: a smoke run, not figures for the record", flush=True)
            runs, voids = measure(orthanc, cohort, work, args.repeat, args.keep_logs)
        finally:
            os.chdir(home)
    print("\n".join(report(runs, cohort, args.repeat)))
    print(f"\n{time.perf_counter() - began:.0f} s in all; load {os.getloadavg()} at the end")
    if voids:
        print(f"\n{len(voids)} void run(s):\n" + "\n".join(f"  {v}" for v in voids))
    return 1 if voids else 0


if __name__ == "__main__":
    run_script(main)
