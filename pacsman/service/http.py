"""The service's HTTP server: the JSON API, health and metrics, and the page for people.

:func:`make_app` builds the Starlette application over a :class:`ServiceView`;
:class:`HttpServer` runs it with uvicorn in a daemon thread (its own event loop, no signal
handlers: the service owns signals).  Starlette runs the plain endpoints in its thread pool,
where they read the thread-safe job store; the page is rendered on the server with Jinja2,
autoescaped.

Routes (JSON unless said)::

    GET  /healthz                    200: the process is alive (never needs the token)
    GET  /readyz                     200 ready / 503 not, with each check and problem
    GET  /metrics                    Prometheus text (404 when the service has none)
    GET  /api/jobs                   every job, newest first, with counts per stage
    POST /api/jobs                   multipart: file + save, anonymize, push, nifti, pacs,
                                     sheet, encoding, priority, name -> 201; 400 bad option;
                                     422 bad query file (every located problem)
    GET  /api/jobs/{id}              one job: counts per stage, progress, rates, ETA
    GET  /api/jobs/{id}/rows         each row's state and reasons per stage
    POST /api/jobs/{id}/{action}     cancel, pause, resume, retry-failed -> 200; 404; 409
    GET  /  and  /jobs/{id}          the page (HTML); POST /jobs is its upload form
    GET|POST /login, POST /logout    the browser's sign-in with the token

Every request passes :class:`_Guard` first (the rules are in :mod:`pacsman.service.security`).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacsman.config.serve import HttpConfig
from pacsman.errors import FatalError
from pacsman.jobstore.jobs import MAX_QUERYFILE_BYTES
from pacsman.service import _webapi as api
from pacsman.service import _webpage as pages
from pacsman.service import security
from pacsman.service._webjson import ProgressCache
from pacsman.service.security import Access, load_token
from pacsman.service.state import ServiceView

__all__ = ["HttpServer", "load_token", "make_app"]

_log = structlog.get_logger("pacsman.service.http")

#: The largest request body: a query file as large as a job may carry, and the form around it.
MAX_BODY_BYTES = MAX_QUERYFILE_BYTES + (1 << 20)
#: Paths answered as JSON (the rest are pages for people).
_JSON_PATHS = ("/api/", "/readyz", "/metrics", "/healthz")
#: Paths open without the token even where it is required (signing in needs the form).
_OPEN_PATHS = ("/healthz", "/login")
_SAFE_METHODS = ("GET", "HEAD")


def make_app(
    view: ServiceView,
    *,
    token: str | None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    token_required: bool | None = None,
) -> Starlette:
    """The service's HTTP application.

    ``token_required`` overrides the rule of the config (off loopback, or behind a proxy):
    tests use it to make 127.0.0.2 stand for another address.

    Raises:
        InputError: the token is required and ``token`` is None.
    """
    http = view.config.serve.http
    required = security.token_required(http) if token_required is None else token_required
    security.check_token_configured(http, token, required=required)
    secure = http.cert is not None or http.behind_proxy
    page = pages.Page.load(token_set=token is not None, token_required=required, secure=secure)
    guard = Middleware(_Guard, http=http, token=token, required=required, csp=page.csp)
    app = Starlette(routes=_routes(), middleware=[guard], exception_handlers={500: _failed})
    app.state.web = api.Web(view, metrics, ProgressCache())
    app.state.page = page
    app.state.token = token
    return app


def _routes() -> list[Route]:
    job = "/api/jobs/{job_id:int}"
    return [
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/api/jobs", api.api_jobs, methods=["GET"]),
        Route("/api/jobs", api.api_submit, methods=["POST"]),
        Route(job, api.api_job),
        Route(f"{job}/rows", api.api_rows),
        Route(job + "/{action:str}", api.api_action, methods=["POST"]),
        Route("/", pages.index),
        Route("/jobs", pages.form_submit, methods=["POST"]),
        Route("/jobs/{job_id:int}", pages.job_page),
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
    ]


def _failed(request: Request, exc: Exception) -> Response:
    """An unexpected error: logged by type (its text may hold anything), 500 for the client."""
    _log.error("http_request_failed", path=request.url.path, error=type(exc).__name__)
    _log.debug("http_request_failed_traceback", exc_info=exc)
    return JSONResponse({"error": "internal error; the service's log has it"}, status_code=500)


# -- the guard: who is asking, may they, and the headers every answer carries -------------------


class _TooLarge(Exception):
    """The request body is larger than :data:`MAX_BODY_BYTES`."""


class _Guard:
    """Checks every request against the rules of :mod:`pacsman.service.security`, records
    how it proved itself (``request.state.access``), adds the security headers, and logs it
    (``http_request``, at debug level: method, path without the query string, status)."""

    def __init__(
        self, app: ASGIApp, *, http: HttpConfig, token: str | None, required: bool, csp: str
    ) -> None:
        self.app = app
        self.http = http
        self.token = token
        self.required = required
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        request = Request(scope)
        refusal, access = self._check(request)
        try:
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
            else:
                scope.setdefault("state", {})["access"] = access
                await self.app(scope, _limited(receive), send_with_headers)
        except _TooLarge:
            if not status[0]:
                too_large = _refuse(
                    request, 413, f"the request is larger than {MAX_BODY_BYTES} bytes"
                )
                await too_large(scope, receive, send_with_headers)
        finally:
            _log.debug(
                "http_request",
                method=request.method,
                path=request.url.path,
                status=status[0],
                access=access.value if access else "refused",
                ms=round(1000 * (time.monotonic() - started), 1),
            )

    def _check(self, request: Request) -> tuple[Response | None, Access | None]:
        """A refusal (or None) and how the request proved itself."""
        path = request.url.path
        if path == "/healthz":
            return None, Access.ANONYMOUS
        headers = request.headers
        if not self.required:
            problem = security.host_problem(headers.get("host", ""), self.http)
            if problem is not None:
                return _refuse(request, 403, problem), None
        access = security.authenticate(headers, request.cookies, self.token)
        if access is None:
            return _unauthorized(request, "that is not the service's API token"), None
        if self.required and access is Access.ANONYMOUS and path not in _OPEN_PATHS:
            return _unauthorized(request, "this service needs the API token"), None
        if request.method not in _SAFE_METHODS and access is not Access.TOKEN:
            problem = security.cross_site_problem(headers)
            if problem is not None:
                return _refuse(request, 403, problem), access
        if _length(headers.get("content-length", "")) > MAX_BODY_BYTES:
            return _refuse(
                request, 413, f"the request is larger than {MAX_BODY_BYTES} bytes"
            ), access
        return None, access


def _length(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def _limited(receive: Receive) -> Receive:
    """``receive``, raising :class:`_TooLarge` past :data:`MAX_BODY_BYTES` (a chunked body
    has no Content-Length to refuse it by)."""
    seen = [0]

    async def read() -> Message:
        message = await receive()
        seen[0] += len(message.get("body", b""))
        if seen[0] > MAX_BODY_BYTES:
            raise _TooLarge
        return message

    return read


def _is_json(request: Request) -> bool:
    return request.url.path.startswith(_JSON_PATHS)


def _refuse(request: Request, status: int, message: str) -> Response:
    if _is_json(request):
        return JSONResponse({"error": message}, status_code=status)
    text = f"{status}: {message}\n"
    return Response(text, status_code=status, media_type="text/plain; charset=utf-8")


def _unauthorized(request: Request, message: str) -> Response:
    """401: JSON with ``WWW-Authenticate: Bearer`` for the API, the sign-in form for pages."""
    if _is_json(request):
        fix = f"{message}; send it as 'Authorization: Bearer TOKEN'"
        answer: Response = JSONResponse({"error": fix}, status_code=401)
    else:
        request.scope.setdefault("state", {})["access"] = Access.ANONYMOUS
        answer = pages.login_page(request, status=401, error=message.capitalize() + ".")
    answer.headers["www-authenticate"] = 'Bearer realm="pacsman"'
    return answer


# -- the server ----------------------------------------------------------------------------------


class _UvicornBridge(logging.Handler):
    """uvicorn's own log records (warnings and up) as structlog ``uvicorn`` events, without
    tracebacks (the app logs its failures itself)."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger("uvicorn")
        method = log.error if record.levelno >= logging.ERROR else log.warning
        method("uvicorn", message=record.getMessage().splitlines()[0][:300])


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn")
    logger.propagate = False
    if not any(isinstance(h, _UvicornBridge) for h in logger.handlers):
        logger.addHandler(_UvicornBridge())
    for name in ("uvicorn.error", "uvicorn.asgi"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


def _listen(http: HttpConfig) -> socket.socket:
    """A listening socket on ``serve.http.bind``/``port`` (port 0: one the OS picks).

    Raises:
        FatalError: the address cannot be bound; the message names the key and the fix.
    """
    family = socket.AF_INET6 if ":" in http.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((http.bind, http.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FatalError(
                f"serve.http.port {http.port} on {http.bind} is in use; stop what listens "
                f"there (ss -ltnp 'sport = :{http.port}' shows it) or set serve.http.port "
                "to a free port"
            ) from None
        raise FatalError(
            f"serve.http.bind {http.bind} port {http.port}: cannot listen there "
            f"({exc.strerror or exc}); set serve.http.bind to an address of this machine "
            "(127.0.0.1 by default)"
        ) from None
    return sock


class HttpServer:
    """uvicorn serving ``app`` on ``http.bind``/``http.port`` in a daemon thread (HTTPS when
    ``http.cert``/``key`` are set).  A context manager: ``__enter__`` returns once it
    listens; ``__exit__`` stops it within a few seconds."""

    def __init__(self, app: ASGIApp, http: HttpConfig, *, start_timeout: float = 10.0) -> None:
        self.http = http
        self._app = app
        self._start_timeout = start_timeout
        self._socket: socket.socket | None = None
        self._port = http.port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose when ``http.port`` is 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the server."""
        scheme = "https" if self.http.cert is not None else "http"
        host = self.http.bind
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def __enter__(self) -> Self:
        """Bind, start, and wait (bounded) until it serves.

        Raises:
            FatalError: the port is in use, the TLS files cannot be loaded, or it did not
                start within ``start_timeout`` seconds.
        """
        config = self._config()
        self._socket = _listen(self.http)
        self._port = int(self._socket.getsockname()[1])
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=self._run, name="pacsman-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.01)
        if not server.started:
            self._stop()
            why = f": {self._error}" if self._error else f" within {self._start_timeout} s"
            raise FatalError(f"the HTTP server on {self.url} did not start{why}")
        _log.info("http_started", url=self.url)
        return self

    def _config(self) -> uvicorn.Config:
        http = self.http
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            proxy_headers=False,  # X-Forwarded-* are not trusted; see security.py
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(http.cert) if http.cert else None,
            ssl_keyfile=str(http.key) if http.key else None,
        )
        _quiet_uvicorn()
        try:
            config.load()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise FatalError(
                f"serve.http.cert {http.cert} / key {http.key}: cannot load them ({exc}); "
                "give a PEM certificate and its unencrypted PEM key"
            ) from None
        return config

    def _run(self) -> None:
        assert self._server is not None
        assert self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by __enter__, or logged
            self._error = exc
            _log.error("http_stopped", error=type(exc).__name__, detail=str(exc)[:300])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self, timeout: float = 4.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(2.0)
        if self._socket is not None:
            self._socket.close()
        self._server, self._thread, self._socket = None, None, None
        _log.info("http_stopped", port=self.port)
