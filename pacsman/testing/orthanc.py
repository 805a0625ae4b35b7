"""Start Debian's Orthanc on free localhost ports for a test, and talk to its REST API.

Orthanc 1.10 has no bind-address option: its DICOM port listens on every interface, so only
ever connect to it through ``127.0.0.1``.  The DICOM side is DCMTK, which sets TCP_NODELAY
only when the environment says ``TCP_NODELAY=1``; we set it by default (``tcp_nodelay=True``).

Usage::

    with OrthancServer(modalities={"PACSMAN": ("PACSMAN", "127.0.0.1", 11112)}) as orthanc:
        orthanc.upload_datasets(iter_datasets(spec))
        assert orthanc.series_instance_counts() == {...}
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from pacsman.closing import Started
from pacsman.testing.net import accepts_tcp, free_port

if TYPE_CHECKING:
    from pacsman.testing.tls import TlsFiles

__all__ = [
    "ORTHANC_BINARY",
    "OrthancError",
    "OrthancServer",
    "OrthancStartError",
    "orthanc_available",
    "tls_modality",
]

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
_PORT_IN_USE = "privileged or already in use"
_POLL_SECONDS = 0.02


class OrthancError(RuntimeError):
    """A REST call to Orthanc failed; the message names method, path, status and body."""


class OrthancStartError(OrthancError):
    """Orthanc did not come up; the message ends with the tail of its log."""


def orthanc_available(binary: Path = ORTHANC_BINARY) -> bool:
    """Return whether the Orthanc binary exists and is executable (for skip markers)."""
    return binary.is_file() and os.access(binary, os.X_OK)


class OrthancServer(Started):
    """A throw-away Orthanc in a temporary directory, started and stopped by the test.

    ``modalities`` maps a name to ``(ae_title, host, port)``, or to Orthanc's extended form
    (a dict such as :func:`tls_modality` returns); Orthanc refuses a C-MOVE to any
    destination not listed there, whatever ``always_allow_move`` says.  ``extra_config`` is
    merged last into the generated configuration (any Orthanc 1.10 key).

    ``tls`` turns on DICOM TLS for Orthanc's SCP (``DicomTlsEnabled``: plain TCP is then
    refused), and gives the certificate, key and trusted CA that Orthanc also uses as SCU
    towards modalities with ``UseDicomTls``.  With ``tls_peer_certificate_required`` (the
    default), a TLS peer without a certificate is refused.  Start-up still waits on a plain TCP
    connect to the DICOM port, which a TLS listener accepts too (Orthanc then logs one
    "TLS error: unexpected eof while reading" for that probe).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        ae_title: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int] | Mapping[str, Any]] | None = None,
        always_allow_find: bool = True,
        always_allow_move: bool = True,
        always_allow_get: bool = True,
        always_allow_store: bool = True,
        check_called_aet: bool = False,
        scu_timeout: int = 10,
        stable_age: int = 1,
        concurrent_jobs: int = 2,
        dicom_threads: int = 4,
        tcp_nodelay: bool = True,
        tls: TlsFiles | None = None,
        tls_peer_certificate_required: bool = True,
        verbose: bool = False,
        extra_config: Mapping[str, Any] | None = None,
        binary: Path = ORTHANC_BINARY,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        start_attempts: int = 3,
    ) -> None:
        self.ae_title = ae_title
        self.tcp_nodelay = tcp_nodelay
        self._settings: dict[str, Any] = {
            "DicomAet": ae_title,
            "DicomModalities": {k: _modality(v) for k, v in (modalities or {}).items()},
            "DicomAlwaysAllowFind": always_allow_find,
            "DicomAlwaysAllowMove": always_allow_move,
            "DicomAlwaysAllowGet": always_allow_get,
            "DicomAlwaysAllowStore": always_allow_store,
            "DicomCheckCalledAet": check_called_aet,
            "DicomScuTimeout": scu_timeout,
            "StableAge": stable_age,
            "ConcurrentJobs": concurrent_jobs,
            "DicomThreadsCount": dicom_threads,
            **_tls_settings(tls, tls_peer_certificate_required),
            **(extra_config or {}),
        }
        self.tls = tls
        self._verbose = verbose
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._start_attempts = start_attempts
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self.dicom_port = 0
        self.http_port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The temporary directory holding config, storage and log.

        Raises:
            OrthancError: if the server is not started.
        """
        if self._workdir is None:
            raise OrthancError("Orthanc is not started; call start() or use it as a context")
        return self._workdir

    @property
    def log_path(self) -> Path:
        """Orthanc's combined stdout/stderr log."""
        return self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> Self:
        """Start Orthanc and wait until HTTP answers and the DICOM port accepts connections.

        Raises:
            OrthancStartError: if Orthanc exits or is not ready in time; ends with its log.
        """
        if self._process is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="pacsman-orthanc-"))
        try:
            for _ in range(self._start_attempts):
                if self._try_start():
                    return self
            raise OrthancStartError(
                f"Orthanc found no free ports in {self._start_attempts} attempts\n{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``stop_timeout``) and delete its files."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process, self._stop_timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of Orthanc's log (empty if there is none)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, OrthancError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _try_start(self) -> bool:
        """Launch once on fresh ports; False if a port was taken (caller retries)."""
        self.dicom_port = free_port(self.host)
        self.http_port = free_port(self.host)
        while self.http_port == self.dicom_port:
            self.http_port = free_port(self.host)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2), encoding="utf-8")
        self._process = self._spawn(config)
        if self._wait_ready(self._process):
            return True
        if self._process.poll() is None:
            raise OrthancStartError(
                f"Orthanc not ready within {self._start_timeout} s on HTTP {self.http_port} "
                f"/ DICOM {self.dicom_port}\n{self.log_tail()}"
            )
        self._process = None
        if _PORT_IN_USE in self.log_tail():
            return False
        raise OrthancStartError(f"Orthanc exited during start-up\n{self.log_tail()}")

    def _config(self) -> dict[str, Any]:
        storage = str(self.workdir / "storage")
        return {
            "Name": f"pacsman-test-{self.ae_title}",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpCompressionEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomPort": self.dicom_port,
            "DicomModalitiesInDatabase": False,
            "SaveJobs": False,
            "OverwriteInstances": True,
            **self._settings,
        }

    def _spawn(self, config: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.pop("TCP_NODELAY", None)
        if self.tcp_nodelay:
            env["TCP_NODELAY"] = "1"
        args = [str(self._binary), "--no-jobs", *(["--verbose"] if self._verbose else [])]
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                [*args, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Poll until ready (True), the process exits (False) or the deadline passes (False)."""
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._http_ready() and accepts_tcp(self.host, self.dicom_port):
                return True
            try:
                process.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
            return False
        return False

    def _http_ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/system", timeout=1.0)
        except OSError:
            return False
        return status == 200

    # -- REST --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        connection: http.client.HTTPConnection | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        conn = connection or http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            if connection is None:
                conn.close()

    @contextmanager
    def _connection(self) -> Iterator[http.client.HTTPConnection]:
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=60.0)
        try:
            yield conn
        finally:
            conn.close()

    def rest(self, method: str, path: str, payload: Any = None) -> Any:
        """Call the REST API with a JSON payload and return the decoded JSON answer.

        Raises:
            OrthancError: on any status other than 200.
        """
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self._request(method, path, body)
        if status != 200:
            text = data[:300].decode(errors="replace")
            raise OrthancError(f"Orthanc {method} {path}: HTTP {status}: {text}")
        return json.loads(data) if data.strip() else None

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """POST each DICOM file to ``/instances``; return Orthanc's instance IDs.

        Raises:
            OrthancError: naming the file, if Orthanc does not store it.
        """
        return self._upload((str(p), p.read_bytes()) for p in paths)

    def upload_datasets(self, datasets: Iterable[Dataset]) -> list[str]:
        """Encode each dataset as a Part 10 file and POST it; return Orthanc's instance IDs.

        Raises:
            OrthancError: naming the SOPInstanceUID, if Orthanc does not store it.
        """
        return self._upload((str(ds.SOPInstanceUID), _part10(ds)) for ds in datasets)

    def _upload(self, items: Iterable[tuple[str, bytes]]) -> list[str]:
        ids = []
        with self._connection() as conn:
            for name, data in items:
                status, body = self._request(
                    "POST", "/instances", data, content_type="application/dicom", connection=conn
                )
                if status != 200:
                    text = body[:300].decode(errors="replace")
                    raise OrthancError(f"Orthanc refused {name}: HTTP {status}: {text}")
                ids.append(str(json.loads(body)["ID"]))
        return ids

    def studies(self) -> list[dict[str, Any]]:
        """Return ``/studies?expand``: one dict per study with ``MainDicomTags`` and ``Series``."""
        return list(self.rest("GET", "/studies?expand"))

    def study_uids(self) -> set[str]:
        """Return the StudyInstanceUIDs Orthanc holds."""
        return {study["MainDicomTags"]["StudyInstanceUID"] for study in self.studies()}

    def series_instance_counts(self) -> dict[str, int]:
        """Return ``{SeriesInstanceUID: number of instances stored}``."""
        return {
            series["MainDicomTags"]["SeriesInstanceUID"]: len(series["Instances"])
            for series in self.rest("GET", "/series?expand")
        }

    def instance_count(self) -> int:
        """Return the number of instances stored."""
        return int(self.rest("GET", "/statistics")["CountInstances"])

    def delete_all(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient_id in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient_id}")

    def add_modality(
        self, name: str, ae_title: str, host: str, port: int, *, use_tls: bool = False
    ) -> None:
        """Register (or replace) a DICOM peer, e.g. a C-MOVE destination, at run time;
        ``use_tls``: Orthanc opens its associations to it over DICOM TLS (needs ``tls``)."""
        plain = {"AET": ae_title, "Host": host, "Port": port}
        payload = tls_modality(ae_title, host, port) if use_tls else plain
        self.rest("PUT", f"/modalities/{name}", payload)

    def modalities(self) -> dict[str, dict[str, Any]]:
        """Return ``/modalities?expand``: the peers Orthanc knows."""
        return dict(self.rest("GET", "/modalities?expand"))


def tls_modality(ae_title: str, host: str, port: int) -> dict[str, Any]:
    """Orthanc's extended modality form with ``UseDicomTls``: Orthanc's SCU uses DICOM TLS to
    this peer (e.g. the C-MOVE destination), with the ``tls`` files of the server."""
    return {"AET": ae_title, "Host": host, "Port": port, "UseDicomTls": True}


def _modality(value: tuple[str, str, int] | Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else list(value)


def _tls_settings(tls: TlsFiles | None, peer_certificate_required: bool) -> dict[str, Any]:
    if tls is None:
        return {}
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(tls.cert),
        "DicomTlsPrivateKey": str(tls.key),
        "DicomTlsTrustedCertificates": str(tls.ca),
        "DicomTlsRemoteCertificateRequired": peer_certificate_required,
    }


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
