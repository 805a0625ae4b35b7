"""Reading XNAT's answers whole, bounded, and saying what they are without quoting them
(private to the package).

A peer that stalls or floods (tests/test_dqr_hostile.py): every answer is read by pacsman
itself (:class:`BoundedReader`, a ``requests`` response hook), at most ``dqr.max_answer_mb``
(a gzip body counts decompressed) and within the request timeout for the whole body (the
socket's timeout bounds only each read): past either, :class:`TransientError` naming the
request and the bound.  An answer that is not JSON or is an HTML page (XNAT's login page
when its login session expired, or a proxy's) is named by its kind and size
(:func:`parsed`, :func:`decoded`); bodies are never quoted: they may carry patients' names.
XNAT's refusals of an import (403: :class:`DqrRefused`; its receiver; an unknown PACS) and
its 404s become errors that name the fix (:func:`import_refusal`, :func:`not_found`).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from pacsman.errors import FatalError, ItemFailed, PacsmanError, TransientError
from pacsman.push.xnat_rest import answer_error

__all__ = [
    "BoundedReader",
    "DqrRefused",
    "MiB",
    "decoded",
    "import_refusal",
    "is_html",
    "kind_of",
    "not_found",
    "own_words",
    "parsed",
    "shortened",
    "withhold",
]

MiB = 1 << 20
_CHUNK = 64 * 1024
_HTML = re.compile(r"\s*<(!doctype|html|head|body|\?xml)", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")
_H3 = re.compile(r"<h[13]>(.*?)</h[13]>", re.S)
_RECEIVER_PROBLEMS = ("Invalid DICOM SCP Receiver", "custom processing", "remapping processor")
_NO_DQR = (
    "ask the XNAT administrator to install and enable the DICOM Query-Retrieve (DQR) plugin, "
    "or use 'pacsman run', which retrieves from the PACS itself"
)


class DqrRefused(FatalError):
    """XNAT refused a DQR import for the project (403): DQR is not enabled for it, or the
    user may not edit it."""


class _Body(io.BytesIO):
    """The body :class:`BoundedReader` read, where ``requests`` reads ``.content`` from,
    with the HTTP message it takes the cookies from (``_original_response``: XNAT's login
    session, JSESSIONID, so that XNAT does not open a new one for every request)."""

    def __init__(self, body: bytes, original: object) -> None:
        super().__init__(body)
        self._original_response = original


class BoundedReader:
    """A ``requests`` response hook: reads each answer whole, at most ``cap`` bytes (a gzip
    body counts decompressed) and within ``timeout`` seconds (the socket's own timeout
    bounds each read, not the whole), before ``requests`` does anything with it (it would
    read the body of a redirect whole).  The response then holds that body.
    """

    def __init__(self, what: str, cap: int, timeout: float) -> None:
        self._what = what
        self._cap = cap
        self._timeout = timeout

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Read ``response``'s body (the hook; the response is changed in place).

        Raises:
            TransientError: too large, too slow, or broken off.
        """
        raw = response.raw
        if isinstance(raw, _Body) or not hasattr(raw, "read1"):  # read already
            return
        request = f"{response.request.method} {urlsplit(response.url).path}"
        try:
            body = self._body(raw, response.headers.get("Content-Length"), request)
        except BaseException:
            response.close()
            raise
        raw.release_conn()
        response.raw = _Body(body, getattr(raw, "_original_response", None))

    def _body(self, raw: Any, declared: str | None, request: str) -> bytes:
        if _length(declared) > self._cap:
            raise self._too_large(request, f" (it announced {_length(declared)} bytes)")
        deadline = time.monotonic() + self._timeout
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := raw.read1(_CHUNK, decode_content=True):
                size += len(chunk)
                if size > self._cap:
                    raise self._too_large(request, "")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"{self._what}: XNAT began its answer to {request} but did not finish "
                        f"it within {self._timeout:g} s ({size} bytes so far: it trickles); "
                        "asking again later"
                    )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(
                f"{self._what}: XNAT's answer to {request} broke off ({type(exc).__name__}) "
                f"or stalled beyond {self._timeout:g} s; asking again later"
            ) from None
        return b"".join(chunks)

    def _too_large(self, request: str, announced: str) -> TransientError:
        return TransientError(
            f"{self._what}: XNAT's answer to {request} is larger than {self._cap / MiB:g} MiB"
            f"{announced}, the most pacsman reads (dqr.max_answer_mb); it stopped reading. If "
            "XNAT's DQR history really is that long, raise dqr.max_answer_mb; else check what "
            "answers at xnat.url"
        )


# -- answers ----------------------------------------------------------------------------------


def _length(declared: str | None) -> int:
    """The Content-Length XNAT announced (0 when none, or not a number)."""
    text = (declared or "").strip()
    return int(text) if text.isdigit() and len(text) < 20 else 0


def is_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    return kind.startswith(("text/html", "application/xhtml")) or bool(
        _HTML.match(response.content[:200].decode("utf-8", errors="replace"))
    )


def parsed(response: requests.Response) -> tuple[Any, str]:
    """The JSON in ``response``, or ``(None, what it is instead)``: an HTML page (with its
    title) or not JSON (with its size).  The body itself is never quoted: it may carry
    patients' names."""
    if is_html(response):
        match = _TITLE.search(response.content[:4096].decode("utf-8", errors="replace"))
        title = shortened(_TAGS.sub("", match.group(1)), 60) if match else ""
        shown = f" ({title!r})" if title else ""
        return None, (
            f"an HTML page{shown} instead of JSON: its login page, when XNAT's login session "
            "expired or a proxy in front of XNAT asks to log in"
        )
    try:
        return json.loads(response.content), ""
    except (ValueError, RecursionError):
        return None, f"not JSON ({len(response.content)} bytes)"


def decoded(response: requests.Response, what: str, odd: type[PacsmanError]) -> Any:
    """The JSON in ``response``.

    Raises:
        PacsmanError: of type ``odd`` when it is not JSON (or an HTML page).
    """
    answer, problem = parsed(response)
    if problem:
        hint = "" if is_html(response) else "; is xnat.url the address of XNAT?"
        again = "; asking again later" if issubclass(odd, TransientError) else ""
        raise odd(f"{what}: XNAT answered {response.status_code} with {problem}{hint}{again}")
    return answer


def kind_of(value: object) -> str:
    """What a JSON value is, in words (never the value: it may identify a patient)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, int | float):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, list):
        return f"a JSON list of {len(value)}"
    return "a JSON object"


def own_words(response: requests.Response, withheld: Iterable[str] = ()) -> str:
    """XNAT's own words: its status page's heading, else the body, else the reason (with
    the ``withheld`` values taken out before it is shortened)."""
    text = response.text or ""
    match = _H3.search(text)
    words = withhold(_TAGS.sub("", match.group(1) if match else text).strip(), withheld)
    return shortened(words or response.reason or "no reason given", 200)


def withhold(text: str, values: Iterable[str]) -> str:
    """``text`` without any of ``values`` (query criteria: names, IDs)."""
    for value in sorted({v.strip() for v in values if len(v.strip()) >= 2}, key=len, reverse=True):
        text = text.replace(value, "[withheld]")
    return text


def shortened(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- refusals ---------------------------------------------------------------------------------


def import_refusal(
    response: requests.Response, what: str, project: str, pacs_id: int, receiver: tuple[str, int]
) -> PacsmanError:
    """The error for XNAT's answer ``response`` (not 200) to an import into ``project``."""
    status, said = response.status_code, own_words(response)
    if status == 403:
        return DqrRefused(
            f"{what}: XNAT refused it (403: {said}): DQR is not enabled for project "
            f"{project!r}, or the XNAT user may not edit it; an XNAT administrator "
            "enables DQR for the project (the site setting allowAllProjectsToUseDqr, or "
            "the project's own DQR setting) and gives the user edit rights"
        )
    if any(text in said for text in _RECEIVER_PROBLEMS):
        ae_title, port = receiver
        return FatalError(
            f"{what}: XNAT refused its receiver {ae_title}:{port} ({status}: {said}); set "
            "dqr.receiver_ae_title and dqr.receiver_port to an enabled DICOM SCP receiver "
            "of XNAT (Administer > Site Administration > DICOM SCP receivers) with custom "
            "processing and a remapping archive processor"
        )
    if status == 404:
        return FatalError(
            f"{what}: XNAT knows no PACS {pacs_id} (404: {said}); give --pacs-id or "
            "dqr.pacs_id from GET /xapi/pacs, or --pacs-ae"
        )
    if status == 400:
        return ItemFailed(f"{what}: XNAT refused the request (400: {said})")
    return answer_error(response, what)


def not_found(response: requests.Response, what: str, path: str) -> FatalError:
    """The error for XNAT's 404 to ``path`` (a PACS id, or no DQR plugin)."""
    if re.fullmatch(r"/xapi/pacs/\d+(/status)?", path):
        return FatalError(
            f"{what}: XNAT knows no such PACS (404: {own_words(response)}); give an id from "
            "GET /xapi/pacs (--pacs-id or dqr.pacs_id), or the AE title (--pacs-ae)"
        )
    return FatalError(f"{what}: XNAT answered 404 for {path}: it has no DQR plugin; {_NO_DQR}")
