"""Demo: a throw-away Orthanc with synthetic studies, and pacsman run against it as a user would.

    python3 scripts/demo.py [--workdir DIR] [--keep-running]

It runs `pacsman --queryfile queryfiles/example.csv --save --push --info`: query, retrieve
(C-MOVE into pacsman's own Storage SCP), verify, de-identify, push to a local XNAT emulator
(through the real `xnat` client) and verify there; then a per-row report.

Everything it writes goes to --workdir (default ./demo-work, from the current folder): the
config, job store, log, info CSV, images, key, mapping table and the emulator's XNAT; Orthanc
lives in a temporary folder that is removed at the end.  The workdir is recreated on every
run; a folder that holds anything but an earlier demo's output is refused, never emptied.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, iter_datasets
from pacsman.testing.xnat_emulator import XnatEmulator

ROOT = Path(__file__).resolve().parent.parent
QUERYFILE = ROOT / "queryfiles" / "example.csv"
#: Written into the workdir; only a folder holding it (or an empty one) is ever emptied.
MARKER = ".pacsman-demo"

CONFIG = """\
# Written by scripts/demo.py for the demo PACS; see config/pacsman.example.yaml for every key.
local:
  ae_title: PACSMAN
  bind_host: 127.0.0.1
  port: {local_port}
pacs:
  demo:
    host: 127.0.0.1
    port: {port}
    called_ae_title: {aet}
store_root: {work}/data
jobstore: {work}/pacsman-jobs.sqlite
xnat:
  url: {xnat_url}
  project: DEMO
log:
  file: {work}/pacsman.log.jsonl
"""


def _report(path: Path, xnat: XnatEmulator) -> None:
    """Per query row: expected, received and pushed counts, the XNAT URI, the state."""
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    on_xnat = {s.label: s.file_count for s in xnat.sessions("DEMO")}
    header = ("row", "subject", "session", "expected", "received", "on XNAT", "state", "XNAT URI")
    lines = [header]
    for line in dict.fromkeys(r["row"] for r in rows):
        mine = [r for r in rows if r["row"] == line]
        uri = mine[0]["xnat_uri"]
        label = uri.rstrip("/").rsplit("/", 1)[-1] if uri else ""
        states = {r["push"] or r["anonymization"] or r["state"] for r in mine}
        lines.append(
            (
                line,
                mine[0]["subject"],
                mine[0]["session"],
                str(sum(int(r["expected_instances"] or 0) for r in mine)),
                str(sum(int(r["received_instances"] or 0) for r in mine)),
                str(on_xnat.get(label, 0)),
                ",".join(sorted(states)),
                uri,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _prepare(work: Path) -> Path:
    """An empty ``work`` folder, marked as the demo's; an earlier demo's output is removed.

    Raises:
        SystemExit: ``work`` is a file, or a folder holding something the demo did not write.
    """
    work = work.expanduser().resolve()
    if work.exists() and not work.is_dir():
        raise SystemExit(f"demo: --workdir {work} is a file; give a folder")
    if work.is_dir() and any(work.iterdir()):
        if not (work / MARKER).is_file():
            raise SystemExit(
                f"demo: --workdir {work} holds files an earlier demo did not write; "
                "give a new or empty folder (the demo empties its workdir on every run)"
            )
        shutil.rmtree(work)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    (work / MARKER).write_text("scripts/demo.py writes here and empties it on every run\n")
    return work


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is below it."""
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def _show_files(work: Path) -> None:
    data = work / "data"
    anonymized = sorted((data / "anonymized").rglob("*.dcm"))
    raw = [p for p in data.rglob("*.dcm") if "anonymized" not in p.relative_to(data).parts]
    print(f"\nretrieved, as the PACS sent them: {len(raw)} files, e.g.")
    print(f"  {_shown(sorted(raw)[0])}" if raw else "  (none)")
    print(f"de-identified, as pushed to XNAT: {len(anonymized)} files, e.g.")
    print(f"  {_shown(anonymized[0])}" if anonymized else "  (none)")


def _run_pacsman(work: Path, config: Path) -> int:
    command = ["pacsman", "--queryfile", str(QUERYFILE), "--save", "--push", "--info"]
    command += ["--config", str(config)]
    print(f"$ cd {_shown(work)} && " + " ".join(command))
    env = {**os.environ, "XNAT_USER": "demo", "XNAT_PASS": "demo"}
    env["XDG_CONFIG_HOME"] = str(work / "state")  # the demo's key and mapping table
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written into the checkout
    return subprocess.run(command, cwd=work, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-work"),
        help="where everything goes (default: ./demo-work); emptied on every run",
    )
    parser.add_argument("--keep-running", action="store_true", help="leave Orthanc up at the end")
    args = parser.parse_args()
    work = _prepare(args.workdir)
    local_port = free_port()
    xnat = XnatEmulator(work / "xnat", users={"demo": "demo"}, projects=("DEMO",)).start()
    orthanc = OrthancServer(
        ae_title="DEMOPACS", modalities={"pacsman": ("PACSMAN", "127.0.0.1", local_port)}
    ).start()
    try:
        for spec in DEMO_STUDIES:
            orthanc.upload_datasets(iter_datasets(spec))
        print(
            f"demo PACS: Orthanc {orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}, "
            f"{orthanc.instance_count()} instances, REST at {orthanc.url}"
        )
        print(f"demo XNAT: emulator at {xnat.url}, project DEMO (user demo)")
        config = work / "pacsman.yaml"
        config.write_text(
            CONFIG.format(
                port=orthanc.dicom_port,
                aet=orthanc.ae_title,
                work=work,
                local_port=local_port,
                xnat_url=xnat.url,
            )
        )
        status = _run_pacsman(work, config)
        info = work / "data" / "example_info.csv"
        if info.exists():
            print(f"\nper row ({_shown(info)} has the per-series detail):")
            _report(info, xnat)
        _show_files(work)
        print(f"\npacsman exit code: {status}")
        if args.keep_running:
            print("Orthanc keeps running; press Ctrl-C to stop it.")
            threading.Event().wait()
        return status
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.stop()
        xnat.stop()


if __name__ == "__main__":
    sys.exit(main())
