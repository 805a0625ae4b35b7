"""Small socket helpers for tests: free ports on 127.0.0.1 and waiting on conditions.

Tests never use fixed ports or fixed sleeps: they bind port 0, and wait on a condition with a
deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

__all__ = ["accepts_tcp", "free_port", "wait_for"]

_POLL_SECONDS = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts_tcp(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """Return whether ``host:port`` accepts a TCP connection right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; give up after ``timeout`` seconds.

    Raises:
        TimeoutError: naming what was awaited and for how long.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(_POLL_SECONDS)
