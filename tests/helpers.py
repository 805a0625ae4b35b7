"""Small helpers shared by the integration tests (config files, query files, a TCP tripwire)."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_config(
    directory: Path,
    *,
    port: int,
    called_ae_title: str,
    node: str = "orthanc",
    extra_node: str = "",
    local_ae_title: str = "PACSMAN",
) -> Path:
    """Write a minimal pacsman config for one PACS node into ``directory``."""
    node_extra = textwrap.indent(textwrap.dedent(extra_node).strip(), " " * 4)
    text = f"""\
local:
  ae_title: {local_ae_title}
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
    path.write_text(text, encoding="utf-8")
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
