"""``pacsman serve`` as a real subprocess, for tests, benchmarks and the demo.

:class:`ServiceProcess` starts the service with a Unix datagram socket standing in for
systemd's ``NOTIFY_SOCKET`` and records every message (READY=1, STATUS=..., WATCHDOG=1,
STOPPING=1) in order; :func:`wait_for_jobs` watches the job store (read-only) until jobs
reach a state.  Every wait is bounded in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import Job, JobState

__all__ = ["ServiceProcess", "wait_for_jobs"]


class ServiceProcess:
    """``python -m pacsman serve --config PATH`` in its own process group.

    ``watchdog_usec`` sets WATCHDOG_USEC (the service pings at half of it).  The output
    goes to ``log_path`` (``<config dir>/serve.log`` by default).
    """

    def __init__(
        self,
        config: Path,
        *,
        env: Mapping[str, str] | None = None,
        watchdog_usec: int | None = None,
        log_path: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.log_path = log_path or config.parent / "serve.log"
        self.messages: list[str] = []
        self._env = dict(env or {})
        self._watchdog = watchdog_usec
        self._args = list(args)
        self._socket_path = config.parent / f"notify-{os.getpid()}-{id(self)}.sock"
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._changed = threading.Condition()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> Self:
        """Start the service (it is not ready yet: :meth:`wait_ready`)."""
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self._socket_path))
        threading.Thread(target=self._listen, name="notify-socket", daemon=True).start()
        env = {**os.environ, **self._env, "NOTIFY_SOCKET": str(self._socket_path)}
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._watchdog is not None:
            env["WATCHDOG_USEC"] = str(self._watchdog)
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "pacsman", "serve", "--config", str(self.config)]
        self._process = subprocess.Popen(
            [*command, *self._args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def _listen(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(65536)
            except OSError:
                return
            with self._changed:
                self.messages.extend(data.decode("utf-8", "replace").splitlines())
                self._changed.notify_all()

    def wait_message(self, prefix: str, *, timeout: float = 30.0, after: int = 0) -> str:
        """Wait until a message starting with ``prefix`` arrives (from index ``after`` on).

        Raises:
            AssertionError: it did not come in time, or the service exited first; the
                service's log is in the message.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages[after:]:
                    if message.startswith(prefix):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.exited():
                    break
                self._changed.wait(min(left, 0.2))
        raise AssertionError(
            f"no {prefix!r} from pacsman serve within {timeout:g} s (exit {self.returncode()}); "
            f"messages {self.messages}; log:\n{self.log_text()[-4000:]}"
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_message("READY=1", timeout=timeout)

    def exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def signal(self, signum: int) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the service to exit; return its exit code.

        Raises:
            subprocess.TimeoutExpired: it did not exit in time.
        """
        assert self._process is not None
        return self._process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (the de-identify/push children too)."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._process.wait(30)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time.  Returns the exit code."""
        code = None
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                code = self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        elif self._process is not None:
            code = self._process.returncode
        self.kill()  # children left behind, if any
        if self._socket is not None:
            self._socket.close()
            self._socket_path.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(timeout=30.0)


def wait_for_jobs(
    jobstore: Path | str,
    job_ids: Collection[int],
    states: Collection[JobState],
    *,
    timeout: float = 120.0,
    service: ServiceProcess | None = None,
) -> list[Job]:
    """Poll the job store until every job of ``job_ids`` is in one of ``states``.

    Raises:
        AssertionError: not in time (the jobs' states, and the service's log, are named).
    """
    deadline = time.monotonic() + timeout
    jobs: list[Job] = []
    while time.monotonic() < deadline:
        with JobStore(jobstore, read_only=True) as store:
            jobs = [store.job(job_id) for job_id in job_ids]
        if all(job.state in states for job in jobs):
            return jobs
        if service is not None and service.exited():
            break
        time.sleep(0.2)
    found = {job.id: (job.state.value, job.detail) for job in jobs}
    log = "" if service is None else service.log_text()[-4000:]
    raise AssertionError(f"jobs not {sorted(states)} within {timeout:g} s: {found}\n{log}")
