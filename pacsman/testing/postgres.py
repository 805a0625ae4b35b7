"""Start Debian's PostgreSQL on a free localhost port for a test, in a throw-away folder.

``initdb`` and ``postgres`` come from ``/usr/lib/postgresql/<version>/bin`` (the highest
version installed).  ``initdb`` refuses to run as root, and CI runs as root: there both run as
Debian's ``postgres`` user through ``runuser -u postgres --``, in a folder under the system
temporary directory that is chowned to that user (pytest's ``tmp_path`` is root-only 0700, so
it cannot be used).  Run as any other user, they run as that user.  The server listens on
127.0.0.1 only, keeps its unix socket in the same folder, trusts every local connection and
runs with ``fsync`` off: data is thrown away at the end, so speed wins over durability.

Usage::

    with PostgresServer() as postgres:
        postgres.create_database("jobs")
        with psycopg.connect(postgres.dsn("jobs")) as connection:
            ...
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from pacsman.closing import Started
from pacsman.testing.net import free_port

__all__ = [
    "POSTGRES_ROOT",
    "PostgresError",
    "PostgresNotInstalledError",
    "PostgresServer",
    "PostgresStartError",
    "find_postgres_bin",
    "postgres_available",
]

POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_USER = "postgres"
_TOOLS = ("initdb", "postgres", "pg_isready", "psql")
_INSTALL_HINT = "install it with `apt-get install postgresql` (scripts/install.sh does)"
_PORT_IN_USE = "Address already in use"
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_POLL_SECONDS = 0.05
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class PostgresError(RuntimeError):
    """The test PostgreSQL failed; the message names the command or the state."""


class PostgresNotInstalledError(PostgresError):
    """Debian's PostgreSQL (or its ``postgres`` user) is missing; the message says how to fix."""


class PostgresStartError(PostgresError):
    """PostgreSQL did not come up; the message ends with the tail of its log."""


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> ``(15,)``; unparsable versions sort first."""
    parts = bin_dir.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def find_postgres_bin(root: Path = POSTGRES_ROOT) -> Path:
    """Return the ``bin`` folder of the highest PostgreSQL version under ``root``.

    Raises:
        PostgresNotInstalledError: if no version there has all of initdb, postgres, pg_isready
            and psql, or (when running as root) Debian's ``postgres`` user or ``runuser`` is
            missing; the message names what is missing and how to install it.
    """
    candidates = sorted((p.parent for p in root.glob("*/bin/initdb")), key=_version_key)
    if not candidates:
        raise PostgresNotInstalledError(
            f"PostgreSQL is not installed: no {root}/*/bin/initdb; {_INSTALL_HINT}"
        )
    bin_dir = candidates[-1]
    missing = [tool for tool in _TOOLS if not os.access(bin_dir / tool, os.X_OK)]
    if missing:
        raise PostgresNotInstalledError(
            f"PostgreSQL in {bin_dir} lacks {', '.join(missing)}; {_INSTALL_HINT}"
        )
    if os.geteuid() == 0:
        _check_runuser()
    return bin_dir


def _check_runuser() -> None:
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise PostgresNotInstalledError(
            f"user {POSTGRES_USER!r} does not exist (initdb refuses to run as root); "
            f"Debian's postgresql package creates it: {_INSTALL_HINT}"
        ) from None
    if shutil.which("runuser") is None:
        raise PostgresNotInstalledError(
            "runuser is not on PATH (needed to run initdb as 'postgres' when root); "
            "install it with `apt-get install util-linux`"
        )


def postgres_available(root: Path = POSTGRES_ROOT) -> bool:
    """Return whether a test PostgreSQL can start here (for skip markers); when not,
    :func:`find_postgres_bin` raises with the reason."""
    try:
        find_postgres_bin(root)
    except PostgresNotInstalledError:
        return False
    return True


class PostgresServer(Started):
    """A throw-away PostgreSQL cluster in a temporary folder, started and stopped by the test.

    ``settings`` are extra server settings (``-c name=value``), applied after the defaults
    (listen on 127.0.0.1 only, ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off).
    The superuser is ``postgres``; every local connection is trusted, so no password is used.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        root: Path = POSTGRES_ROOT,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        start_attempts: int = 3,
    ) -> None:
        self._settings = {**_SETTINGS, **(settings or {})}
        self._root = root
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._start_attempts = start_attempts
        self._bin: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self.port = 0

    # -- where things are --------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The temporary folder (owned by ``postgres`` when root) with data, socket and log.

        Raises:
            PostgresError: if the server is not started.
        """
        if self._workdir is None:
            raise PostgresError("PostgreSQL is not started; call start() or use it as a context")
        return self._workdir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``initdb -D``)."""
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        """The folder of the unix socket (``-k``): the work folder itself."""
        return self.workdir

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        return self.workdir / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        """``/usr/lib/postgresql/<version>/bin`` of the running server."""
        if self._bin is None:
            raise PostgresError("PostgreSQL is not started; call start() or use it as a context")
        return self._bin

    def dsn(self, database: str = "postgres", user: str = POSTGRES_USER) -> str:
        """Return ``postgresql://user@127.0.0.1:port/database`` (no password: trust auth)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the cluster, start the server and wait until it accepts connections.

        Raises:
            PostgresNotInstalledError: if PostgreSQL is not installed.
            PostgresStartError: if initdb fails, or the server exits or is not ready in time;
                ends with its log.
        """
        if self._process is not None:
            return self
        self._bin = find_postgres_bin(self._root)
        self._workdir = _make_workdir()
        try:
            self._initdb()
            for _ in range(self._start_attempts):
                if self._try_start():
                    return self
            raise PostgresStartError(
                f"PostgreSQL found no free port in {self._start_attempts} attempts\n"
                f"{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown, then immediate, then kill) and delete its folder."""
        process, self._process = self._process, None
        if process is not None:
            self._shut_down(process)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the server's log (empty if there is none)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, PostgresError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def create_database(self, name: str) -> None:
        """Create database ``name`` (lower-case letters, digits and ``_``), owned by postgres.

        Raises:
            ValueError: if ``name`` is not such an identifier.
            PostgresError: if psql fails; the message has its output.
        """
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(
                f"database name {name!r} is not allowed; use lower-case letters, digits and "
                "'_' (at most 63, not starting with a digit)"
            )
        self.psql(f'CREATE DATABASE "{name}"')

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` with psql as ``postgres`` over TCP; return its unaligned output.

        Raises:
            PostgresError: if psql fails; the message has the statement and psql's output.
        """
        command = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-d", self.dsn(database), "-c", sql]
        result = _run(command, timeout=self._start_timeout)
        if result.returncode != 0:
            raise PostgresError(f"psql {sql!r} failed ({result.returncode}): {result.stdout}")
        return result.stdout

    # -- internals ---------------------------------------------------------------------------

    def _initdb(self) -> None:
        command = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", POSTGRES_USER]
        command += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        result = _run(_as_postgres(command), timeout=self._start_timeout, cwd=self.workdir)
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed ({result.returncode}):\n{result.stdout}")

    def _try_start(self) -> bool:
        """Launch once on a fresh port; False if the port was taken (caller retries)."""
        self.port = free_port(self.host)
        self._process = self._spawn()
        if self._wait_ready(self._process):
            return True
        if self._process.poll() is None:
            raise PostgresStartError(
                f"PostgreSQL not ready within {self._start_timeout} s on port {self.port}\n"
                f"{self.log_tail()}"
            )
        self._process = None
        if _PORT_IN_USE in self.log_tail():
            return False
        raise PostgresStartError(f"PostgreSQL exited during start-up\n{self.log_tail()}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        command += ["-p", str(self.port), "-k", str(self.socket_dir)]
        for name, value in self._settings.items():
            command += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                _as_postgres(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(),
                cwd=self.workdir,
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Poll pg_isready until ready (True), the process exits or the deadline passes."""
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._accepts_connections():
                return True
            try:
                process.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
            return False
        return False

    def _accepts_connections(self) -> bool:
        """pg_isready exits 0 only once the server accepts connections (not while starting)."""
        command = [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        return _run([*command, "-t", "1"], timeout=5.0).returncode == 0

    def _shut_down(self, process: subprocess.Popen[bytes]) -> None:
        """SIGINT (fast shutdown) to the postmaster, SIGQUIT (immediate) if it lingers, then
        SIGKILL.  The child may be ``runuser``, so the postmaster's PID comes from its file."""
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            postmaster = self._postmaster_pid()
            if postmaster is not None:
                _signal(postmaster, sig)
            if sig is signal.SIGKILL:
                process.kill()
            try:
                process.wait(timeout=self._stop_timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text(encoding="ascii").split("\n")[0]
        except (OSError, UnicodeDecodeError):
            return None
        return int(first) if first.strip().isdigit() else None


def _make_workdir() -> Path:
    """A 0700 folder under the system temp dir, owned by ``postgres`` when we are root."""
    workdir = Path(tempfile.mkdtemp(prefix="pacsman-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(POSTGRES_USER)
        os.chown(workdir, user.pw_uid, user.pw_gid)
    return workdir


def _as_postgres(command: list[str]) -> list[str]:
    """Prefix ``runuser -u postgres --`` when root (initdb and postgres refuse root)."""
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


def _environment() -> dict[str, str]:
    """The caller's environment without PG* variables (they would redirect psql and initdb)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    command: list[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
