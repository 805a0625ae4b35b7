"""Run Debian's DCMTK tools from tests and benchmarks.

pynetdicom installs console scripts named ``findscu``, ``storescp``... that shadow DCMTK's
on ``PATH``, so DCMTK is always resolved in ``/usr/bin:/bin`` (:func:`dcmtk_tool`).  Debian's
DCMTK 3.6.7 sets TCP_NODELAY only when the environment says ``TCP_NODELAY=1``; without it
each small message can stall ~40 ms, so :func:`dcmtk_env` sets it by default.

DICOM TLS: ``StoreSCP(tls=...)`` runs ``storescp +tls key cert +cf ca`` (a peer without a
certificate signed by ``ca`` is refused), and :func:`run_dcmtk` runs ``storescu``/``echoscu``
with the same arguments (:func:`tls_args`), e.g.
``run_dcmtk("echoscu", "-aec", "ORTHANC", "127.0.0.1", str(port), tls=pki.files("peer"))``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

from pacsman.closing import Started
from pacsman.testing.net import accepts_tcp, free_port, wait_for

if TYPE_CHECKING:
    from pacsman.testing.tls import TlsFiles

__all__ = ["DCMTK_PATH", "StoreSCP", "dcmtk_env", "dcmtk_tool", "run_dcmtk", "tls_args"]

DCMTK_PATH = "/usr/bin:/bin"


def dcmtk_tool(name: str) -> Path | None:
    """Return the DCMTK binary ``name`` (e.g. ``"findscu"``) from /usr/bin or /bin, or None."""
    found = shutil.which(name, path=DCMTK_PATH)
    return Path(found) if found else None


def dcmtk_env(*, tcp_nodelay: bool = True) -> dict[str, str]:
    """Return a copy of the environment for a DCMTK process, ``TCP_NODELAY=1`` by default."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def tls_args(tls: TlsFiles) -> list[str]:
    """DCMTK's DICOM TLS options: ``+tls key cert +cf ca`` (the peer must present a
    certificate signed by ``ca``: DCMTK's default ``--require-peer-cert``)."""
    return ["+tls", str(tls.key), str(tls.cert), "+cf", str(tls.ca)]


def run_dcmtk(
    name: str,
    *args: str,
    tls: TlsFiles | None = None,
    timeout: float = 30.0,
    tcp_nodelay: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the DCMTK tool ``name`` (``storescu``, ``echoscu``...) with ``args``, over DICOM
    TLS if ``tls`` is given; return its exit status and output (text) without checking it.

    Raises:
        FileNotFoundError: if the tool is not installed.
        subprocess.TimeoutExpired: if it runs longer than ``timeout`` seconds.
    """
    binary = dcmtk_tool(name)
    if binary is None:
        raise FileNotFoundError(f"DCMTK {name} not found in {DCMTK_PATH}; apt install dcmtk")
    command = [str(binary), *(tls_args(tls) if tls is not None else []), *args]
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dcmtk_env(tcp_nodelay=tcp_nodelay),
        check=False,
    )


class StoreSCP(Started):
    """DCMTK ``storescp`` on a free port, writing into ``directory`` (a temp dir if None).

    DCMTK storescp listens on every interface; connect to it through ``127.0.0.1`` only.
    It serves one association at a time unless ``fork=True``.  With ``tls`` it speaks DICOM
    TLS only (:func:`tls_args`); start-up waits on a plain TCP connect, which storescp
    accepts and then drops (it prints one TLS error for that probe).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        ae_title: str = "STORESCP",
        fork: bool = False,
        tcp_nodelay: bool = True,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        start_attempts: int = 3,
    ) -> None:
        self.ae_title = ae_title
        self.port = 0
        self._directory = directory
        self._own_directory: Path | None = None
        self.tls = tls
        tls_options = tls_args(tls) if tls is not None else []
        self._args = [*(["--fork"] if fork else []), *tls_options, *extra_args]
        self._env = dcmtk_env(tcp_nodelay=tcp_nodelay)
        self._start_timeout = start_timeout
        self._start_attempts = start_attempts
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def directory(self) -> Path:
        """Where received files are written.

        Raises:
            RuntimeError: if no directory was given and the SCP is not started.
        """
        directory = self._directory or self._own_directory
        if directory is None:
            raise RuntimeError("StoreSCP has no directory until it is started")
        return directory

    def start(self) -> Self:
        """Start storescp and wait until its port accepts connections.

        Raises:
            FileNotFoundError: if DCMTK's storescp is not installed.
            RuntimeError: if storescp exits or never listens; ends with its output.
        """
        binary = dcmtk_tool("storescp")
        if binary is None:
            raise FileNotFoundError(f"DCMTK storescp not found in {DCMTK_PATH}; apt install dcmtk")
        if self._directory is None:
            self._own_directory = Path(tempfile.mkdtemp(prefix="pacsman-storescp-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(self._start_attempts):
            if self._try_start(binary):
                return self
        self.stop()
        raise RuntimeError(f"storescp found no free port in {self._start_attempts} attempts")

    def _try_start(self, binary: Path) -> bool:
        """Launch once on a fresh port; False if the port was taken (caller retries)."""
        self.port = free_port(self.host)
        args = [str(binary), "-aet", self.ae_title, "-od", str(self.directory), *self._args]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this call; stop() closes it
        process = self._process = subprocess.Popen(
            [*args, str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
        )

        def exited_or_listening() -> bool:
            return process.poll() is not None or accepts_tcp(self.host, self.port)

        try:
            wait_for(exited_or_listening, timeout=self._start_timeout, what="storescp to listen")
        except TimeoutError as exc:
            output = self.output()
            self.stop()
            raise RuntimeError(f"{exc} on port {self.port}: {output}") from exc
        if process.poll() is None:
            return True
        output = self.output()
        self._end_process()
        if "Address already in use" in output:
            return False
        raise RuntimeError(f"storescp exited with status {process.returncode}: {output}")

    def output(self) -> str:
        """What storescp has printed so far (warnings and errors by default)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def stop(self) -> None:
        """Stop storescp (SIGTERM, then SIGKILL) and delete a directory it created itself."""
        self._end_process()
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
            self._own_directory = None

    def _end_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def received(self) -> list[Path]:
        """The files received so far, sorted by name (DCMTK writes each before answering)."""
        return sorted(p for p in self.directory.rglob("*") if p.is_file())
