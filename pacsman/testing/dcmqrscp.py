"""Start DCMTK's Query/Retrieve SCP ``dcmqrscp`` on a free localhost port: a second real PACS.

dcmqrscp reads its configuration once, at start, so move destinations (its ``HostTable``) are
given before :meth:`DcmqrscpServer.start`.  Instances are written as Part 10 files into the
storage area and registered with ``dcmqridx``, before or after the start: dcmqrscp reads its
index afresh for every request.  DCMTK 3.6.7's dcmqrscp has no bind-address option and listens
on every interface, so only ever connect to it through ``127.0.0.1``.  DCMTK is always run from
``/usr/bin``: pynetdicom's console scripts shadow DCMTK's names on ``PATH``.

dcmqrscp answers far fewer keys than Orthanc (dcmqrscp(1), "Query Keys"): at series level only
Modality, SeriesInstanceUID and SeriesNumber, at image level only SOPInstanceUID and
InstanceNumber, and no Number of ... Related Instances.

Usage::

    with DcmqrscpServer(move_destinations={"PACSMAN": ("127.0.0.1", 11112)}) as pacs:
        pacs.add_datasets(iter_datasets(spec))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from pacsman.closing import Started
from pacsman.testing.dcmtk import dcmtk_env
from pacsman.testing.net import free_port, wait_for

__all__ = [
    "DCMQRIDX_BINARY",
    "DCMQRSCP_BINARY",
    "ECHOSCU_BINARY",
    "DcmqrscpError",
    "DcmqrscpServer",
    "dcmqrscp_available",
]

DCMQRSCP_BINARY = Path("/usr/bin/dcmqrscp")
DCMQRIDX_BINARY = Path("/usr/bin/dcmqridx")
ECHOSCU_BINARY = Path("/usr/bin/echoscu")
_PORT_IN_USE = "Address already in use"
_INDEX_BATCH = 200  # files per dcmqridx call: keeps the command line short


class DcmqrscpError(RuntimeError):
    """dcmqrscp or dcmqridx failed; the message ends with what it printed."""


def dcmqrscp_available() -> bool:
    """Return whether dcmqrscp, dcmqridx and echoscu are installed in /usr/bin."""
    tools = (DCMQRSCP_BINARY, DCMQRIDX_BINARY, ECHOSCU_BINARY)
    return all(tool.is_file() and os.access(tool, os.X_OK) for tool in tools)


class DcmqrscpServer(Started):
    """A throw-away dcmqrscp archive with one storage area, started and stopped by the test.

    ``move_destinations`` maps an AE title to ``(host, port)``; dcmqrscp answers a C-MOVE to any
    other AE title with 0xA801.  ``extra_args`` are appended to dcmqrscp's command line (e.g.
    ``["--require-find"]``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        ae_title: str = "DCMQRSCP",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        extra_args: Sequence[str] = (),
        tcp_nodelay: bool = True,
        binary: Path = DCMQRSCP_BINARY,
        indexer: Path = DCMQRIDX_BINARY,
        echoscu: Path = ECHOSCU_BINARY,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        start_attempts: int = 3,
    ) -> None:
        self.ae_title = ae_title
        self.port = 0
        self._destinations = dict(move_destinations or {})
        self._args = [str(binary), "--disable-host-lookup", *extra_args]
        self._indexer = indexer
        self._echoscu = echoscu
        self._env = dcmtk_env(tcp_nodelay=tcp_nodelay)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._start_attempts = start_attempts
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """The temporary directory holding config, log and storage area (created on demand)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="pacsman-dcmqrscp-"))
            self.storage_area.mkdir()
        return self._workdir

    @property
    def storage_area(self) -> Path:
        """The storage area of :attr:`ae_title`: the files and dcmqrscp's ``index.dat``."""
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        """dcmqrscp's combined stdout/stderr log."""
        return self.workdir / "dcmqrscp.log"

    def add_move_destination(self, ae_title: str, host: str, port: int) -> None:
        """Let dcmqrscp C-MOVE to ``ae_title`` at ``host:port``.

        Raises:
            DcmqrscpError: if dcmqrscp is already running (it reads its config only at start).
        """
        if self._process is not None:
            raise DcmqrscpError("dcmqrscp reads its HostTable at start: add destinations before")
        self._destinations[ae_title] = (host, port)

    def add_datasets(self, datasets: Iterable[Dataset]) -> list[Path]:
        """Write each dataset into the storage area and register it in dcmqrscp's index.

        Raises:
            DcmqrscpError: if dcmqridx fails; the message ends with its output.
        """
        paths = []
        for ds in datasets:
            path = self.storage_area / f"{ds.SOPInstanceUID}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        for start in range(0, len(paths), _INDEX_BATCH):
            batch = [str(p) for p in paths[start : start + _INDEX_BATCH]]
            result = subprocess.run(
                [str(self._indexer), str(self.storage_area), *batch],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                timeout=60,
                check=False,
            )
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            if result.returncode != 0 or "E: " in output:
                raise DcmqrscpError(f"dcmqridx failed ({result.returncode}): {output}")
        return paths

    def start(self) -> Self:
        """Start dcmqrscp and wait until it answers a C-ECHO.

        Raises:
            DcmqrscpError: if dcmqrscp exits or does not answer in time; ends with its log.
        """
        if self._process is not None:
            return self
        try:
            for _ in range(self._start_attempts):
                if self._try_start():
                    return self
            tries = self._start_attempts
            raise DcmqrscpError(f"dcmqrscp found no free port in {tries} tries\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop dcmqrscp and its association children, then delete its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=self._stop_timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of dcmqrscp's log (empty if there is none)."""
        if self._workdir is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _try_start(self) -> bool:
        """Launch once on a fresh port; False if the port was taken (caller retries)."""
        self.port = free_port(self.host)
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(self._config(), encoding="utf-8")
        with self.log_path.open("wb") as log:
            process = self._process = subprocess.Popen(
                [*self._args, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self.workdir,
                start_new_session=True,  # its own group: stop() reaches the forked children
            )
        try:
            wait_for(
                lambda: process.poll() is not None or self._answers_echo(),
                timeout=self._start_timeout,
                what="dcmqrscp to answer a C-ECHO",
            )
        except TimeoutError as exc:
            raise DcmqrscpError(f"{exc} on port {self.port}\n{self.log_tail()}") from exc
        if process.poll() is None:
            return True
        self._process = None
        if _PORT_IN_USE in self.log_tail():
            return False
        raise DcmqrscpError(
            f"dcmqrscp exited with status {process.returncode} during start-up\n{self.log_tail()}"
        )

    def _answers_echo(self) -> bool:
        command = [str(self._echoscu), "-aet", "PROBE", "-aec", self.ae_title]
        try:
            result = subprocess.run(
                [*command, "-to", "2", self.host, str(self.port)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def _config(self) -> str:
        hosts = "\n".join(
            f"dest{i} = ({ae_title}, {host}, {port})"
            for i, (ae_title, (host, port)) in enumerate(self._destinations.items())
        )
        return f"""\
NetworkTCPPort = {self.port}
MaxPDUSize = 65536
MaxAssociations = 16

HostTable BEGIN
{hosts}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{self.ae_title} {self.storage_area} RW (500, 1024mb) ANY
AETable END
"""


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """Signal the process group ``process`` leads (``start_new_session``): it and its children."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(process.pid, signum)
