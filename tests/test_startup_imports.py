"""The command's fixed cost: what it imports, and no wait at shutdown.

A ``pacsman --queryfile q.csv --save`` costs, besides its work, the interpreter's start-up
and imports and its shutdown.  Here: the modules a real ``--save`` run imports (as
``python -X importtime`` lists them, lazy imports included) leave out what that command does
not use; ``--version`` imports neither logging nor DICOM; the Storage SCP stops at once; and
a run ends soon after its last series is retrieved.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pacsman.dicom.scp import InstanceWriter, StorageSCP
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from tests.helpers import write_config, write_queryfile

#: What ``--save`` (no --anonymize, no --push, a CSV query file, a SQLite job store) never
#: uses: the XNAT client and pandas, Excel, PostgreSQL, the service's web stack, the
#: de-identification engine and its tables, the live display (the console is no terminal).
NOT_FOR_SAVE = (
    "xnat",
    "pandas",
    "openpyxl",
    "psycopg",
    "starlette",
    "jinja2",
    "uvicorn",
    "prometheus_client",
    "pacsman.anonymize",
    "pydicom.sr",
    "pacsman.push.xnat",
    "pacsman.service",
    "pacsman.pipeline.helper",
    "pacsman.pipeline.check",
    "rich.live",
)
#: ``--version`` and ``--help`` need neither logging nor DICOM nor the job store.
NOT_FOR_VERSION = ("structlog", "rich", "pynetdicom", "pydicom", "numpy", "pacsman.jobstore")
#: From the last ``series_retrieved`` event to the end of the process (typically 0.02-0.07 s;
#: 0.7-0.8 s when the Storage SCP waited for its accept loop's poll and the interpreter
#: garbage-collected every object on its way out).
TAIL_SECONDS = 1.0

STUDY = StudySpec(
    patient_id="FIXED01",
    patient_name="Fixed^Cost",
    study_date="20240401",
    accession_number="ACCFIX01",
    study_description="fixed cost",
    series=(
        SeriesSpec(series_number=1, series_description="A", n_instances=3, rows=8, columns=8),
        SeriesSpec(series_number=2, series_description="B", n_instances=2, rows=8, columns=8),
    ),
)


def _imported(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reports in ``stderr``."""
    return {
        line.split("|")[2].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def _among(modules: set[str], packages: Sequence[str]) -> list[str]:
    """The ``modules`` that are one of ``packages`` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def _pacsman(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-X", "importtime", "-m", "pacsman", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _epoch(event: dict[str, str]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_version_imports_neither_logging_nor_dicom() -> None:
    """``pacsman --version`` reads no config and logs nothing: structlog (and the rich it
    imports), pynetdicom, pydicom and the job store stay out."""
    done = _pacsman("--version")
    assert (done.returncode, done.stdout[:8]) == (0, "pacsman ")
    assert _among(_imported(done.stderr), NOT_FOR_VERSION) == []


def test_storage_scp_stops_at_once(tmp_path: Path) -> None:
    """stop() does not wait for socketserver's 0.5 s poll (right after start(), the whole
    of it): the stop wakes the accept loop, or its short poll (hooks.ACCEPT_POLL) sees it,
    and the port is free.  The quickest of three stops is judged, so that a loaded machine
    cannot fail it."""
    took = []
    for _ in range(3):
        writer = InstanceWriter(unrouted_directory=tmp_path)
        scp = StorageSCP(
            writer, ae_title="PACSMAN", bind_host="127.0.0.1", port=0, allowed_calling_ae_titles=[]
        ).start()
        started = time.monotonic()
        scp.stop()
        took.append(time.monotonic() - started)
        with socket.socket() as again:
            again.bind(("127.0.0.1", scp.port))  # nothing listens there any more
    assert min(took) < 0.25, f"StorageSCP.stop() took {min(took):.3f} s at best"


def test_save_imports_only_what_it_uses_and_ends_without_waiting(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    """A real ``--save`` against Orthanc (2 series, 5 instances): none of the modules it does
    not use is imported, lazily or not, and the process ends within TAIL_SECONDS of its last
    ``series_retrieved`` event, with every file in place."""
    orthanc.upload_datasets(iter_datasets(STUDY))
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    log = tmp_path / "log.jsonl"
    config = write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        extra=f"log: {{file: {log}, console: json}}\n",
    )
    queryfile = write_queryfile(tmp_path, "PatientID\nFIXED01\n")
    done = _pacsman("-q", str(queryfile), "--save", "--config", str(config))
    ended = time.time()
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 5
    assert _among(_imported(done.stderr), NOT_FOR_SAVE) == []
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    retrieved = [_epoch(e) for e in events if e["event"] == "series_retrieved"]
    assert len(retrieved) == 2
    tail = ended - max(retrieved)
    print(f"last series_retrieved -> exit: {tail:.3f} s")  # shown with pytest -rP
    assert tail < TAIL_SECONDS, f"{tail:.3f} s from the last series_retrieved to the exit"
