"""C-FIND rate: 500 study-level queries by PatientID against one Orthanc, side by side.

    python3 benchmarks/cfind_rate.py [--queries 500] [--repeat 3] [--nagle]

Contenders, in one run against the same Orthanc (started with TCP_NODELAY=1 unless --nagle):

* pacsman: :class:`pacsman.query.FindAssociation`, one reused association (what ``--info`` uses);
* DCMTK ``findscu`` with all queries as files on ONE association;
* DCMTK ``findscu`` ONE PROCESS PER QUERY (what the shell scripts pacsman replaces do).

findscu runs with ``TCP_NODELAY=1`` in its environment: Debian's DCMTK 3.6.7 disables Nagle
only when asked, and the reference should run at its best.

Every contender's answers are counted: each query must return exactly one study, so a fast
but lossy contender cannot win.  Prints a table and the ratios; best of ``--repeat``
interleaved runs (the process-per-query line runs once).  pacsman's log is configured as the
command configures it (level info), so that debug events cost what they cost a user.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from pacsman.config import PacsNode
from pacsman.dicom.client import DicomPeer
from pacsman.log import configure_logging
from pacsman.query import FindAssociation
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from pacsman.throttle import RetryPolicy

FINDSCU = shutil.which("findscu", path="/usr/bin:/bin")  # pynetdicom's findscu shadows it on PATH


def _patient_ids(n: int) -> list[str]:
    return [f"BENCH{i:05d}" for i in range(n)]


def _load(orthanc: OrthancServer, ids: list[str]) -> None:
    for pid in ids:
        spec = StudySpec(
            patient_id=pid,
            patient_name=f"Bench^{pid}",
            study_date="20240101",
            accession_number=pid[-8:],
            study_description="bench",
            series=(SeriesSpec(series_number=1, series_description="s", n_instances=1),),
        )
        orthanc.upload_datasets(iter_datasets(spec))


def _pacsman(orthanc: OrthancServer, ids: list[str]) -> int:
    node = PacsNode("bench", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title)
    with FindAssociation(DicomPeer(node, "PACSMAN"), retry=RetryPolicy(max_attempts=1)) as session:
        return sum(
            len(session.find("STUDY", {"PatientID": pid}, ("StudyInstanceUID",))) for pid in ids
        )


def _query_files(directory: Path, ids: list[str]) -> list[Path]:
    paths = []
    for pid in ids:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = pid
        ds.StudyInstanceUID = ""
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = directory / f"{pid}.dcm"
        ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
        paths.append(path)
    return paths


def _findscu(orthanc: OrthancServer, *args: str) -> int:
    """Run findscu -v; count its "Find Response: N (Pending)" lines (one per match)."""
    assert FINDSCU
    result = subprocess.run(
        [FINDSCU, "-v", "-S", "-aec", orthanc.ae_title, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},  # Debian's DCMTK sets it only when asked
    )
    return sum("(Pending)" in line for line in (result.stdout + result.stderr).splitlines())


def _findscu_one_association(orthanc: OrthancServer, files: list[Path]) -> int:
    return _findscu(orthanc, "127.0.0.1", str(orthanc.dicom_port), *map(str, files))


def _findscu_per_query(orthanc: OrthancServer, ids: list[str]) -> int:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    return sum(
        _findscu(orthanc, *keys, "-k", f"PatientID={pid}", "127.0.0.1", str(orthanc.dicom_port))
        for pid in ids
    )


def _timed(fn: Callable[[], int], expected: int) -> float:
    start = time.perf_counter()
    found = fn()
    elapsed = time.perf_counter() - start
    if found != expected:
        raise SystemExit(f"lost answers: got {found} matches, expected {expected}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nagle", action="store_true", help="start Orthanc without TCP_NODELAY")
    args = parser.parse_args()
    if FINDSCU is None:
        raise SystemExit("DCMTK findscu not found in /usr/bin: apt-get install dcmtk")
    configure_logging(level="info", stream=sys.stderr)  # as the command runs: debug filtered
    ids = _patient_ids(args.queries)
    with OrthancServer(tcp_nodelay=not args.nagle) as orthanc, tempfile.TemporaryDirectory() as tmp:
        _load(orthanc, ids)
        files = _query_files(Path(tmp), ids)
        n = len(ids)
        contenders: dict[str, Callable[[], int]] = {
            "pacsman (one association)": lambda: _pacsman(orthanc, ids),
            "findscu (one association)": lambda: _findscu_one_association(orthanc, files),
        }
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeat):  # interleaved, so that a noisy moment hits both
            for name, fn in contenders.items():
                runs[name].append(_timed(fn, n))
        per_query = _timed(lambda: _findscu_per_query(orthanc, ids), n)
    results = {name: min(times) for name, times in runs.items()}
    results["findscu (one process per query)"] = per_query
    _report(results, n, nagle=args.nagle)
    return 0


def _report(results: dict[str, float], n: int, *, nagle: bool) -> None:
    print(f"{n} study-level C-FINDs by PatientID, Orthanc TCP_NODELAY={'0' if nagle else '1'}")
    print(f"{'contender':36} {'seconds':>8} {'queries/s':>10}")
    for name, seconds in results.items():
        print(f"{name:36} {seconds:8.2f} {n / seconds:10.0f}")
    ours = results["pacsman (one association)"]
    one = results["findscu (one association)"]
    per = results["findscu (one process per query)"]
    print(f"pacsman / findscu one association (rate ratio, target >= 0.8): {one / ours:.2f}x")
    print(f"pacsman / findscu process per query (rate ratio, target >= 5): {per / ours:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
