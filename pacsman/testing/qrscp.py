"""Start pynetdicom's own Query/Retrieve SCP app (``python -m pynetdicom qrscp``) for a test.

A second real PACS beside Orthanc, with other habits: it answers one C-FIND response per
instance and returns only the keys its database holds (no instance counts, no SOP Class UID),
and it never transcodes: a C-GET sub-operation goes out only on a context accepted for the
instance's SOP class *and* the syntax it holds it in (else the instance fails, 0xA702 when
all do).  It needs SQLAlchemy.

It listens on ``127.0.0.1`` (``bind_address``) on a port chosen by the OS a moment earlier
(retried on a race), with its configuration, database and instances in a temporary directory.
Instances are loaded with C-STORE (:meth:`QrScp.upload`) in the syntax of each file, as a
modality would send them, or put straight into its archive (:meth:`QrScp.insert`).  Usage::

    with QrScp() as pacs:
        pacs.upload(paths)
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from pydicom import dcmread
from pynetdicom import AE

from pacsman.closing import Started
from pacsman.testing.net import accepts_tcp, free_port

__all__ = ["QrScp", "QrScpError", "qrscp_available"]

_POLL_SECONDS = 0.02


class QrScpError(RuntimeError):
    """qrscp did not start, or refused an upload; the message ends with the tail of its log."""


def qrscp_available() -> bool:
    """Whether the app can run here (it needs SQLAlchemy)."""
    return importlib.util.find_spec("sqlalchemy") is not None


class QrScp(Started):
    """pynetdicom's qrscp app in a throw-away directory; ``port`` is set once started.

    ``move_destinations`` maps an AE title to ``(host, port)`` for C-MOVE; ``verbose`` makes
    it log each request (``-v``) to ``qrscp.log`` in :attr:`workdir`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        ae_title: str = "QRSCP",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        start_timeout: float = 30.0,
        start_attempts: int = 3,
        verbose: bool = False,
    ) -> None:
        self.ae_title = ae_title
        self.verbose = verbose
        self.port = 0
        self._destinations = dict(move_destinations or {})
        self._start_timeout = start_timeout
        self._start_attempts = start_attempts
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """The temporary directory holding config, database, instances and log.

        Raises:
            QrScpError: if the app is not started.
        """
        if self._workdir is None:
            raise QrScpError("qrscp is not started; call start() or use it as a context")
        return self._workdir

    def start(self) -> Self:
        """Start the app and wait until it accepts connections.

        Raises:
            QrScpError: if it exits or is not ready in time; ends with its log.
        """
        if self._process is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="pacsman-qrscp-"))
        try:
            for _ in range(self._start_attempts):
                if self._try_start():
                    return self
            raise QrScpError(f"qrscp found no free port\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the app (SIGTERM, then SIGKILL) and delete its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the app's log (empty if there is none)."""
        try:
            text = (self.workdir / "qrscp.log").read_text(encoding="utf-8", errors="replace")
        except (OSError, QrScpError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _try_start(self) -> bool:
        self.port = free_port(self.host)
        config = self.workdir / "qrscp.ini"
        config.write_text(self._config(), encoding="utf-8")
        with (self.workdir / "qrscp.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "pynetdicom", "qrscp", "-c", str(config)),
                    *(["-v"] if self.verbose else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if accepts_tcp(self.host, self.port):
                return True
            try:
                self._process.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
            self._process = None
            if "Address already in use" in self.log_tail():
                return False
            raise QrScpError(f"qrscp exited during start-up\n{self.log_tail()}")
        raise QrScpError(f"qrscp not ready within {self._start_timeout} s\n{self.log_tail()}")

    def _config(self) -> str:
        lines = [
            "[DEFAULT]",
            f"ae_title: {self.ae_title}",
            f"port: {self.port}",
            "max_pdu: 16382",
            "acse_timeout: 30",
            "dimse_timeout: 30",
            "network_timeout: 30",
            f"bind_address: {self.host}",
            f"instance_location: {self.workdir / 'instances'}",
            f"database_location: {self.workdir / 'instances.sqlite'}",
            "log_identifier: False",
        ]
        for title, (host, port) in self._destinations.items():
            lines += [f"[{title}]", f"address: {host}", f"port: {port}"]
        return "\n".join(lines) + "\n"

    def upload(self, paths: Iterable[Path]) -> int:
        """C-STORE each file in its own transfer syntax; return how many were stored.

        Raises:
            QrScpError: naming the file, if it was not stored.
        """
        files = [(path, dcmread(path, stop_before_pixels=True)) for path in paths]
        ae = AE(ae_title="UPLOADER")
        for pair in sorted(
            {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for _, d in files}
        ):
            ae.add_requested_context(pair[0], [pair[1]])
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise QrScpError(f"qrscp refused the upload association\n{self.log_tail()}")
        try:
            for path, _ in files:
                status = assoc.send_c_store(path)
                if getattr(status, "Status", None) != 0x0000:
                    raise QrScpError(f"qrscp did not store {path}: {status}\n{self.log_tail()}")
        finally:
            assoc.release()
            ae.shutdown()
        return len(files)

    def insert(self, paths: Iterable[Path]) -> int:
        """Put files straight into the archive (instance folder and database), as if stored
        earlier: for what its C-STORE SCP would refuse, e.g. a private SOP class.  Returns
        how many were added."""
        # The app's own database module (untyped; it needs SQLAlchemy, imported only here).
        db: Any = importlib.import_module("pynetdicom.apps.qrscp.db")
        sessionmaker: Any = importlib.import_module("sqlalchemy.orm").sessionmaker

        engine = db.create(f"sqlite:///{self.workdir / 'instances.sqlite'}")
        session = sessionmaker(bind=engine)()
        count = 0
        try:
            for path in paths:
                ds = dcmread(path)
                target = self.workdir / "instances" / str(ds.SOPInstanceUID)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                db.add_instance(ds, session, str(target))
                count += 1
        finally:
            session.close()
            engine.dispose()
        return count
