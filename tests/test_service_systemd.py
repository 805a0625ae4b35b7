"""sd_notify as systemd hears it: a real AF_UNIX datagram socket stands in for NOTIFY_SOCKET.

Each test binds its own socket (a file in ``tmp_path``, or an abstract ``@name``), points a
:class:`~pacsman.service.systemd.Notifier` at it, and reads back the datagrams in order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from pacsman.service.systemd import STATUS_MAX, Notifier, credential_path


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound at a path in ``tmp_path``: (the socket, its NOTIFY_SOCKET)."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5.0)
        yield sock, str(path)


def _received(sock: socket.socket, count: int) -> list[list[str]]:
    """The next ``count`` datagrams, each as its list of ``KEY=value`` lines."""
    return [sock.recv(4096).decode("utf-8").split("\n") for _ in range(count)]


def _environ(notify_socket: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notify_socket, **extra}


def test_messages_arrive_in_order(sink: tuple[socket.socket, str]) -> None:
    """READY, STATUS, WATCHDOG, RELOADING + READY, EXTEND_TIMEOUT and STOPPING, in order,
    one datagram each."""
    sock, address = sink
    env = _environ(address, WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
    notifier = Notifier.from_environ(env)
    notifier.ready("0/0 series")
    notifier.status("412/1000 series, 3 retrying, PACS main 2/2 associations")
    notifier.watchdog()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    notifier.ready()
    notifier.extend_timeout(75)
    notifier.stopping("draining: 2 retrieves in flight")
    notifier.close()
    messages = _received(sock, 7)
    reloading = messages[3]
    assert reloading[0] == "RELOADING=1"
    stamp = int(reloading[1].removeprefix("MONOTONIC_USEC="))
    assert before <= stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert messages[:3] + messages[4:] == [
        ["READY=1", "STATUS=0/0 series"],
        ["STATUS=412/1000 series, 3 retrying, PACS main 2/2 associations"],
        ["WATCHDOG=1"],
        ["READY=1"],
        ["EXTEND_TIMEOUT_USEC=75000000"],
        ["STOPPING=1", "STATUS=draining: 2 retrieves in flight"],
    ]


def test_abstract_socket() -> None:
    """``@name`` in NOTIFY_SOCKET is the abstract address ``\\0name``."""
    name = f"pacsman-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        notifier = Notifier.from_environ(_environ("@" + name))
        notifier.ready()
        notifier.stopping()
        assert _received(sock, 2) == [["READY=1"], ["STOPPING=1"]]


def test_status_is_one_capped_line(sink: tuple[socket.socket, str]) -> None:
    """Newlines and tabs become spaces; a long status is cut to STATUS_MAX characters."""
    sock, address = sink
    notifier = Notifier(address)
    notifier.status("412/1000 series\n3 retrying\tPACS main " + "x" * 500)
    (message,) = _received(sock, 1)
    assert len(message) == 1
    text = message[0].removeprefix("STATUS=")
    assert text.startswith("412/1000 series 3 retrying PACS main xxx")
    assert text.endswith("...")
    assert len(text) == STATUS_MAX


def test_no_socket_is_a_no_op() -> None:
    """Outside systemd every message is a no-op and nothing is logged."""
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "60000000"})
    with capture_logs() as logs:
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.extend_timeout(10)
        notifier.stopping()
    assert (
        notifier.enabled,
        notifier.watchdog_interval(),
        notifier.notify("READY=1"),
        logs,
    ) == (False, None, False, [])


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", "self", 30.0),
        ("60000000", None, 30.0),
        ("3000000", "self", 1.5),
        ("60000000", "other", None),
        ("0", "self", None),
        ("sixty", "self", None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    """Half of WATCHDOG_USEC, and only when WATCHDOG_PID is unset or this process."""
    env = _environ("/run/systemd/notify")
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid() if pid == "self" else os.getpid() + 1)
    assert expected == Notifier.from_environ(env).watchdog_interval()


def test_watchdog_is_silent_without_watchdog_usec(sink: tuple[socket.socket, str]) -> None:
    """WATCHDOG=1 is sent only when systemd asked for it."""
    sock, address = sink
    notifier = Notifier.from_environ(_environ(address))
    notifier.watchdog()
    notifier.ready()
    assert _received(sock, 1) == [["READY=1"]]


def test_children_do_not_inherit_the_socket(
    sink: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_environ takes NOTIFY_SOCKET and WATCHDOG_* out of os.environ: a child process
    (the de-identify/push process) cannot speak for the service."""
    sock, address = sink
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environ()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; print(sorted(k for k in os.environ if "
            "k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID')))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert child.stdout.strip() == "[]"
    assert notifier.watchdog_interval() == 30.0
    notifier.watchdog()
    assert _received(sock, 1) == [["WATCHDOG=1"]]


def test_send_error_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    """A socket nobody listens on: the service goes on; one warning, then debug only."""
    notifier = Notifier(str(tmp_path / "gone.sock"))
    structlog.reset_defaults()  # debug events too, whatever an earlier test configured
    with capture_logs() as logs:
        notifier.ready()
        notifier.watchdog()
        notifier.status("still here")
    failures = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert [e["log_level"] for e in failures] == ["warning", "debug"]
    assert str(tmp_path / "gone.sock") == failures[0]["notify_socket"]


def test_unsupported_address_is_reported_and_off() -> None:
    """A relative path is no socket systemd gives: one warning, notifications off."""
    with capture_logs() as logs:
        notifier = Notifier.from_environ(_environ("relative/notify"))
    assert not notifier.enabled
    assert [e["event"] for e in logs] == ["sd_notify_unsupported"]


def test_credential_path(tmp_path: Path) -> None:
    """A LoadCredential= file is found in $CREDENTIALS_DIRECTORY, and only there."""
    (tmp_path / "pacsman-http-token").write_text("t0ken\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert tmp_path / "pacsman-http-token" == credential_path("pacsman-http-token", env)
    assert None is credential_path("xnat", env)
    assert None is credential_path("../pacsman-http-token", env)
    assert None is credential_path("pacsman-http-token", {})
