"""Demo: a throw-away Orthanc with synthetic studies, and pacsman run against it as a user would.

    python3 scripts/demo.py [--keep-running]

Everything goes to ./demo-work (config, job store, info CSV); it is recreated on every run.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, iter_datasets

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-work"

CONFIG = """\
# Written by scripts/demo.py for the demo PACS; see config/pacsman.example.yaml for every key.
local:
  ae_title: PACSMAN
  bind_host: 127.0.0.1
  port: 11112
pacs:
  demo:
    host: 127.0.0.1
    port: {port}
    called_ae_title: {aet}
store_root: {work}/data
jobstore: {work}/pacsman-jobs.sqlite
log:
  file: {work}/pacsman.log.jsonl
"""


def _show_csv(path: Path) -> None:
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns = ["row", "subject", "session", "StudyDate", "SeriesNumber", "Modality"]
    columns += ["SeriesDescription", "expected_instances", "state"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-running", action="store_true", help="leave Orthanc up at the end")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    orthanc = OrthancServer(ae_title="DEMOPACS").start()
    try:
        for spec in DEMO_STUDIES:
            orthanc.upload_datasets(iter_datasets(spec))
        print(
            f"demo PACS: Orthanc {orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}, "
            f"{orthanc.instance_count()} instances, REST at {orthanc.url}"
        )
        config = WORK / "pacsman.yaml"
        config.write_text(CONFIG.format(port=orthanc.dicom_port, aet=orthanc.ae_title, work=WORK))
        command = [
            "pacsman",
            "--queryfile",
            "queryfiles/example.csv",
            "--info",
            "--config",
            str(config),
        ]
        print("$ " + " ".join(command))
        status = subprocess.run(command, cwd=ROOT, check=False).returncode
        info = WORK / "data" / "example_info.csv"
        if info.exists():
            print(f"\n{info.relative_to(ROOT)}:")
            _show_csv(info)
        print(f"\npacsman exit code: {status}")
        if args.keep_running:
            print("Orthanc keeps running; press Ctrl-C to stop it.")
            threading.Event().wait()
        return status
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(main())
