"""DICOM TLS retrieve: the whole ``pacsman --queryfile q.csv --save``, over TLS and plain.

    python3 benchmarks/tls_retrieve.py [--instances 1000] [--studies 10] [--repeat 3]

Two Orthancs (TCP_NODELAY=1) hold the same studies: one with DICOM TLS both ways
(``DicomTlsEnabled``, pacsman's Storage SCP as a ``UseDicomTls`` modality), one plain.
Contenders, interleaved, each a fresh process and a fresh output folder and job store:

* ``pacsman --queryfile q.csv --save`` over TLS (``pacs.X.tls`` and ``local.tls``);
* the same command over plain TCP, against the plain Orthanc;
* the reference: DCMTK ``storescp +tls`` receiving the same studies from the TLS Orthanc,
  sent by Orthanc's REST ``/modalities/{dcmtk}/store`` (DCMTK's ``movescu`` has no TLS
  in Debian's build, so Orthanc's own C-STORE SCU stands in for the C-MOVE's sub-operations;
  this line has no C-FIND and no process start-up of a retrieve tool);
* DCMTK ``storescp`` plain, receiving from the plain Orthanc the same way.

A second, component-only part (labelled as such) sends the same files with DCMTK
``storescu +tls`` to pacsman's :class:`~pacsman.dicom.scp.StorageSCP` in this process, with
its fast receive path and without it (pynetdicom receiving), and to ``storescp +tls``.

Prints the median wall time of ``--repeat`` runs, MB/s and the ratios.  The output goes to
``/dev/shm`` so that the figures are the network stack's, not the disk's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pacsman.config import TlsConfig
from pacsman.dicom.scp import InstanceWriter, StorageSCP
from pacsman.dicom.tls import server_context
from pacsman.testing.dcmtk import StoreSCP, run_dcmtk, tls_args
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer, tls_modality
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from pacsman.testing.tls import PEER, Pki, TlsFiles, make_pki

MB = 1_000_000


def _specs(instances: int, studies: int) -> list[StudySpec]:
    per_series = max(instances // (studies * 2), 1)
    return [
        StudySpec(
            patient_id=f"TLS{n:03d}",
            patient_name=f"Tls^Bench{n}",
            study_date="20240101",
            accession_number=f"ACC{n:04d}",
            study_description="TLS benchmark",
            series=tuple(
                SeriesSpec(
                    series_number=s + 1,
                    series_description=f"series {s + 1}",
                    n_instances=per_series,
                    rows=256,
                    columns=256,
                )
                for s in range(2)
            ),
        )
        for n in range(studies)
    ]


def _tls_yaml(files: TlsFiles, indent: int) -> str:
    pad = " " * indent
    return f"{pad}tls:\n{pad}  ca: {files.ca}\n{pad}  cert: {files.cert}\n{pad}  key: {files.key}\n"


def _config(work: Path, orthanc: OrthancServer, port: int, files: TlsFiles | None) -> Path:
    text = f"local:\n  ae_title: PACSMAN\n  port: {port}\n"
    text += _tls_yaml(files, 2) if files else ""
    text += (
        f"pacs:\n  orthanc:\n    host: 127.0.0.1\n    port: {orthanc.dicom_port}\n"
        f"    called_ae_title: {orthanc.ae_title}\n    retrieve_level: study\n"
    )
    text += _tls_yaml(files, 4) if files else ""
    text += f"store_root: {work}/data\njobstore: {work}/jobs.sqlite\nlog:\n  level: warning\n"
    path = work / "pacsman.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _pacsman(orthanc: OrthancServer, port: int, files: TlsFiles | None, query: Path) -> float:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        work = Path(folder)
        config = _config(work, orthanc, port, files)
        argv = [sys.executable, "-m", "pacsman", "--queryfile", str(query), "--save"]
        started = time.perf_counter()
        done = subprocess.run([*argv, "--config", str(config)], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"pacsman failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return wall


def _dcmtk(orthanc: OrthancServer, files: TlsFiles | None) -> float:
    with (
        tempfile.TemporaryDirectory(dir="/dev/shm") as folder,
        StoreSCP(Path(folder), ae_title="DCMTK", tls=files) as receiver,
    ):
        use_tls = files is not None
        orthanc.add_modality("dcmtk", "DCMTK", "127.0.0.1", receiver.port, use_tls=use_tls)
        ids = [study["ID"] for study in orthanc.studies()]
        started = time.perf_counter()
        orthanc.rest("POST", "/modalities/dcmtk/store", {"Resources": ids})
        return time.perf_counter() - started


def _storescu(port: int, called: str, files: TlsFiles, sources: list[Path]) -> float:
    started = time.perf_counter()
    args = [*tls_args(files), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port)]
    done = run_dcmtk("storescu", *args, *map(str, sources), timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"storescu failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def _scp_component(files: TlsFiles, sources: list[Path], *, fast_path: bool) -> float:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        writer = InstanceWriter(unrouted_directory=Path(folder), unsolicited="keep")
        context = server_context(TlsConfig(ca=files.ca, cert=files.cert, key=files.key))
        scp = StorageSCP(
            writer,
            ae_title="PACSMAN",
            bind_host="127.0.0.1",
            port=0,
            allowed_calling_ae_titles=["STORESCU"],
            ssl_context=context,
            fast_path=fast_path,
        )
        with scp:
            return _storescu(scp.port, "PACSMAN", files, sources)


def _dcmtk_component(files: TlsFiles, sources: list[Path]) -> float:
    with (
        tempfile.TemporaryDirectory(dir="/dev/shm") as folder,
        StoreSCP(Path(folder), ae_title="DCMTK", tls=files) as receiver,
    ):
        return _storescu(receiver.port, "DCMTK", files, sources)


def _component(files: TlsFiles, specs: list[StudySpec], repeat: int) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        sources: list[Path] = []
        for n, spec in enumerate(specs):
            for index, dataset in enumerate(iter_datasets(spec)):
                path = Path(folder) / f"{n}_{index}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                sources.append(path)
        contenders: dict[str, Callable[[], float]] = {
            "storescp +tls (DCMTK)": lambda: _dcmtk_component(files, sources),
            "StorageSCP TLS, fast path": lambda: _scp_component(files, sources, fast_path=True),
            "StorageSCP TLS, pynetdicom": lambda: _scp_component(files, sources, fast_path=False),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeat):
            for name, run in contenders.items():
                times[name].append(run())
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["storescp +tls (DCMTK)"]
    print(f"component only: storescu +tls sends {len(sources)} files to each receiver")
    for name, wall in medians.items():
        print(f"  {name:44s} {wall:6.2f} s  x{reference / wall:.2f} DCMTK TLS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    specs = _specs(args.instances, args.studies)
    with tempfile.TemporaryDirectory() as folder:
        pki: Pki = make_pki(Path(folder) / "pki")
        files = pki.files(PEER)
        ports = {name: free_port() for name in ("pacsman", "pacsman_plain")}
        tls = OrthancServer(
            tls=files,
            modalities={"pacsman": tls_modality("PACSMAN", "127.0.0.1", ports["pacsman"])},
        )
        plain = OrthancServer(
            modalities={"pacsman": ("PACSMAN", "127.0.0.1", ports["pacsman_plain"])}
        )
        with tls, plain:
            for orthanc in (tls, plain):
                for spec in specs:
                    orthanc.upload_datasets(iter_datasets(spec))
            size = sum(
                p.stat().st_size for p in (tls.workdir / "storage").rglob("*") if p.is_file()
            )
            query = Path(folder) / "q.csv"
            query.write_text(
                "AccessionNumber\n" + "".join(f"{s.accession_number}\n" for s in specs),
                encoding="utf-8",
            )
            contenders: dict[str, Callable[[], float]] = {
                "pacsman --save, DICOM TLS": lambda: _pacsman(tls, ports["pacsman"], files, query),
                "pacsman --save, plain TCP": lambda: _pacsman(
                    plain, ports["pacsman_plain"], None, query
                ),
                "DCMTK storescp +tls (Orthanc REST store)": lambda: _dcmtk(tls, files),
                "DCMTK storescp plain (Orthanc REST store)": lambda: _dcmtk(plain, None),
            }
            times: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(args.repeat):
                for name, run in contenders.items():
                    times[name].append(run())
    instances = sum(sum(s.n_instances for s in spec.series) for spec in specs)
    print(
        f"{instances} instances, {size / MB:.0f} MB, {len(specs)} studies; median of {args.repeat}"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["DCMTK storescp +tls (Orthanc REST store)"]
    for name, wall in medians.items():
        rate = size / MB / wall
        print(f"  {name:44s} {wall:6.2f} s {rate:7.1f} MB/s  x{reference / wall:.2f} DCMTK TLS")
    tls_cost = medians["pacsman --save, DICOM TLS"] / medians["pacsman --save, plain TCP"]
    print(f"  pacsman TLS / plain wall: {tls_cost:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        _component(make_pki(Path(folder)).files(PEER), specs, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
