"""Checks for single config values: each takes what YAML produced and returns the typed value.

A check raises :class:`Invalid` with a message that names the value, the rule and the fix;
the caller puts the key path (and the line) in front of it.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from os import PathLike
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pacsman.dicom.charsets import PYTHON_ENCODINGS
from pacsman.layout import is_xnat_label

__all__ = [
    "SECRETS_FIX",
    "Invalid",
    "ae_title",
    "bind_host_warning",
    "boolean",
    "character_set",
    "choice",
    "describe",
    "file_path",
    "host",
    "http_url",
    "int_between",
    "name",
    "seconds",
    "suggest",
    "tcp_port",
    "text",
    "time_window",
    "url_warning",
    "xnat_project",
]

S = TypeVar("S", bound=str)

SECRETS_FIX = (
    "secrets never live in the config file; "
    "set XNAT_USER and XNAT_PASS in the environment or use ~/.netrc"
)
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_HHMM = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_WINDOW = re.compile(rf"({_HHMM})-({_HHMM})")


#: The longest text a message repeats; longer values are cut with "...".
_SHOWN = 60
#: The widest a label template may pad a field: XNAT labels hold at most 64 characters.
_LABEL_WIDTH = 64
_TEMPLATE_FIELDS = ("project", "n")
#: ``scheme://user:password@`` at the start of a URL, even one urlsplit cannot parse.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


class Invalid(ValueError):
    """A config value broke a rule; the message names the value, the rule and the fix."""


def describe(value: object) -> str:
    """Show a YAML value the way the user wrote it, for ``got ...`` in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, str) and len(value) > _SHOWN:
        return repr(value[: _SHOWN - 3] + "...")
    if isinstance(value, int | float | str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def suggest(word: str, known: Iterable[str]) -> str | None:
    """Return the known word nearest to ``word`` (ignoring case), if any is near enough."""
    by_lower = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


def text(value: object) -> str:
    """Any non-empty text."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected text, got {describe(value)}")
    return value.strip()


def name(value: object) -> str:
    """A name such as a node name; a plain number (``2``) is taken as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text(value)


def boolean(value: object) -> bool:
    """``true`` or ``false`` (not quoted)."""
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def choice(options: Sequence[S]) -> Callable[[object], S]:
    """One of ``options``, exactly as written there."""

    def check(value: object) -> S:
        for option in options:
            if value == option:
                return option
        listed = ", ".join(repr(o) for o in options)
        hint = suggest(value, options) if isinstance(value, str) else None
        fix = f"; did you mean {hint!r}?" if hint else ""
        raise Invalid(f"{describe(value)} is not one of {listed}{fix}")

    return check


def _number(value: object, what: str) -> float:
    """A YAML int or float; quoted numbers are rejected with the fix."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return value
        raise Invalid(f"{describe(value)} is not a finite number; use {what}")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:
            raise Invalid(f"{value!r} is quoted text; write {value.strip()} without quotes")
    raise Invalid(f"expected {what}, got {describe(value)}")


def seconds(*, allow_zero: bool = False) -> Callable[[object], float]:
    """A number of seconds, > 0 (or >= 0 when ``allow_zero``)."""
    rule = "0 or more" if allow_zero else "more than 0"

    def check(value: object) -> float:
        number = float(_number(value, "a number of seconds"))
        if number < 0 or (number == 0 and not allow_zero):
            raise Invalid(f"{describe(value)} is not a valid duration; use {rule} seconds")
        return number

    return check


def int_between(low: int, high: int) -> Callable[[object], int]:
    """A whole number from ``low`` to ``high``."""

    def check(value: object) -> int:
        number = _number(value, f"a whole number from {low} to {high}")
        if not isinstance(number, int) or not low <= number <= high:
            raise Invalid(f"{describe(value)} is out of range; use a whole number {low}-{high}")
        return number

    return check


def tcp_port(value: object) -> int:
    """A TCP port, 1-65535, written as a YAML integer."""
    number = _number(value, "a TCP port number (1-65535)")
    if not isinstance(number, int) or not 1 <= number <= 65535:
        raise Invalid(f"{describe(value)} is not a TCP port; use 1-65535")
    return number


def ae_title(value: object) -> str:
    """A DICOM AE title: 1-16 ASCII characters, no backslash or control characters.

    Leading and trailing spaces are not significant and are removed.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected an AE title (text), got {describe(value)}; quote it")
    title = value.strip(" ")
    spaces = "leading and trailing spaces are not significant"
    if not title:
        raise Invalid(f"{value!r} is empty; an AE title needs 1-16 characters ({spaces})")
    if len(title) > 16:
        raise Invalid(f"{value!r} is {len(title)} characters; an AE title has 1-16 ({spaces})")
    for char in title:
        if char == "\\":
            raise Invalid(f"{value!r} contains a backslash, which AE titles may not contain")
        if not " " <= char <= "~":
            raise Invalid(
                f"{value!r} contains {char!r} (U+{ord(char):04X}); AE titles use printable"
                " ASCII only: letters, digits, spaces and punctuation other than backslash"
            )
    return title


def host(value: object) -> str:
    """An IP address or a host name (no scheme, port or path)."""
    if isinstance(value, str):
        candidate = value.strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            if len(candidate) <= 253 and _HOSTNAME.fullmatch(candidate):
                return candidate
    raise Invalid(
        f"{describe(value)} is not an IP address or host name;"
        " write just the address, e.g. 127.0.0.1 or pacs.example.org (no scheme, port or path)"
    )


def character_set(value: object) -> str:
    """A DICOM SpecificCharacterSet pydicom can decode, e.g. ``ISO_IR 192`` or ``\\ISO 2022 IR 87``.

    With several values (code extensions) every value must be an ``ISO 2022`` term; the first
    may be empty, meaning the default repertoire.
    """
    if not isinstance(value, str) or not value.strip():
        raise Invalid(
            f"expected a DICOM character set, got {describe(value)};"
            " use e.g. 'ISO_IR 192' (UTF-8) or 'ISO_IR 100' (Latin-1)"
        )
    terms = [term.strip() for term in value.split("\\")]
    for index, term in enumerate(terms):
        if term == "" and index == 0 and len(terms) > 1:
            continue
        if term not in PYTHON_ENCODINGS or term == "":
            hint = suggest(term, [k for k in PYTHON_ENCODINGS if k])
            fix = f"did you mean {hint!r}?" if hint else "use e.g. 'ISO_IR 192' (UTF-8)"
            raise Invalid(f"{term!r} is not a DICOM character set pydicom knows; {fix}")
        if len(terms) > 1 and not term.startswith("ISO 2022"):
            raise Invalid(
                f"{term!r} cannot be combined with other character sets; with several"
                " values (code extensions) each must be an 'ISO 2022 ...' term"
            )
    return "\\".join(terms)


def time_window(value: object) -> str:
    """A daily window ``HH:MM-HH:MM`` (24-hour clock); it may wrap midnight."""
    fix = 'use HH:MM-HH:MM on the 24-hour clock, quoted, e.g. "19:00-07:00"'
    if not isinstance(value, str):
        raise Invalid(f"expected a time window, got {describe(value)}; {fix}")
    match = _WINDOW.fullmatch(value.strip())
    if match is None:
        raise Invalid(f"{value!r} is not a time window; {fix}")
    if match.group(1) == match.group(2):
        raise Invalid(
            f"{value!r} starts and ends at the same time; to allow retrieval at any time,"
            " leave retrieve_window out"
        )
    return match.group(0)


def label_template(value: object) -> str:
    """A label template with the fields ``project`` and ``n`` giving valid XNAT labels.

    Only ``{project}`` and ``{n}`` with a format of at most 64 characters are allowed, so a
    template can never build a huge label (``{n:99999999}``).
    """
    template = text(value)
    shown = describe(template)
    try:
        _check_template_fields(template)
        example = template.format(project="P", n=1)
    except (ValueError, IndexError, KeyError) as exc:
        raise Invalid(
            f"{shown} is not a valid template ({exc}); use fields {{project}} and {{n}}, "
            "e.g. '{project}_{n:04d}'"
        ) from None
    if "{n" not in template:
        raise Invalid(f"{shown} has no {{n}}: every label would be the same")
    if not is_xnat_label(example):
        raise Invalid(
            f"{shown} gives labels like {describe(example)}; "
            "XNAT labels are 1-64 of A-Z a-z 0-9 _ -"
        )
    return template


def _check_template_fields(template: str) -> None:
    """Refuse fields other than {project} and {n}, and formats wider than a label.

    Raises:
        ValueError: the reason, shown in brackets after the template.
    """
    for _, field, format_spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        spec = format_spec or ""
        if field not in _TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {describe(field)}")
        if conversion or "{" in spec:
            raise ValueError(f"field {{{field}}} may only take a plain format such as :04d")
        for number in re.findall(r"[0-9]+", spec):
            if len(number) > 2 or int(number) > _LABEL_WIDTH:
                shown = spec if len(spec) <= 12 else spec[:9] + "..."
                raise ValueError(
                    f"{{{field}:{shown}}} is wider than the {_LABEL_WIDTH} characters"
                    " of an XNAT label"
                )


def file_path(value: object) -> Path:
    """A file or directory path; ``~`` is expanded, relative paths stay relative."""
    if isinstance(value, PathLike):
        value = str(Path(value))
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Invalid(f"expected a path, got {describe(value)}")
    return Path(value.strip()).expanduser()


def http_url(value: object) -> str:
    """An ``http(s)://host[:port][/path]`` URL without credentials, query or fragment.

    A trailing ``/`` is removed.  Messages never repeat credentials, a query string or a
    fragment: they can hold a token.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a URL, got {describe(value)}; use https://host[:port][/path]")
    candidate = value.strip()
    try:
        parts = urlsplit(candidate)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # e.g. an unclosed '[' or a port that is no number
        parts, port_ok = urlsplit(""), False
    if parts.username is not None or _USERINFO.match(candidate):
        raise Invalid(f"the URL contains credentials; {SECRETS_FIX}")
    shown = describe(_without_secrets(candidate))
    if parts.query or parts.fragment or "?" in candidate or "#" in candidate:
        raise Invalid(
            f"{shown} has a query string or fragment (not repeated here: it may hold a token);"
            f" use http(s)://host[:port][/path] only; {SECRETS_FIX}"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not port_ok:
        raise Invalid(f"{shown} is not an http(s) URL; use http(s)://host[:port][/path]")
    return candidate.rstrip("/")


def _without_secrets(url: str) -> str:
    """``url`` without what may be secret: ``user:password@``, ``?query``, ``#fragment``."""
    url = _USERINFO.sub(r"\1", url)
    cut = re.split(r"[?#]", url, maxsplit=1)
    return cut[0] + "?..." if len(cut) > 1 else url


def url_warning(url: str | None) -> str | None:
    """A warning for a plain ``http://`` URL to another machine; ``None`` when fine."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or _is_loopback(parts.hostname or ""):
        return None
    return (
        f"{describe(url)} is plain http: the XNAT credentials and every pushed image cross "
        "the network unencrypted; use https:// (plain http only to 127.0.0.1 or localhost)"
    )


def bind_host_warning(bind_host: str) -> str | None:
    """A warning for a Storage SCP bound to every interface; ``None`` when fine."""
    try:
        unspecified = ipaddress.ip_address(bind_host).is_unspecified
    except ValueError:
        return None
    if not unspecified:
        return None
    return (
        f"{bind_host!r} makes the Storage SCP listen on every network interface, so any host "
        "that reaches local.port can send to it; set local.bind_host to the address of the "
        "interface the PACS sends to (or 127.0.0.1 when the PACS runs on this machine)"
    )


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def xnat_project(value: object) -> str:
    """An XNAT project ID: 1-64 letters, digits, ``_`` or ``-``."""
    if isinstance(value, str) and is_xnat_label(value):
        return value
    raise Invalid(
        f"{describe(value)} is not an XNAT project ID; use 1-64 letters, digits, '_' or '-'"
    )
