"""End to end: 3,000 instances from Orthanc to the XNAT emulator, against retrieval alone.

    python3 benchmarks/push_e2e.py [--instances 3000] [--studies 30] [--rows 128]

In one run, against the same Orthanc (TCP_NODELAY=1) and a fresh emulator process per run:

* retrieve only: ``pacsman --queryfile q.csv --save``;
* everything: ``pacsman --queryfile q.csv --save --push`` (query, retrieve, verify,
  de-identify, push, verify on XNAT).

Each run starts from an empty output folder, job store, key and mapping table.  The target is
everything <= 1.3x retrieve-only: de-identifying and pushing study k overlaps retrieving
study k+1.  The emulator must end with every session, each with every file, or the run is void.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import benchmark_cohort, iter_datasets

CONFIG = """\
local: {{ae_title: PACSMAN, bind_host: 127.0.0.1, port: {local_port}}}
pacs:
  bench: {{host: 127.0.0.1, port: {port}, called_ae_title: {aet}}}
store_root: {work}/data
jobstore: {work}/jobs.sqlite
xnat: {{url: "{url}", project: BENCH}}
"""


def emulator_process(data: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "pacsman.testing.xnat_emulator", "--data", str(data)]
    command += ["--user", "bench", "--password", "bench", "--project", "BENCH"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def write_config(
    work: Path, orthanc: OrthancServer, url: str, *, extra: str = ""
) -> tuple[Path, dict[str, str]]:
    """The benchmark's config in ``work`` (Orthanc told of pacsman's Storage SCP, the
    emulator at ``url``; ``extra`` YAML appended) and the environment to run pacsman in."""
    local_port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", local_port)
    config = work / "pacsman.yaml"
    text = CONFIG.format(
        local_port=local_port, port=orthanc.dicom_port, aet=orthanc.ae_title, work=work, url=url
    )
    config.write_text(text + extra)
    env = {**os.environ, "XNAT_USER": "bench", "XNAT_PASS": "bench"}
    env["XDG_CONFIG_HOME"] = str(work / "state")
    return config, env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(work: Path, orthanc: OrthancServer, queryfile: Path, *, push: bool) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of pacsman (with its helper process) and the emulator."""
    work.mkdir(parents=True)
    cpu_before = children_cpu()
    process, url = emulator_process(work / "xnat")
    try:
        config, env = write_config(work, orthanc, url)
        command = ["pacsman", "-q", str(queryfile), "--save", "--config", str(config)]
        command += ["--push"] if push else []
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"pacsman exited {result.returncode}:\n{result.stderr[-3000:]}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return elapsed, children_cpu() - cpu_before


def _pushed_files(work: Path) -> int:
    root = work / "xnat"
    return sum(1 for p in root.rglob("*.dcm") if "/scans/" in str(p))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--rows", type=int, default=128, help="image rows and columns")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where both runs write (default: the system temporary directory); e.g. /dev/shm",
    )
    args = parser.parse_args()
    cohort = benchmark_cohort(
        args.instances,
        n_studies=args.studies,
        series_per_study=4,
        rows=args.rows,
        columns=args.rows,
    )
    with (
        OrthancServer() as orthanc,
        tempfile.TemporaryDirectory(prefix="pacsman-e2e-", dir=args.workdir) as tmp,
    ):
        for spec in cohort:
            orthanc.upload_datasets(iter_datasets(spec))
        lines = ["PatientID,StudyInstanceUID,Subject,Session"]
        lines += [
            f"{s.patient_id},{s.study_instance_uid},S{i:03d},E{i:03d}" for i, s in enumerate(cohort)
        ]
        queryfile = Path(tmp) / "q.csv"
        queryfile.write_text("\n".join(lines) + "\n")
        retrieve_only, cpu_retrieve = _run(Path(tmp) / "retrieve", orthanc, queryfile, push=False)
        everything, cpu_everything = _run(Path(tmp) / "push", orthanc, queryfile, push=True)
        pushed = _pushed_files(Path(tmp) / "push")
    if pushed != args.instances:
        raise SystemExit(f"void: the emulator holds {pushed} files, expected {args.instances}")
    megabytes = args.instances * args.rows * args.rows * 2 / 1e6
    print(f"{args.instances} instances ({megabytes:.0f} MB of pixels) in {args.studies} studies")
    print(f"retrieve only (--save)          {retrieve_only:7.1f} s wall, {cpu_retrieve:6.1f} s CPU")
    print(
        f"everything (--save --push)      {everything:7.1f} s wall, {cpu_everything:6.1f} s CPU"
        f"   ({pushed} files on XNAT)"
    )
    print("(CPU: pacsman with its helper process, and the emulator; Orthanc not counted)")
    print(f"ratio (target <= 1.3): {everything / retrieve_only:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
