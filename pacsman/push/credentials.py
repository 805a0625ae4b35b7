"""XNAT credentials: from the environment, a credentials file, or ``~/.netrc``.

The order is: ``XNAT_USER`` + ``XNAT_PASS``; then ``xnat.credentials_file`` (mode 0600,
``user:password`` on one line, or the user on the first line and the password on the
second; an XNAT alias token works as ``alias:secret``); then the ``~/.netrc`` entry (or
``$NETRC``) for the URL's host.  The password is never logged, printed or stored: only
where it came from (``source``) may be.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pacsman.errors import InputError
from pacsman.layout import read_private

__all__ = ["Credentials", "read_login", "resolve_credentials"]

_FIX = (
    "set XNAT_USER and XNAT_PASS, add a 'machine {host} login ... password ...' line to "
    "~/.netrc (mode 600), or set xnat.credentials_file"
)


@dataclass(frozen=True)
class Credentials:
    """A user (or alias token) and its password; ``source`` says where they came from."""

    user: str
    password: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"user {self.user!r} from {self.source}"


def resolve_credentials(
    url: str,
    *,
    credentials_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Credentials:
    """Find the credentials for the XNAT at ``url``.

    Raises:
        InputError: none found, only half of the environment pair set, or the credentials
            file is unreadable, readable by others, or malformed (the message names the fix,
            never the secret).
    """
    env = dict(os.environ if environ is None else environ)
    host = urlsplit(url).hostname or url
    user, password = env.get("XNAT_USER", ""), env.get("XNAT_PASS", "")
    if user and password:
        return Credentials(user, password, "the environment (XNAT_USER/XNAT_PASS)")
    if user or password:
        missing, given = ("XNAT_PASS", "XNAT_USER") if user else ("XNAT_USER", "XNAT_PASS")
        raise InputError(
            f"XNAT_USER and XNAT_PASS must be set together; {missing} is not set: set it "
            f"(for a service, in its environment file), or unset {given} to use "
            "xnat.credentials_file or ~/.netrc"
        )
    if credentials_file is not None:
        return _from_file(credentials_file)
    found = _from_netrc(url, env)
    if found is not None:
        return found
    raise InputError(f"no XNAT credentials found for {host}; " + _FIX.format(host=host))


def read_login(path: Path, *, key: str) -> tuple[str, str]:
    """``(user, password)`` from a credentials file: ``user:password`` on one line, or the
    user and the password on two lines; only its owner may read it.

    Raises:
        InputError: it cannot be read, others may read it, or it holds no login.
    """
    where = f"{key} {path}"
    text = read_private(path, key=key)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 2:
        user, password = lines[0], lines[1]
    elif lines and ":" in lines[0]:
        user, _, password = lines[0].partition(":")
    else:
        user = password = ""
    if not user or not password:
        raise InputError(
            f"{where}: expected 'user:password' on one line, or the user and the password "
            "on two lines"
        )
    return user, password


def _from_file(path: Path) -> Credentials:
    key = "xnat.credentials_file"
    user, password = read_login(path, key=key)
    return Credentials(user, password, f"{key} {path}")


def _from_netrc(url: str, env: dict[str, str]) -> Credentials | None:
    path = Path(env["NETRC"]) if env.get("NETRC") else Path.home() / ".netrc"
    if not path.is_file():
        return None
    read_private(path, key="netrc")  # only its owner may read it
    try:
        entries = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:  # its text may quote a token: name the line only
        reason = exc.msg if exc.msg.startswith("~/.netrc") else f"syntax error on line {exc.lineno}"
        raise InputError(f"{path}: cannot use it ({reason}); fix the file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    parts = urlsplit(url)
    for machine in (parts.netloc, parts.hostname or ""):
        found = entries.authenticators(machine) if machine else None
        if found is not None and found[0] and found[2]:
            return Credentials(found[0], found[2], f"{path} (machine {machine})")
    return None
