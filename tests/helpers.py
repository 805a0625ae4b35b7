"""Small helpers shared by the integration tests: config and query files, a TCP tripwire,
killing a process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacsman.testing.net import wait_for


def write_config(
    directory: Path,
    *,
    port: int,
    called_ae_title: str,
    node: str = "orthanc",
    extra_node: str = "",
    local_ae_title: str = "PACSMAN",
    local_port: int | None = None,
    extra: str = "",
) -> Path:
    """Write a minimal pacsman config for one PACS node into ``directory``.

    ``local_port`` is the port of pacsman's own Storage SCP (the C-MOVE destination);
    ``extra`` is YAML appended at the top level (e.g. ``xnat:`` and ``push:`` sections).
    """
    node_extra = textwrap.indent(textwrap.dedent(extra_node).strip(), " " * 4)
    port_line = "" if local_port is None else f"\n  port: {local_port}"
    text = f"""\
local:
  ae_title: {local_ae_title}{port_line}
pacs:
  {node}:
    host: 127.0.0.1
    port: {port}
    called_ae_title: {called_ae_title}
{node_extra}
store_root: {directory}/data
jobstore: {directory}/jobs.sqlite
"""
    path = directory / "pacsman.yaml"
    path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
    return path


def write_queryfile(directory: Path, text: str, name: str = "q.csv") -> Path:
    """Write a query CSV (dedented) into ``directory``."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@contextmanager
def tcp_tripwire() -> Iterator[tuple[int, list[str]]]:
    """A listening socket on an OS-chosen port that records every connection attempt.

    Yields ``(port, hits)``; ``hits`` is filled when the block exits.
    """
    hits: list[str] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    try:
        yield server.getsockname()[1], hits
        while True:
            try:
                conn, addr = server.accept()
            except BlockingIOError:
                break
            hits.append(f"{addr[0]}:{addr[1]}")
            conn.close()
    finally:
        server.close()


def kill_process_group(process: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    """SIGKILL every process in ``process``'s group (it must lead it: ``start_new_session``),
    then wait until none of them is left running (zombies awaiting a reaper do not count).

    Raises:
        TimeoutError: a member still runs after ``timeout`` seconds.
    """
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGKILL)
    process.wait(timeout=timeout)
    wait_for(lambda: not _group_running(group), timeout=timeout, what=f"group {group} to die")


def _group_running(group: int) -> bool:
    """True while a process of ``group`` runs (read from /proc; a zombie is not running)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text.rpartition(")")[2].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False
