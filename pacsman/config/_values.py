"""Checks for single config values: each takes what YAML produced and returns the typed value.

A check raises :class:`Invalid` with a message that names the value, the rule and the fix;
the caller puts the key path (and the line) in front of it.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from os import PathLike
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydicom.charset import python_encoding

from pacsman.layout import is_xnat_label

__all__ = [
    "SECRETS_FIX",
    "Invalid",
    "ae_title",
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


class Invalid(ValueError):
    """A config value broke a rule; the message names the value, the rule and the fix."""


def describe(value: object) -> str:
    """Show a YAML value the way the user wrote it, for ``got ...`` in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
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
        if term not in python_encoding or term == "":
            hint = suggest(term, [k for k in python_encoding if k])
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
    """A label template with the fields ``project`` and ``n`` giving valid XNAT labels."""
    template = text(value)
    try:
        example = template.format(project="P", n=1)
    except (ValueError, IndexError, KeyError) as exc:
        raise Invalid(
            f"{template!r} is not a valid template ({exc}); use fields {{project}} and {{n}}, "
            "e.g. '{project}_{n:04d}'"
        ) from exc
    if "{n" not in template:
        raise Invalid(f"{template!r} has no {{n}}: every label would be the same")
    if not is_xnat_label(example):
        raise Invalid(
            f"{template!r} gives labels like {example!r}; XNAT labels are 1-64 of A-Z a-z 0-9 _ -"
        )
    return template


def file_path(value: object) -> Path:
    """A file or directory path; ``~`` is expanded, relative paths stay relative."""
    if isinstance(value, PathLike):
        value = str(Path(value))
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Invalid(f"expected a path, got {describe(value)}")
    return Path(value.strip()).expanduser()


def http_url(value: object) -> str:
    """An ``http(s)://host[:port][/path]`` URL without credentials, query or fragment.

    A trailing ``/`` is removed.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a URL, got {describe(value)}; use https://host[:port][/path]")
    parts = urlsplit(value.strip())
    if parts.username is not None or parts.password is not None:
        raise Invalid(f"the URL contains credentials; {SECRETS_FIX}")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.query
        or parts.fragment
    ):
        raise Invalid(f"{value!r} is not an http(s) URL; use http(s)://host[:port][/path]")
    return value.strip().rstrip("/")


def xnat_project(value: object) -> str:
    """An XNAT project ID: 1-64 letters, digits, ``_`` or ``-``."""
    if isinstance(value, str) and is_xnat_label(value):
        return value
    raise Invalid(
        f"{describe(value)} is not an XNAT project ID; use 1-64 letters, digits, '_' or '-'"
    )
