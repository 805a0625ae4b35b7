"""The one ``xnat`` client connection of a run: connect, disconnect, and what its errors mean.

:func:`classify` turns what ``xnat``/``requests`` raise into pacsman's decisions: timeouts,
resets, 408/429/5xx are :class:`TransientError`; 401 means the login session expired
(:class:`SessionExpired`, reconnect then retry); a refused login, 403 or an untrusted TLS
certificate are :class:`FatalError`; other 4xx fail the item.  Messages quote XNAT's
``<h3>`` text, never credentials.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import xnat
import xnat.session
from xnat import exceptions as xnat_errors

from pacsman.config.push import XnatConfig
from pacsman.errors import FatalError, ItemFailed, PacsmanError, TransientError
from pacsman.push.credentials import Credentials

__all__ = ["SessionExpired", "classify", "connect", "disconnect", "http_status"]

#: xnatpy's own messages go through logging, quietly (it never logs passwords).
_XNATPY_LOG = logging.getLogger("pacsman.push.xnatpy")
_XNATPY_LOG.setLevel(logging.WARNING)
_CA_LOCK = threading.Lock()
_PILOT_TIMEOUT = 30.0
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

    Raises:
        FatalError: the login was refused, or the TLS certificate is not trusted.
        TransientError: XNAT (or its proxy) did not answer, or answered 5xx.
    """
    url = config.url or ""
    if config.ca_bundle is not None and not config.ca_bundle.is_file():
        raise FatalError(f"xnat.ca_bundle {config.ca_bundle} is not a file; fix the path")
    setting = _tls_setting(config)
    try:
        with _login_tls(setting):
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
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientError(f"{what}: no answer in time ({type(exc).__name__}); retrying")
    if isinstance(exc, xnat_errors.XNATNotConnectedError):  # another worker is reconnecting
        return TransientError(f"{what}: the XNAT login session was closed; logging in again")
    if isinstance(exc, requests.exceptions.ConnectionError | xnat_errors.XNATConnectionError):
        return TransientError(f"{what}: connection failed or reset ({type(exc).__name__})")
    if isinstance(exc, xnat_errors.XNATAuthError):
        if _LOGIN_REFUSED.search(str(exc)):
            return FatalError(f"{what}: XNAT refused the login; check the credentials")
        return TransientError(f"{what}: login failed ({xnat_message(exc)}); retrying")
    return _by_status(exc, what)


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
