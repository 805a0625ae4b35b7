"""The rules of the service's HTTP side: who may read what, and who may change anything.

* **Where it listens.** 127.0.0.1 by default.  Any other address (or a reverse proxy in
  front, ``serve.http.behind_proxy``) needs the API token on every request but ``/healthz``
  (:func:`token_required`); the token comes from ``serve.http.token_file`` (mode 0600) or
  systemd's ``LoadCredential=pacsman-http-token`` (:func:`load_token`).
* **Who is asking.** ``Authorization: Bearer TOKEN``, or the login cookie a browser gets from
  the page's login form (HttpOnly, SameSite=Strict; its value is derived from the token, never
  the token itself): :func:`authenticate`.
* **What they see.** PatientIDs, names, AccessionNumbers, the rows' query values and labels
  appear only to a request carrying the token.  Without it, reasons are shown with every
  identifier the job store holds for the row hidden (:class:`Redactor`).
* **Who may change things.** Every POST carries the token, or passes a same-origin check
  (:func:`cross_site_problem`), on every address: a page elsewhere in the operator's browser
  cannot submit or cancel jobs.  On loopback, a request for a host name that is not this
  machine's is refused (:func:`host_problem`): a web page cannot reach the service by
  re-pointing its own name at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pacsman.config.serve import HttpConfig, is_loopback_bind
from pacsman.errors import InputError
from pacsman.layout import read_private

__all__ = [
    "HIDDEN",
    "SESSION_COOKIE",
    "TOKEN_CREDENTIAL",
    "Access",
    "Redactor",
    "authenticate",
    "check_token_configured",
    "cross_site_problem",
    "host_problem",
    "load_token",
    "same_secret",
    "session_value",
    "token_required",
]

#: The systemd credential name (``LoadCredential=pacsman-http-token:/etc/pacsman/http-token``).
TOKEN_CREDENTIAL = "pacsman-http-token"
#: The browser's login cookie.
SESSION_COOKIE = "pacsman_session"
#: What an identifier becomes in a view without the token.
HIDDEN = "[hidden]"
#: A token shorter than this is refused: it could be guessed.
_TOKEN_MIN = 16
_MAKE_TOKEN = "(umask 077; openssl rand -hex 32 > {path})"


class Access(StrEnum):
    """How a request proved who it is."""

    ANONYMOUS = "anonymous"
    TOKEN = "token"  # Authorization: Bearer
    SESSION = "session"  # the login cookie

    @property
    def identifiers(self) -> bool:
        """Whether PatientIDs, names and the rows' query values may be shown."""
        return self is not Access.ANONYMOUS


# -- the token ---------------------------------------------------------------------------------


def load_token(http: HttpConfig) -> str | None:
    """The API token: ``serve.http.token_file``, else ``$CREDENTIALS_DIRECTORY``'s
    ``pacsman-http-token`` (systemd ``LoadCredential=``); None when neither is there.

    Raises:
        InputError: the file is missing, empty, too short, or readable by group or others.
    """
    if http.token_file is not None:
        return _read_token(http.token_file, "serve.http.token_file")
    credentials = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if credentials and (Path(credentials) / TOKEN_CREDENTIAL).is_file():
        return _read_token(Path(credentials) / TOKEN_CREDENTIAL, "LoadCredential=")
    return None


def _read_token(path: Path, key: str) -> str:
    fix = f"create it with {_MAKE_TOKEN.format(path=path)}"
    text = read_private(path, key=key, fix=fix).strip()
    if len(text) < _TOKEN_MIN or any(ch.isspace() for ch in text):
        raise InputError(
            f"{key} {path}: the API token must be one word of at least {_TOKEN_MIN} "
            f"characters; make one with {_MAKE_TOKEN.format(path=path)}"
        )
    return text


def token_required(http: HttpConfig) -> bool:
    """Whether every request (but ``/healthz``) needs the token: off loopback, or behind a
    reverse proxy (which makes a loopback address reachable from elsewhere)."""
    return http.behind_proxy or not is_loopback_bind(http.bind)


def check_token_configured(http: HttpConfig, token: str | None, *, required: bool) -> None:
    """A service that needs the token must have one.

    Raises:
        InputError: ``required`` and no token; the message says where to put one.
    """
    if required and token is None:
        why = "is behind a reverse proxy" if http.behind_proxy else "is not loopback"
        raise InputError(
            f"serve.http.bind {http.bind} {why}: every request needs the API token, and "
            "none is set; put one in a file (mode 0600) named by serve.http.token_file, "
            f"or give systemd LoadCredential={TOKEN_CREDENTIAL}:PATH"
        )


def session_value(token: str) -> str:
    """The login cookie's value: derived from the token (a new token signs everyone out)."""
    return hmac.new(token.encode(), b"pacsman-http-session-1", hashlib.sha256).hexdigest()


def authenticate(
    headers: Mapping[str, str], cookies: Mapping[str, str], token: str | None
) -> Access | None:
    """How the request proved itself; None when it presented a wrong token.

    ``headers`` are lower-case names (as Starlette gives them).
    """
    given = headers.get("authorization", "")
    if given:
        scheme, _, value = given.partition(" ")
        if token is None or scheme.lower() != "bearer":
            return None
        return Access.TOKEN if same_secret(value.strip(), token) else None
    cookie = cookies.get(SESSION_COOKIE, "")
    if token is not None and cookie and same_secret(cookie, session_value(token)):
        return Access.SESSION
    return Access.ANONYMOUS


def same_secret(given: str, expected: str) -> bool:
    """``given == expected`` in constant time (any text: compared as UTF-8 bytes)."""
    return hmac.compare_digest(given.encode(), expected.encode())


# -- where a request comes from -------------------------------------------------------------------


def _host_port(netloc: str) -> str:
    """``host[:port]`` lower case, the default ports (80, 443) left out: a reverse proxy
    may speak HTTPS to the browser and HTTP to pacsman, so the scheme is not compared."""
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return ""
    if not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host if port in (None, 80, 443) else f"{host}:{port}"


def _origin_host(url: str) -> str:
    """The ``host[:port]`` an Origin or Referer URL names ('' for ``null`` or junk)."""
    parts = urlsplit(url)
    return _host_port(parts.netloc) if parts.scheme in ("http", "https") else ""


def cross_site_problem(headers: Mapping[str, str]) -> str | None:
    """Why a POST without the token is refused as possibly cross-site; None when it is not.

    Sec-Fetch-Site ``cross-site`` is refused; then Origin (else Referer) must name the host
    the request was sent to (the Host header).
    """
    fix = (
        "send the API token (Authorization: Bearer ...) or use the service's own page; "
        "a page from another site cannot submit or change jobs"
    )
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return f"cross-site request refused (Sec-Fetch-Site: cross-site); {fix}"
    host = _host_port(headers.get("host", ""))
    for name in ("origin", "referer"):
        value = headers.get(name, "").strip()
        if value:
            if host and _origin_host(value) == host:
                return None
            return (
                f"cross-site request refused: {name.title()} {value[:200]!r} is not this "
                f"service (Host {headers.get('host', '')!r}); {fix}"
            )
    return f"request refused: a POST without the API token must carry Origin or Referer; {fix}"


def host_problem(host: str, http: HttpConfig) -> str | None:
    """On loopback without a proxy, the Host header must name this machine (127.0.0.0/8,
    ::1, localhost, or the bind address); None when it does."""
    name = (urlsplit(f"//{host}").hostname or "").lower()
    if name in ("localhost", http.bind.lower()):
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"Host {host[:200]!r} is not this service's address (serve.http.bind {http.bind}); "
        "open it as http://127.0.0.1:PORT/ (a name pointing at 127.0.0.1 from elsewhere "
        "is refused), or set serve.http.behind_proxy with a token for a reverse proxy"
    )


# -- identifiers, hidden -------------------------------------------------------------------------

_WORDS = re.compile(r"[^\W_]+")
_NAME_PARTS = re.compile(r"[\^=,\s\\*?]+")


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.casefold() for word in _WORDS.findall(text))


class Redactor:
    """Hides identifier values in text shown without the token, as whole words in any case
    and with any punctuation between them (``DOE^JOHN``, ``doe john``, and for person names
    each part alone).  Built once per job from every identifier of every row, it reads each
    text once: a set lookup per word, whatever the number of identifiers."""

    def __init__(self, values: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        found = {_words(part) for value in values for part in value.split("\\")}
        for name in names:
            found.add(_words(name))
            found.update((part.casefold(),) for part in _NAME_PARTS.split(name) if len(part) >= 2)
        self._values = {words for words in found if words}
        self._longest = max((len(words) for words in self._values), default=0)

    def __call__(self, text: str) -> str:
        if not self._values:
            return text
        spans = [(m.start(), m.end(), m.group().casefold()) for m in _WORDS.finditer(text)]
        shown, at, index = [], 0, 0
        while index < len(spans):
            size = self._match(spans, index)
            if size:
                shown += [text[at : spans[index][0]], HIDDEN]
                at = spans[index + size - 1][1]
                index += size
            else:
                index += 1
        return "".join([*shown, text[at:]])

    def _match(self, spans: list[tuple[int, int, str]], index: int) -> int:
        """The number of words from ``index`` on that make the longest hidden value (0: none)."""
        for size in range(min(self._longest, len(spans) - index), 0, -1):
            if tuple(word for _, _, word in spans[index : index + size]) in self._values:
                return size
        return 0
