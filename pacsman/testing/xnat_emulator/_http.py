"""HTTP plumbing: parse a request (including chunked bodies), send a response, drop a connection.

Nothing here knows XNAT; :class:`Handler` passes each :class:`Request` to the server's
``app`` callable and writes back the :class:`Response` it returns.
"""

from __future__ import annotations

import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["HttpServer", "Request", "Response", "status_page"]

_SPOOL_BYTES = 4 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024


@dataclass
class Request:
    """One HTTP request. ``path`` is normalised (``/data/archive/`` -> ``/data/``, ``/REST/``
    -> ``/data/``); ``segments`` are its unquoted parts; ``query`` keeps the last value per key.
    """

    method: str
    target: str
    path: str
    segments: tuple[str, ...]
    query: dict[str, str]
    headers: Message
    body: IO[bytes]
    client: str
    user: str | None = None

    def body_bytes(self) -> bytes:
        """The whole body (only for small bodies: forms, JSON)."""
        self.body.seek(0)
        return self.body.read()

    def save_body(self, path: Path) -> int:
        """Copy the body to ``path`` and return its size."""
        self.body.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(self.body, out, _COPY_CHUNK)
            return out.tell()

    def cookie(self, name: str) -> str | None:
        """The value of a request cookie, if sent."""
        for header in self.headers.get_all("Cookie") or []:
            for part in header.split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value.strip('"')
        return None


@dataclass
class Response:
    """What to answer. ``stream`` (with ``length``) is sent after ``body`` and then closed;
    ``drop`` closes the connection without answering at all.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain;charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: IO[bytes] | None = None
    length: int = 0
    drop: bool = False


def status_page(message: str) -> bytes:
    """Restlet's HTML status page, with XNAT's message in ``<h3>`` (contract §1.9)."""
    text = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{text}</h3>\n<p>You can get technical details "
        '<a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n</p>\n</body>\n</html>\n'
    ).encode()


def _normalise(path: str) -> str:
    for alias in ("/data/archive/", "/REST/"):
        if path.startswith(alias):
            return "/data/" + path[len(alias) :]
    return "/data" if path == "/data/archive" else path


class HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that hands every request to ``app``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: Callable[[Request], Response]) -> None:
        super().__init__(address, Handler)
        self.app = app

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Stay quiet when a client goes away (killed mid-upload); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Turns raw HTTP into :class:`Request` and :class:`Response` into raw HTTP."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately; no 40 ms stalls
    server: HttpServer

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the emulator keeps its own request log."""

    def do_GET(self) -> None:
        """Serve GET."""
        self._serve("GET")

    def do_HEAD(self) -> None:
        """Serve HEAD (as GET, without the body)."""
        self._serve("HEAD")

    def do_PUT(self) -> None:
        """Serve PUT."""
        self._serve("PUT")

    def do_POST(self) -> None:
        """Serve POST."""
        self._serve("POST")

    def do_DELETE(self) -> None:
        """Serve DELETE."""
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as body:
            self._read_body(body)
            request = self._request(method, body)
            response = self.server.app(request)
            if response.drop:
                self._drop()
                return
            try:
                self._send(response, head=method == "HEAD")
            finally:
                if response.stream is not None:
                    response.stream.close()

    def _request(self, method: str, body: IO[bytes]) -> Request:
        parts = urlsplit(self.path)
        path = _normalise(parts.path)
        segments = tuple(unquote(s) for s in path.split("/") if s)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        return Request(
            method, self.path, path, segments, query, self.headers, body, self.client_address[0]
        )

    def _read_body(self, body: IO[bytes]) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._read_chunked(body)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, _COPY_CHUNK))
                if not chunk:
                    raise ConnectionAbortedError("the client closed the connection mid-body")
                body.write(chunk)
                remaining -= len(chunk)
        body.seek(0)

    def _read_chunked(self, body: IO[bytes]) -> None:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            while size > 0:
                chunk = self.rfile.read(min(size, _COPY_CHUNK))
                if not chunk:
                    raise ConnectionAbortedError("the client closed the connection mid-body")
                body.write(chunk)
                size -= len(chunk)
            self.rfile.readline()
        while self.rfile.readline().strip():
            pass  # trailers

    def _send(self, response: Response, *, head: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body) + response.length))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        self.wfile.write(response.body)
        if response.stream is not None:
            shutil.copyfileobj(response.stream, self.wfile, _COPY_CHUNK)

    def _drop(self) -> None:
        """Close the connection with a TCP reset and no answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
