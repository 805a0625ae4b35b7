"""Demo: a throw-away Orthanc with synthetic studies, and pacsman run against it as a user would.

    python3 scripts/demo.py [--workdir DIR] [--keep-running]

It runs `pacsman --queryfile queryfiles/example.csv --save --push --nifti --info`: query,
retrieve (C-MOVE into pacsman's own Storage SCP), verify, de-identify, convert to NIfTI, push to
a local XNAT emulator (through the real `xnat` client) and verify there; then a per-row report.
Then `pacsman dqr` has the emulator's DQR pull the same studies from Orthanc into a second
project, one study per call, followed and verified.

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
from pacsman.testing.xnat_emulator import DqrPacs, XnatEmulator

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

#: ``pacsman dqr``: the same PACS, XNAT's DQR pulling into project DEMO_DQR (whose
#: anonymization script the emulator holds), counts verified by pacsman's own C-FIND.
DQR_CONFIG = """\
dqr:
  receiver_port: {receiver_port}
  query: pacs
  interval: 1
  poll_interval: 0.5
"""
DQR_PROJECT = "DEMO_DQR"
DQR_SCRIPT = 'version "6.1"\n(0010,0030) := ""\n(0010,1040) := ""\n'


def _report(path: Path, xnat: XnatEmulator) -> None:
    """Per query row: expected, received and pushed counts, the XNAT URI, the state."""
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    on_xnat = {s.label: s.dicom_file_count for s in xnat.sessions("DEMO")}
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
    nifti = sorted((data / "nifti").rglob("*.nii.gz"))
    print(f"NIfTI (dcm2niix), also on XNAT as each scan's NIFTI resource: {len(nifti)} files, e.g.")
    print(f"  {_shown(nifti[0])}" if nifti else "  (none)")


def _run_pacsman(work: Path, config: Path, *command: str) -> int:
    command = ("pacsman", *command, "--config", str(config))
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
    orthanc = OrthancServer(
        ae_title="DEMOPACS", modalities={"pacsman": ("PACSMAN", "127.0.0.1", local_port)}
    ).start()
    xnat = XnatEmulator(
        work / "xnat",
        users={"demo": "demo"},
        projects=("DEMO", DQR_PROJECT),
        dqr_pacs=[DqrPacs(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "Demo PACS")],
        anonymization_scripts={DQR_PROJECT: DQR_SCRIPT},
    ).start()
    try:
        orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", xnat.dqr_receiver_port)
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
        run = ("--queryfile", str(QUERYFILE), "--save", "--push", "--nifti", "--info")
        status = _run_pacsman(work, config, *run)
        info = work / "data" / "example_info.csv"
        if info.exists():
            print(f"\nper row ({_shown(info)} has the per-series detail):")
            _report(info, xnat)
        _show_files(work)
        print(f"\npacsman exit code: {status}")
        dqr_config = work / "pacsman-dqr.yaml"
        dqr_config.write_text(
            config.read_text().replace("project: DEMO\n", f"project: {DQR_PROJECT}\n")
            + DQR_CONFIG.format(receiver_port=xnat.dqr_receiver_port)
        )
        print(f"\nXNAT's own DQR pulls the same studies into project {DQR_PROJECT}:")
        dqr_status = _run_pacsman(work, dqr_config, "dqr", "--queryfile", str(QUERYFILE))
        sessions = {s.label: s.dicom_file_count for s in xnat.sessions(DQR_PROJECT)}
        print(f"sessions in {DQR_PROJECT}: {sessions}")
        print(f"pacsman dqr exit code: {dqr_status}")
        status = max(status, dqr_status)
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
