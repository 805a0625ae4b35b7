"""The one ``xnat`` client connection of a run: connect, disconnect, and what its errors mean.

Every login starts with a probe in plain ``requests`` (:func:`logged_in`): ``GET /data/auth``
with the credentials, so that XNAT's own status decides, which ``xnat.connect`` hides (it
says "a problem logging in" for a 401, a 404 and a 503 alike).  A 401, 403 or 404 there is
permanent (:class:`FatalError`: wrong credentials, no permission, no XNAT at this URL); a
refused connection, a timeout or a 5xx is :class:`TransientError`.  While XNAT does not
answer, the wait is announced (``xnat_not_answering``) after 5 s and then every 10 s, until
the timeout.  The pre-flight (:func:`pacsman.push.xnat.check_xnat`) uses the same probe
and treats every failure as final.

:func:`classify` turns what ``xnat``/``requests`` raise into pacsman's decisions: timeouts,
resets, 408/429/5xx are :class:`TransientError`; 401 mid-run means the login session expired
(:class:`SessionExpired`, reconnect then retry); a refused login, 403 or an untrusted TLS
certificate are :class:`FatalError`; other 4xx fail the item.  Messages quote XNAT's
``<h3>`` text, never credentials.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import structlog
import xnat
import xnat.session
from xnat import exceptions as xnat_errors

from pacsman.config.push import XnatConfig
from pacsman.errors import FatalError, ItemFailed, PacsmanError, TransientError
from pacsman.push.credentials import Credentials

__all__ = [
    "ANSWER_TIMEOUT",
    "Rest",
    "SessionExpired",
    "answer_error",
    "classify",
    "connect",
    "disconnect",
    "http_status",
    "logged_in",
    "waiting_for",
]

#: xnatpy's own messages go through logging, quietly (it never logs passwords).
_XNATPY_LOG = logging.getLogger("pacsman.push.xnatpy")
_XNATPY_LOG.setLevel(logging.WARNING)
_log = structlog.get_logger("pacsman.push.xnat")
_CA_LOCK = threading.Lock()
_PILOT_TIMEOUT = 30.0
#: Seconds XNAT has to answer one request of the login probe (a port that accepts and never
#: answers is given up after this long); the TCP connect has at most _TCP_TIMEOUT of it.
ANSWER_TIMEOUT = 20.0
_TCP_TIMEOUT = 10.0
_LOGOUT_TIMEOUT = 5.0
#: While XNAT does not answer: the first notice after this many seconds, then one every...
_FIRST_NOTICE = 5.0
_NOTICE_EVERY = 10.0
_REQUEST_TIMEOUT = 300.0
_STATUS = re.compile(r"[Ss]tatus code:? (\d{3})|\(status (\d{3})|\((\d{3})\)")
_H3 = re.compile(r"<h[13]>(.*?)</h[13]>", re.S)
_LOGIN_REFUSED = re.compile(r"(?i)authentication failed|login attempt failed|credentials")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class SessionExpired(TransientError):
    """XNAT answered 401 mid-run: the login session expired; reconnect, then retry."""


_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _tls_setting(config: XnatConfig) -> str | bool | None:
    """What ``requests`` must verify against: a CA file, nothing (False), or its default."""
    if config.ca_bundle is not None:
        return str(config.ca_bundle)
    return None if config.verify_tls else False


@contextmanager
def _login_tls(setting: str | bool | None) -> Iterator[None]:
    """Make xnatpy's login honour ``setting`` (it takes no CA path, and ``requests`` lets
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's own choice)."""
    if setting is None:
        yield
        return
    with _CA_LOCK:
        saved = {name: os.environ.pop(name, None) for name in _CA_VARIABLES}
        if isinstance(setting, str):
            os.environ["REQUESTS_CA_BUNDLE"] = setting
        try:
            yield
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value


def _pin_tls(interface: requests.Session, setting: str | bool | None) -> None:
    """Make every later request verify against ``setting``, whatever the environment says."""
    if setting is None:
        return
    merge = interface.merge_environment_settings

    def pinned(*args: Any, **kwargs: Any) -> Any:
        settings = merge(*args, **kwargs)
        settings["verify"] = setting
        return settings

    setattr(interface, "merge_environment_settings", pinned)  # noqa: B010 - this session only


def connect(config: XnatConfig, credentials: Credentials) -> Any:
    """Log in to ``config.url`` and return the ``xnat`` connection (one per run; reuse it).

    The login is probed first (:func:`logged_in`), so XNAT's own status decides.

    Raises:
        FatalError: the login was refused (401, 403), there is no XNAT REST API at the URL
            (404, or an answer XNAT would not give), or the TLS certificate is not trusted.
        TransientError: XNAT (or its proxy) did not answer, or answered 5xx.
    """
    url = config.url or ""
    if config.ca_bundle is not None and not config.ca_bundle.is_file():
        raise FatalError(f"xnat.ca_bundle {config.ca_bundle} is not a file; fix the path")
    with logged_in(config, credentials):
        pass
    setting = _tls_setting(config)
    try:
        with _login_tls(setting), waiting_for(url, "the login", _PILOT_TIMEOUT):
            connection = xnat.connect(
                url,
                user=credentials.user,
                password=credentials.password,
                verify=config.verify_tls,
                extension_types=False,
                logger=_XNATPY_LOG,
                default_timeout=_REQUEST_TIMEOUT,
                pilot_timeout=_PILOT_TIMEOUT,
            )
    except Exception as exc:  # xnatpy and requests raise many types: sort them here
        raise classify(exc, f"logging in to XNAT at {url} as {credentials}") from None
    _pin_tls(connection.interface, setting)
    return connection


# -- the login probe ----------------------------------------------------------------------------


@contextmanager
def waiting_for(
    url: str,
    what: str,
    timeout: float,
    *,
    first: float = _FIRST_NOTICE,
    every: float = _NOTICE_EVERY,
) -> Iterator[None]:
    """Announce, while the block runs, that XNAT has not answered ``what`` yet.

    A ``xnat_not_answering`` warning after ``first`` seconds (5), then every ``every`` (10),
    until the block ends (the request's own ``timeout`` ends it).  Nothing is said when XNAT
    answers in time.
    """
    done = threading.Event()
    started = time.monotonic()

    def announce() -> None:
        delay = first
        while not done.wait(delay) and time.monotonic() - started < timeout + every:
            waited = time.monotonic() - started
            _log.warning(
                "xnat_not_answering",
                url=url,
                request=what,
                waited_s=round(waited),
                timeout_s=timeout,
                message=f"XNAT at {url} has not answered {what} after {waited:.0f} s; "
                f"waiting up to {timeout:g} s",
            )
            delay = every

    thread = threading.Thread(target=announce, name="xnat-waiting", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class Rest:
    """A short-lived plain-HTTP session on XNAT's REST API, logged in by :func:`logged_in`.

    :meth:`get_json` answers like the ``xnat`` connection's, so the read-only helpers of
    :mod:`pacsman.push._xnat_state` work on it too.
    """

    def __init__(
        self, http: requests.Session, url: str, what: str, *, timeout: float, verify: str | bool
    ) -> None:
        self._http = http
        self.url = url
        self.what = what
        self.timeout = timeout
        self.verify = verify  # per request: REQUESTS_CA_BUNDLE would override the session's

    def get(self, path: str, params: Mapping[str, str] | None = None) -> requests.Response:
        """``GET url + path``; the wait is announced, the request bounded by the timeout.

        Raises:
            TransientError: no answer in time, or no connection.
            FatalError: the TLS certificate is not trusted.
        """
        return self.send("GET", path, params=params)

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """``method url + path`` (GET, POST, PUT, DELETE), announced and bounded as :meth:`get`;
        any status is returned (the caller decides what it means).

        Raises:
            TransientError: no answer in time, or no connection.
            FatalError: the TLS certificate is not trusted.
        """
        timeouts = (min(_TCP_TIMEOUT, self.timeout), self.timeout)
        try:
            with waiting_for(self.url, f"{method} {path}", self.timeout):
                return self._http.request(
                    method,
                    self.url + path,
                    params=params,
                    json=json,
                    data=data,
                    headers=dict(headers) if headers else None,
                    timeout=timeouts,
                    verify=self.verify,
                )
        except requests.exceptions.ReadTimeout:
            raise TransientError(
                f"{self.what}: XNAT accepted the connection but did not answer {method} {path} "
                f"within {self.timeout:g} s (is xnat.url the port of XNAT, not of another "
                "service?)"
            ) from None
        except requests.RequestException as exc:
            raise classify(exc, self.what) from None

    def get_json(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """``GET path?format=json`` decoded; any status but 200 raises.

        Raises:
            FatalError: 401, 403, 404 or another 4xx, or an answer that is not JSON.
            TransientError: no answer, or 408/429/5xx.
        """
        response = self.get(path, {**(query or {}), "format": "json"})
        if response.status_code != 200:
            raise _answer_error(response, f"{self.what}: GET {path}")
        try:
            return response.json()
        except ValueError:
            raise FatalError(
                f"{self.what}: GET {path} answered 200 but not with JSON "
                f"({_short(response.text, 80)!r}); {_URL_FIX}"
            ) from None

    def logout(self) -> None:
        """End the XNAT session, if XNAT opened one (a courtesy: failures are ignored)."""
        if self._http.cookies.get("JSESSIONID") is None:
            return
        with suppress(requests.RequestException):
            self._http.delete(
                f"{self.url}/data/JSESSION", timeout=_LOGOUT_TIMEOUT, verify=self.verify
            )

    def project_status(self, project: str) -> int:
        """The status of ``GET /data/projects/<project>``: 200 when the user can see it.

        Raises:
            TransientError, FatalError: as :meth:`get`.
        """
        return self.get(f"/data/projects/{quote(project, safe='')}", {"format": "json"}).status_code


_URL_FIX = (
    "xnat.url must be the address XNAT's web page opens at, with its path if it has one "
    "(e.g. https://xnat.example.org or https://host/xnat)"
)


@contextmanager
def logged_in(
    config: XnatConfig, credentials: Credentials, *, timeout: float = ANSWER_TIMEOUT
) -> Iterator[Rest]:
    """Probe the login (``GET /data/auth`` with the credentials) and yield the session.

    The session logs out (``DELETE /data/JSESSION``) when the block ends.  Every request
    waits at most ``timeout`` seconds for XNAT's answer.

    Raises:
        FatalError: 401, 403, 404 or another 4xx, an answer XNAT would not give, or an
            untrusted TLS certificate; the message names the URL, XNAT's words and the fix.
        TransientError: no connection, no answer within ``timeout``, or 408/429/5xx.
    """
    url = (config.url or "").rstrip("/")
    what = f"logging in to XNAT at {url} as {credentials}"
    setting = _tls_setting(config)
    with requests.Session() as http:
        http.auth = (credentials.user, credentials.password)
        rest = Rest(http, url, what, timeout=timeout, verify=True if setting is None else setting)
        _check_login(rest.get("/data/auth"), rest)
        try:
            yield rest
        finally:
            rest.logout()


def _check_login(response: requests.Response, rest: Rest) -> None:
    if response.status_code == 200 and "is logged in" in response.text:
        return
    if response.status_code == 200:
        raise FatalError(
            f"{rest.what}: {rest.url}/data/auth answered, but not as XNAT does "
            f"({_short(response.text, 80)!r}); {_URL_FIX}"
        )
    raise _answer_error(response, rest.what)


def answer_error(response: requests.Response, what: str) -> PacsmanError:
    """What XNAT's answer ``response`` (not 2xx) to ``what`` means, with the fix: 408/429/5xx
    :class:`TransientError`; 401, 403, 404 and other 4xx :class:`FatalError`."""
    return _answer_error(response, what)


def _answer_error(response: requests.Response, what: str) -> PacsmanError:
    """XNAT answered ``response`` (not 200): what it means, and the fix."""
    status = response.status_code
    said = f"XNAT answered {status} ({_status_text(response)})"
    if status in _TRANSIENT_STATUS:
        return TransientError(f"{what}: {said}")
    if status == 401:
        return FatalError(
            f"{what}: {said}: XNAT refused the login; the user name or password is wrong, or "
            "the account is disabled or locked; fix XNAT_USER/XNAT_PASS, "
            "xnat.credentials_file or ~/.netrc"
        )
    if status == 403:
        return FatalError(
            f"{what}: {said}: the XNAT user may not do this; ask the XNAT administrator for "
            "access, or use another account"
        )
    if status == 404:
        path = urlsplit(response.url).path
        return FatalError(f"{what}: {said} for {path}: no XNAT REST API at this URL; {_URL_FIX}")
    return FatalError(f"{what}: {said}; {_URL_FIX}")


def _status_text(response: requests.Response) -> str:
    """XNAT's own words for a status: the status page's heading, else the reason phrase."""
    match = _H3.search(response.text or "")
    text = match.group(1) if match else (response.reason or "no reason given")
    return _short(re.sub(r"<[^>]+>", "", text), 160)


def disconnect(connection: Any) -> str | None:
    """Log out (``DELETE /data/JSESSION``) and close; return why logging out failed, if it did.

    The local side is always closed, even when XNAT does not answer the logout.
    """
    try:
        connection.disconnect()
    except Exception as exc:  # the logout is a courtesy: never let it hide the real outcome
        xnat.session.BaseXNATSession.disconnect(connection)  # stop keep-alive, close sockets
        return f"{type(exc).__name__}: {_short(str(exc))}"
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status in an ``xnat`` error, if it carries one."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    match = _STATUS.search(str(exc))
    return int(next(g for g in match.groups() if g)) if match else None


def xnat_message(exc: BaseException) -> str:
    """XNAT's own words for an error (the status page's heading), shortened."""
    text = str(exc)
    match = _H3.search(text)
    return _short(match.group(1) if match else text)


def _short(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def classify(exc: BaseException, what: str) -> PacsmanError:
    """Turn an ``xnat``/``requests`` error raised while doing ``what`` into pacsman's kind."""
    if isinstance(exc, PacsmanError):
        return exc
    if isinstance(exc, requests.exceptions.SSLError):
        return FatalError(
            f"{what}: the server's TLS certificate is not trusted ({_short(str(exc), 160)}); "
            "set xnat.ca_bundle to your CA certificate file"
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransientError(
            f"{what}: no TCP connection within {_TCP_TIMEOUT:g} s (the host does not answer: "
            "a firewall, or the wrong host in xnat.url)"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientError(
            f"{what}: XNAT accepted the connection but sent no answer in time "
            f"({type(exc).__name__})"
        )
    if isinstance(exc, xnat_errors.XNATNotConnectedError):  # another worker is reconnecting
        return TransientError(f"{what}: the XNAT login session was closed; logging in again")
    if isinstance(exc, requests.exceptions.ConnectionError | xnat_errors.XNATConnectionError):
        return TransientError(f"{what}: {_connection_problem(exc)}")
    if isinstance(exc, xnat_errors.XNATAuthError):
        if _LOGIN_REFUSED.search(str(exc)):
            return FatalError(f"{what}: XNAT refused the login; check the credentials")
        return TransientError(f"{what}: login failed ({xnat_message(exc)}); retrying")
    return _by_status(exc, what)


def _connection_problem(exc: BaseException) -> str:
    """Why a connection failed, in words: refused, unknown host, or reset."""
    text = str(exc)
    if "Connection refused" in text:
        return (
            "nothing is listening there (connection refused): XNAT is down, or xnat.url has "
            "the wrong host or port"
        )
    if "resolve" in text or "Name or service not known" in text:
        return "the host name in xnat.url does not resolve (DNS); fix xnat.url"
    return f"connection failed or reset ({type(exc).__name__})"


def _by_status(exc: BaseException, what: str) -> PacsmanError:
    status, message = http_status(exc), xnat_message(exc)
    said = f"XNAT answered {status}: {message}" if status else message
    if status == 401:
        return SessionExpired(f"{what}: {said}; logging in again")
    if status is None and isinstance(exc, xnat_errors.XNATResponseError | xnat_errors.XNATIOError):
        return TransientError(f"{what}: {said}")
    if status is None:
        return ItemFailed(f"{what}: {type(exc).__name__}: {message}")
    if status in _TRANSIENT_STATUS:
        return TransientError(f"{what}: {said}")
    if status == 403:
        return FatalError(f"{what}: {said}; the XNAT user lacks permission for this project")
    if status == 413:
        return ItemFailed(
            f"{what}: {said}; the upload is larger than XNAT's proxy allows "
            "(ask its administrator to raise the limit, e.g. nginx client_max_body_size)"
        )
    return ItemFailed(f"{what}: {said}")
