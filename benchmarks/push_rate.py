"""Push rate: 3,000 instances (30 sessions of 100) into the XNAT emulator, side by side.

    python3 benchmarks/push_rate.py [--sessions 30] [--instances 100] [--repeat 3]

Contenders, in one run, each against a fresh emulator process (so the server never competes
with the client for the GIL) holding the same empty project:

* reference: the bare ``xnat`` client, one login, ``services.import_`` of each session's zip
  (the same zips, built the same way), no checks at all: the floor for a DICOM-zip import;
* pacsman: :func:`pacsman.push.push_all` with the XNAT target. It checks XNAT before each
  push, imports, then reads every scan's file count back.

Every contender's result is counted on the emulator: 30 sessions with every file, or the run
is void.  Prints the wall times (best of ``--repeat``), instances/s and the ratio
pacsman / reference.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import xnat

from pacsman.config.push import XnatConfig
from pacsman.log import configure_logging
from pacsman.push import Credentials, SessionUpload, push_all
from pacsman.push.models import dicom_files
from pacsman.push.xnat import XnatTarget
from pacsman.push.zipper import session_zip
from pacsman.testing.synthetic import SeriesSpec, StudySpec, write_study

USER, PASSWORD, PROJECT = "bench", "bench", "BENCH"


def _studies(root: Path, sessions: int, instances: int) -> list[SessionUpload]:
    uploads = []
    half = instances // 2
    for index in range(sessions):
        spec = StudySpec(
            patient_id=f"BENCH{index:04d}",
            patient_name=f"Bench^{index:04d}",
            study_date="20240101",
            accession_number=f"A{index:06d}",
            study_description="push bench",
            series=(
                SeriesSpec(series_number=1, series_description="T1", n_instances=half),
                SeriesSpec(series_number=2, series_description="T2", n_instances=instances - half),
            ),
        )
        write_study(spec, root)
        uploads.append(
            SessionUpload.from_directory(
                root / spec.study_instance_uid,
                project=PROJECT,
                subject=f"S{index:04d}",
                session=f"E{index:04d}",
            )
        )
    return uploads


@contextmanager
def _emulator(data: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "pacsman.testing.xnat_emulator", "--data", str(data)]
    command += ["--project", PROJECT, "--user", USER, "--password", PASSWORD]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        try:
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _reference(url: str, uploads: list[SessionUpload], work: Path) -> None:
    login = {"user": USER, "password": PASSWORD, "extension_types": False, "loglevel": "ERROR"}
    with xnat.connect(url, **login) as session:
        for upload in uploads:
            files = dicom_files(upload.directory)
            with session_zip(upload.directory, files, work_dir=work) as stream:
                session.services.import_(
                    data=stream,  # as pacsman does: no progress bar on stdout
                    content_type="application/zip",
                    project=upload.project,
                    subject=upload.subject,
                    experiment=upload.session,
                    import_handler="DICOM-zip",
                    destination="/archive",
                    overwrite="none",
                )


def _pacsman(url: str, uploads: list[SessionUpload], work: Path) -> None:
    config = XnatConfig(url=url)
    with XnatTarget(config, Credentials(USER, PASSWORD, "bench"), work_dir=work) as target:
        outcomes = push_all(uploads, target)
    failed = [o.detail for o in outcomes if o.state != "DONE"]
    if failed:
        raise SystemExit(f"pacsman failed: {failed[:3]}")


def _count(url: str, uploads: list[SessionUpload]) -> int:
    rows = requests.get(
        f"{url}/data/projects/{PROJECT}/experiments?format=json",
        auth=(USER, PASSWORD),
        timeout=60,
    ).json()["ResultSet"]["Result"]
    if len(rows) != len(uploads):
        raise SystemExit(f"expected {len(uploads)} sessions on the emulator, found {len(rows)}")
    return sum(u.expected_files for u in uploads)


def _run(
    contender: Callable[[str, list[SessionUpload], Path], None],
    uploads: list[SessionUpload],
    work: Path,
) -> float:
    data = work / "xnat"
    shutil.rmtree(data, ignore_errors=True)
    with _emulator(data) as url:
        started = time.perf_counter()
        contender(url, uploads, work)
        elapsed = time.perf_counter() - started
        _count(url, uploads)
    return elapsed


def main() -> int:
    """Build the cohort, run both contenders ``--repeat`` times (interleaved), print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--instances", type=int, default=100, help="per session")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    configure_logging(level="warning")
    base = args.workdir if args.workdir.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="pacsman-push-bench-", dir=base) as tmp:
        work = Path(tmp)
        uploads = _studies(work / "studies", args.sessions, args.instances)
        total = sum(u.expected_files for u in uploads)
        best = {"reference": float("inf"), "pacsman": float("inf")}
        for _ in range(args.repeat):
            best["reference"] = min(best["reference"], _run(_reference, uploads, work))
            best["pacsman"] = min(best["pacsman"], _run(_pacsman, uploads, work))
    print(f"{args.sessions} sessions x {args.instances} instances = {total} instances")
    for name, seconds in best.items():
        print(f"{name:10s} {seconds:7.2f} s  {total / seconds:8.1f} instances/s")
    print(f"ratio pacsman / reference: {best['pacsman'] / best['reference']:.2f}x (target <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
