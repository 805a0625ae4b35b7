"""XNAT's DICOM Query-Retrieve plugin (DQR) and the project's anonymization script, over REST.

:class:`DqrApi` is one logged-in connection (the push's login, TLS settings and error
mapping: :mod:`pacsman.push.xnat_rest`) for one project.  What XNAT's answers mean:

* 408/429/5xx, no connection, no answer -> :class:`TransientError` (the run retries);
* 401 -> :class:`FatalError` (the credentials; the fix named);
* 403 on an import -> :class:`DqrRefused`: DQR is not enabled for the project, or the
  user may not edit it;
* 500 "Invalid DICOM SCP Receiver ID." (and the other receiver complaints) ->
  :class:`FatalError` naming ``dqr.receiver_ae_title``/``receiver_port``;
* 404 on ``/xapi/pacs`` -> :class:`FatalError`: XNAT has no DQR plugin.

A peer that stalls, floods or lies (tests/test_dqr_hostile.py):

* every answer is read by pacsman itself, at most ``dqr.max_answer_mb`` (32 MiB; a gzip
  body counts decompressed) and within ``REQUEST_TIMEOUT`` seconds for the whole body (the
  socket's timeout bounds only each read): past either, :class:`TransientError` naming the
  request and the bound;
* an answer that is not JSON, an HTML page (XNAT's login page when its login session
  expired, or a proxy's), or JSON of another shape is :class:`TransientError` during the
  run (queue, history, import, archive reads: the run asks again) and :class:`FatalError`
  in the pre-flight (``/xapi/pacs``); bodies are never quoted, only their kind and size;
* a PACS list with a duplicate id, an entry without id or aeTitle, or no list is
  :class:`FatalError`: an import must name one PACS for certain;
* queue and history entries without a positive whole-number id are dropped; statuses
  pacsman does not know read UNKNOWN (their text kept only when it looks like one);
* ``/enabled`` answering anything but the JSON ``true``, or a script holding no
  instruction (blank lines, comments and its ``version`` line only), is "not enabled",
  with the reason (:meth:`DqrApi.anonymization_check`).

QueuedPacsRequests carry the patient's name and ID: they are read, never logged, never
put in a message; neither are DQR query criteria (removed from XNAT's error text).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3
from xnat import exceptions as xnat_errors

from pacsman.config import Config
from pacsman.dqr._model import DqrStudy, PacsEntry, QueuedRequest, RequestStatus
from pacsman.errors import FatalError, InputError, ItemFailed, PacsmanError, TransientError
from pacsman.push.credentials import resolve_credentials
from pacsman.push.xnat_rest import Rest, answer_error, logged_in

__all__ = ["DqrApi", "DqrRefused", "open_dqr_api"]

#: Seconds XNAT has to answer one DQR call (an import only queues the request): for the
#: first byte of the answer, and again for the whole of its body.
REQUEST_TIMEOUT = 60.0
MiB = 1 << 20
_CHUNK = 64 * 1024
_LONG = 2**63
_HTML = re.compile(r"\s*<(!doctype|html|head|body|\?xml)", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
#: What a status XNAT reports looks like (enum names); other text is not repeated.
_STATUS_TEXT = re.compile(r"[A-Z][A-Z_]{0,39}")
_UID = re.compile(r"[0-9][0-9.]{0,63}")
#: Columns of an archive listing pacsman indexes directly: present and non-empty.
_REQUIRED_COLUMNS = ("ID", "label")
#: DicomEdit lines that instruct nothing: blank, comments, the version line.
_NO_INSTRUCTION = re.compile(r"\s*(?://.*|#.*|version\s+\"[^\"]*\"\s*)?")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_RECEIVER_PROBLEMS = ("Invalid DICOM SCP Receiver", "custom processing", "remapping processor")
_TAGS = re.compile(r"<[^>]+>")
_H3 = re.compile(r"<h[13]>(.*?)</h[13]>", re.S)
_NO_DQR = (
    "ask the XNAT administrator to install and enable the DICOM Query-Retrieve (DQR) plugin, "
    "or use 'pacsman run', which retrieves from the PACS itself"
)


class DqrRefused(FatalError):
    """XNAT refused a DQR import for the project (403): DQR is not enabled for it, or the
    user may not edit it."""


class DqrApi:
    """One logged-in XNAT connection (one ``requests`` session) for DQR calls on ``project``.

    The bounds on what XNAT may send are the session's (:func:`open_dqr_api`).
    """

    def __init__(self, rest: Rest, project: str) -> None:
        self._rest = rest
        self.project = project
        self.url = rest.url

    # -- PACS -------------------------------------------------------------------------------

    def pacs_list(self) -> list[PacsEntry]:
        """Every PACS XNAT knows (``GET /xapi/pacs``), in XNAT's order (ids by registration).

        Raises:
            FatalError: no DQR plugin (404), no permission, or a list pacsman cannot trust
                (no list, an entry without id or aeTitle, an id twice).
            TransientError: XNAT did not answer, or answered 5xx.
        """
        request = "GET /xapi/pacs"
        answer = self._json("GET", "/xapi/pacs", what=f"listing the PACS XNAT knows ({request})")
        return _pacs_entries(answer, f"XNAT at {self.url} answered {request}")

    def pacs_status(self, pacs_id: int) -> tuple[bool, str]:
        """``(successful, detail)`` of XNAT's C-ECHO of the PACS (``/xapi/pacs/{id}/status``).

        Raises:
            FatalError: no PACS with that id (404), or no permission.
            TransientError: XNAT did not answer, or answered 5xx.
        """
        path = f"/xapi/pacs/{pacs_id}/status"
        answer = self._json("GET", path, what=f"pinging PACS {pacs_id} through XNAT (GET {path})")
        if not isinstance(answer, Mapping):
            raise self._odd(f"GET {path}", "the ping's outcome", answer)
        return _ping_outcome(answer)

    # -- query and import -------------------------------------------------------------------

    def query_studies(self, pacs_id: int, criteria: Mapping[str, str]) -> list[Mapping[str, Any]]:
        """DQR's study query at the PACS (``POST /xapi/dqr/query/studies``); [] on 204.

        ``criteria`` are ``PacsSearchCriteria`` fields (``studyInstanceUid``,
        ``accessionNumber``, ``patientId``, ``patientName``, ``studyDateStart``/``End``,
        ``modality``).  Their values are never put in a message: they identify patients
        (they are removed from XNAT's own words too).

        Raises:
            FatalError: no DQR plugin, no permission, or an answer that is no list.
            TransientError: XNAT did not answer, answered 5xx, or not with JSON.
            ItemFailed: XNAT refused the criteria (400).
        """
        body = {"pacsId": pacs_id, **criteria}
        path = "/xapi/dqr/query/studies"
        what = f"querying PACS {pacs_id} through XNAT's DQR (POST {path})"
        try:
            answer = self._json("POST", path, what=what, body=body, odd=TransientError)
        except PacsmanError as exc:
            raise type(exc)(_withheld(str(exc), criteria.values())) from None
        if answer is None:
            return []
        if not isinstance(answer, list):
            raise self._odd(f"POST {path}", "a list of studies", answer)
        return [item for item in answer if isinstance(item, Mapping)]

    def import_study(
        self, pacs_id: int, receiver: tuple[str, int], study: DqrStudy
    ) -> QueuedRequest:
        """Ask DQR to pull one study into the project (``POST /xapi/dqr/import``).

        Returns the one QueuedPacsRequest XNAT answers (a list of one, or the bare object),
        with status QUEUED, a request id, and the study asked for.

        Raises:
            DqrRefused: 403: DQR is not enabled for the project, or the user may not edit it.
            FatalError: XNAT's receiver ``receiver`` is not one XNAT knows or can relabel
                with, the PACS id is unknown, or the login was refused.
            TransientError: no answer, 5xx, or an answer other than one QUEUED request for
                the study (not JSON, an HTML page, none or several, another status or study).
            ItemFailed: XNAT refused the request itself (400).
        """
        ae_title, port = receiver
        body = {
            "pacsId": pacs_id,
            "aeTitle": ae_title,
            "port": port,
            "projectId": self.project,
            "forceImport": False,
            "studies": [_study_entry(study)],
        }
        what = (
            f"asking XNAT's DQR to import row {study.line} (session {study.session!r}) "
            "with POST /xapi/dqr/import"
        )
        response = self._send("POST", "/xapi/dqr/import", json=body)
        if response.status_code != 200:
            raise self._import_error(response, what, pacs_id, receiver)
        return _queued_answer(_decoded(response, what, TransientError), study, what)

    def queue(self) -> list[QueuedRequest]:
        """The user's requests still QUEUED or PROCESSING (``/xapi/dqr/import/queue``);
        entries without a request id are left out.

        Raises:
            TransientError: no answer, 5xx, or an answer that is no list of requests.
            FatalError: the login was refused, no permission, or no DQR plugin.
        """
        return self._requests("/xapi/dqr/import/queue", "queue", {"all": "false"})

    def history(self) -> list[QueuedRequest]:
        """The user's requests that left the queue (``/xapi/dqr/query/history/user``);
        entries without a request id are left out.

        Raises:
            TransientError, FatalError: as :meth:`queue`.
        """
        return self._requests("/xapi/dqr/query/history/user", "history", None)

    # -- the project ------------------------------------------------------------------------

    def project_status(self) -> int:
        """The status of ``GET /data/projects/<project>`` (200: the user can see it).

        Raises:
            TransientError, FatalError: no answer, no connection, untrusted TLS.
        """
        path = f"/data/projects/{quote(self.project, safe='')}"
        return self._send("GET", path, params={"format": "json"}).status_code

    def anonymization_enabled(self) -> bool:
        """True when the project has an anonymization script that instructs something AND
        it is enabled (:meth:`anonymization_check`).

        Raises:
            TransientError: XNAT did not answer, or answered 5xx (also for an unknown project).
            FatalError: no permission.
        """
        return self.anonymization_check()[0]

    def anonymization_check(self) -> tuple[bool, str]:
        """``(enabled, why)`` for the project's anonymization script.

        ``GET /xapi/anonymize/projects/{p}/enabled`` must be the bare JSON ``true``; anything
        else (``false``, a string, a number, an object, not JSON, an HTML page) is "not
        enabled".  Then ``GET /xapi/anonymize/projects/{p}`` must be 200 with a script
        holding at least one instruction: blank lines, ``//``, ``#`` and ``/* */`` comments
        and the ``version "..."`` line do not count (XNAT would run such a script and change
        nothing); 204 (no script, or disabled) and an HTML page are "not enabled".

        Raises:
            TransientError: XNAT did not answer, or answered 5xx (also for an unknown project).
            FatalError: no permission.
        """
        base = f"/xapi/anonymize/projects/{quote(self.project, safe='')}"
        what = f"reading the anonymization script of project {self.project!r}"
        response = self._send("GET", f"{base}/enabled")
        if response.status_code != 200:
            raise answer_error(response, f"{what}: GET {base}/enabled")
        enabled, problem = _parsed(response)
        if problem or not isinstance(enabled, bool):
            said = problem or f"{_kind(enabled)}, not true or false"
            return False, f"GET {base}/enabled answered {said}"
        if not enabled:
            return False, f"XNAT reports it disabled: GET {base}/enabled answered false"
        response = self._send("GET", base)
        if response.status_code == 204:
            return False, f"XNAT has none, or has it disabled: GET {base} answered 204"
        if response.status_code != 200:
            raise answer_error(response, f"{what}: GET {base}")
        if _is_html(response):
            return False, f"GET {base} answered an HTML page, not a script"
        lines = _instructions(response.text)
        if not lines:
            return False, (
                "its script holds no instruction, only blank lines, comments or its version "
                f"line: GET {base}"
            )
        return True, f"its script is enabled, {lines} instruction line(s)"

    def delete_session(self, label: str) -> None:
        """Delete the session ``label`` of the project with its files (replace_partial);
        a session that is not there is fine.

        Raises:
            TransientError: XNAT did not answer, or answered 5xx.
            FatalError: no permission.
        """
        project = quote(self.project, safe="")
        path = f"/data/projects/{project}/experiments/{quote(label, safe='')}"
        response = self._send("DELETE", path, params={"removeFiles": "true"})
        if response.status_code not in (200, 204, 404):
            raise answer_error(response, f"deleting session {label!r} of project {self.project!r}")

    def get_json(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """``GET path?format=json`` decoded, with the errors the ``xnat`` client raises for a
        404, so that :mod:`pacsman.push.xnat_rest`'s archive reads work on this connection.

        The answer must be an archive listing (``ResultSet.Result``: a list; rows that are
        no objects are dropped, cells that are not text or numbers read as empty; the
        columns ``ID`` and ``label``, when asked for, must be in every row) or an item
        (``items``: a list).

        Raises:
            XNATResponseError: 404.
            TransientError: no answer, 5xx, or an answer of another shape.
            FatalError: the login was refused, or no permission.
        """
        response = self._send("GET", path, params={**(query or {}), "format": "json"})
        what = f"reading the archive of project {self.project!r} (GET {path})"
        if response.status_code == 404:
            raise xnat_errors.XNATResponseError(f"GET {path} answered 404 (status 404)", response)
        if response.status_code != 200:
            raise answer_error(response, what)
        columns = (query or {}).get("columns", "").split(",")
        return _archive_answer(_decoded(response, what, TransientError), what, columns)

    # -- helpers ----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> requests.Response:
        """``method path``: the answer, read whole (by the session's :class:`_BoundedReader`).
        Every error names the request.

        Raises:
            TransientError: no answer, a flood, a trickle, a connection lost mid-answer, a
                redirect loop.
            FatalError: the TLS certificate is not trusted.
        """
        request = f"{method} {path}"
        try:
            response = self._rest.send(method, path, params=params, json=json)
        except ItemFailed as exc:  # a redirect loop...: the transport's fault, not the item's
            raise TransientError(f"{request}: {str(exc).rstrip('.')}; asking again later") from None
        except PacsmanError as exc:
            if request in str(exc):
                raise
            raise type(exc)(f"{request}: {exc}") from None
        if response.encoding is None:  # else .text guesses it, slowly, from the whole body
            response.encoding = "utf-8"
        return response

    def _json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: object = None,
        params: Mapping[str, str] | None = None,
        odd: type[PacsmanError] = FatalError,
    ) -> Any:
        """XNAT's decoded JSON answer, ``None`` for 204; ``odd`` for an answer that is not
        JSON."""
        response = self._send(method, path, json=body, params=params)
        if response.status_code == 204:
            return None
        if response.status_code == 200:
            return _decoded(response, what, odd)
        if response.status_code == 404 and path.startswith(("/xapi/pacs", "/xapi/dqr")):
            raise _not_found(response, what, path)
        if response.status_code == 400:
            raise ItemFailed(f"{what}: XNAT refused the request (400: {_said(response)})")
        raise answer_error(response, what)

    def _requests(
        self, path: str, name: str, params: Mapping[str, str] | None
    ) -> list[QueuedRequest]:
        what = f"reading XNAT's DQR {name} (GET {path})"
        answer = self._json("GET", path, what=what, params=params, odd=TransientError)
        if answer is None:
            return []
        if not isinstance(answer, list):
            raise TransientError(
                f"{what}: XNAT answered {_kind(answer)}, not a list of requests; asking again later"
            )
        found = [_request(item) for item in answer if isinstance(item, Mapping)]
        return [request for request in found if request.id > 0]

    def _import_error(
        self, response: requests.Response, what: str, pacs_id: int, receiver: tuple[str, int]
    ) -> PacsmanError:
        status, said = response.status_code, _said(response)
        if status == 403:
            return DqrRefused(
                f"{what}: XNAT refused it (403: {said}): DQR is not enabled for project "
                f"{self.project!r}, or the XNAT user may not edit it; an XNAT administrator "
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

    def _odd(self, request: str, expected: str, answer: object) -> FatalError:
        return FatalError(
            f"XNAT at {self.url} answered {request} with {_kind(answer)}, not {expected}; "
            "is xnat.url the address of XNAT, with its DQR plugin?"
        )


@contextmanager
def open_dqr_api(config: Config) -> Iterator[DqrApi]:
    """Log in to ``xnat.url`` as the push does and yield the DQR connection for
    ``xnat.project``; it logs out when the block ends.

    The login is the push's probe (:func:`pacsman.push.xnat_rest.logged_in`: XNAT's own
    status decides, TLS as configured); the DQR calls then go through a session of their
    own that reads at most ``dqr.max_answer_mb`` of each answer, within REQUEST_TIMEOUT
    (:class:`_BoundedReader`).

    Raises:
        InputError: ``xnat.url`` or ``xnat.project`` is not set, or no credentials are found.
        FatalError: the login was refused, there is no XNAT at the URL, or TLS is not trusted.
        TransientError: XNAT did not answer the login.
    """
    url, project = config.xnat.url, config.xnat.project
    if url is None:
        raise InputError("xnat.url is not set; add xnat: {url: https://your.xnat} to the config")
    if project is None:
        raise InputError(
            "xnat.project is not set: pacsman dqr imports into that XNAT project; "
            "add xnat: {project: MY_PROJECT} to the config"
        )
    credentials = resolve_credentials(url, credentials_file=config.xnat.credentials_file)
    timeout = REQUEST_TIMEOUT
    with logged_in(config.xnat, credentials, timeout=timeout) as probe, requests.Session() as http:
        what = f"XNAT at {probe.url}"
        http.auth = (credentials.user, credentials.password)
        http.stream = True  # nothing is read before the reader below
        reader = _BoundedReader(what, config.dqr.max_answer_mb * MiB, timeout)
        http.hooks["response"].append(reader)  # every answer, redirects too
        rest = Rest(http, probe.url, what, timeout=timeout, verify=probe.verify)
        try:
            yield DqrApi(rest, project)
        finally:
            with suppress(PacsmanError):  # a courtesy; never hides the run's own outcome
                rest.logout()


class _Body(io.BytesIO):
    """The body :class:`_BoundedReader` read, where ``requests`` reads ``.content`` from,
    with the HTTP message it takes the cookies from (``_original_response``: XNAT's login
    session, JSESSIONID, so that XNAT does not open a new one for every request)."""

    def __init__(self, body: bytes, original: object) -> None:
        super().__init__(body)
        self._original_response = original


class _BoundedReader:
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


def _is_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    return kind.startswith(("text/html", "application/xhtml")) or bool(
        _HTML.match(response.content[:200].decode("utf-8", errors="replace"))
    )


def _parsed(response: requests.Response) -> tuple[Any, str]:
    """The JSON in ``response``, or ``(None, what it is instead)``: an HTML page (with its
    title) or not JSON (with its size).  The body itself is never quoted: it may carry
    patients' names."""
    if _is_html(response):
        match = _TITLE.search(response.content[:4096].decode("utf-8", errors="replace"))
        title = _short(_TAGS.sub("", match.group(1)), 60) if match else ""
        shown = f" ({title!r})" if title else ""
        return None, (
            f"an HTML page{shown} instead of JSON: its login page, when XNAT's login session "
            "expired or a proxy in front of XNAT asks to log in"
        )
    try:
        return json.loads(response.content), ""
    except (ValueError, RecursionError):
        return None, f"not JSON ({len(response.content)} bytes)"


def _decoded(response: requests.Response, what: str, odd: type[PacsmanError]) -> Any:
    """The JSON in ``response``.

    Raises:
        PacsmanError: of type ``odd`` when it is not JSON (or an HTML page).
    """
    answer, problem = _parsed(response)
    if problem:
        hint = "" if _is_html(response) else "; is xnat.url the address of XNAT?"
        again = "; asking again later" if issubclass(odd, TransientError) else ""
        raise odd(f"{what}: XNAT answered {response.status_code} with {problem}{hint}{again}")
    return answer


def _kind(value: object) -> str:
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


def _said(response: requests.Response, withheld: Iterable[str] = ()) -> str:
    """XNAT's own words: its status page's heading, else the body, else the reason (with
    the ``withheld`` values taken out before it is shortened)."""
    text = response.text or ""
    match = _H3.search(text)
    words = _withheld(_TAGS.sub("", match.group(1) if match else text).strip(), withheld)
    return _short(words or response.reason or "no reason given", 200)


def _withheld(text: str, values: Iterable[str]) -> str:
    """``text`` without any of ``values`` (query criteria: names, IDs)."""
    for value in sorted({v.strip() for v in values if len(v.strip()) >= 2}, key=len, reverse=True):
        text = text.replace(value, "[withheld]")
    return text


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _not_found(response: requests.Response, what: str, path: str) -> FatalError:
    if re.fullmatch(r"/xapi/pacs/\d+(/status)?", path):
        return FatalError(
            f"{what}: XNAT knows no such PACS (404: {_said(response)}); give an id from "
            "GET /xapi/pacs (--pacs-id or dqr.pacs_id), or the AE title (--pacs-ae)"
        )
    return FatalError(f"{what}: XNAT answered 404 for {path}: it has no DQR plugin; {_NO_DQR}")


def _pacs_entries(answer: object, said: str) -> list[PacsEntry]:
    """The PACS list, if pacsman can trust it: a list of objects, each with a positive id
    and an aeTitle, no id twice.

    Raises:
        FatalError: naming each problem (at most five) and the fix.
    """
    if not isinstance(answer, list):
        raise FatalError(
            f"{said} with {_kind(answer)}, not a list of PACS; is xnat.url the address of "
            "XNAT, with its DQR plugin?"
        )
    problems, entries = [], []
    for number, item in enumerate(answer, 1):
        if not isinstance(item, Mapping):
            problems.append(f"entry {number} is not a PACS ({_kind(item)})")
            continue
        entry = _pacs_entry(item)
        if entry.id <= 0:
            problems.append(f"entry {number} has no id (a positive whole number)")
        if not entry.ae_title.strip():
            problems.append(f"entry {number} has no aeTitle")
        entries.append(entry)
    counts = Counter(e.id for e in entries if e.id > 0)
    problems += [f"id {i} {_times(n)}" for i, n in counts.items() if n > 1]
    if problems:
        raise FatalError(
            f"{said} with a PACS list pacsman cannot trust: {'; '.join(problems[:5])}; an "
            "import must name one PACS for certain, so nothing is imported; ask the XNAT "
            "administrator to check the DQR plugin's PACS settings"
        )
    return entries


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


def _pacs_entry(item: Mapping[str, Any]) -> PacsEntry:
    return PacsEntry(
        id=_int(item.get("id")),
        ae_title=_cell(item.get("aeTitle")),
        label=_cell(item.get("label")),
        host=_cell(item.get("host")),
        port=_int(item.get("queryRetrievePort")),
        queryable=item.get("queryable") is not False,
        default_query_retrieve=item.get("defaultQueryRetrievePacs") is True,
    )


def _int(value: object) -> int:
    """A whole number from XNAT (an int, or its digits as text) that a 64-bit integer
    column holds (XNAT's ids are Java longs); 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if -_LONG < value < _LONG else 0
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.isdigit() and len(text) < 19 else 0


def _cell(value: object) -> str:
    """Text from XNAT (a string or a number); "" for anything else (lists, objects, null)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value).strip()
    return ""


def _ping_outcome(answer: Mapping[str, Any]) -> tuple[bool, str]:
    if answer.get("enabled") is False:
        return False, "XNAT has this PACS disabled"
    if answer.get("successful") is not True:
        return False, "XNAT's C-ECHO of the PACS failed"
    ping = answer.get("pingTime")
    timed = f" in {ping} ms" if isinstance(ping, int | float) and not isinstance(ping, bool) else ""
    return True, f"XNAT's C-ECHO of the PACS succeeded{timed}"


def _study_entry(study: DqrStudy) -> dict[str, Any]:
    return {
        "studyInstanceUid": study.study_instance_uid,
        "seriesInstanceUids": [],
        "seriesDescriptions": [],
        "relabelMap": {"Subject": study.subject, "Session": study.session},
    }


def _request(item: Mapping[str, Any]) -> QueuedRequest:
    raw = item.get("status")
    status = RequestStatus.parse(raw) if isinstance(raw, str) else RequestStatus.UNKNOWN
    text = raw.strip() if isinstance(raw, str) else ""
    known = status is not RequestStatus.UNKNOWN or not _STATUS_TEXT.fullmatch(text)
    uid = item.get("studyInstanceUid")
    return QueuedRequest(
        id=_int(item.get("id")),
        study_instance_uid=uid.strip() if isinstance(uid, str) else "",
        status=status,
        status_text="" if known else text,
    )


def _queued_answer(answer: object, study: DqrStudy, what: str) -> QueuedRequest:
    """The one QUEUED request for ``study`` XNAT must answer an import with (a list of one,
    or the bare object).

    Raises:
        TransientError: anything else (counted as an attempt; the run asks again).
    """
    items = [answer] if isinstance(answer, Mapping) else answer
    if not isinstance(items, list):
        raise TransientError(
            f"{what}: XNAT answered {_kind(answer)} where a list with one QueuedPacsRequest "
            "was expected; asking again later"
        )
    if len(items) == 1 and not isinstance(items[0], Mapping):
        raise TransientError(
            f"{what}: XNAT answered 1 entry that is not a QueuedPacsRequest "
            f"({_kind(items[0])}); asking again later"
        )
    if len(items) != 1:
        ids = [_int(i.get("id")) for i in items if isinstance(i, Mapping)]
        shown = ", ".join(str(i) for i in ids[:5] if i > 0)
        raise TransientError(
            f"{what}: XNAT answered {len(items)} requests{f' (ids {shown})' if shown else ''} "
            "where one QueuedPacsRequest was expected; asking again later (an XNAT "
            "administrator may remove the extra ones from the DQR queue)"
        )
    return _checked(_request(items[0]), study, what)


def _checked(request: QueuedRequest, study: DqrStudy, what: str) -> QueuedRequest:
    if request.id <= 0:
        raise TransientError(
            f"{what}: XNAT's answer has no request id (a positive whole number), so pacsman "
            "cannot follow it; asking again later"
        )
    if request.status is not RequestStatus.QUEUED:
        shown = request.status_text or request.status.value
        raise TransientError(
            f"{what}: XNAT answered request {request.id} with status {shown!r} where QUEUED "
            "was expected; asking again later"
        )
    uid = request.study_instance_uid
    if uid and uid != study.study_instance_uid:
        shown = uid if _UID.fullmatch(uid) else "(not a UID)"
        raise TransientError(
            f"{what}: XNAT queued request {request.id} for StudyInstanceUID {shown}, not "
            f"{study.study_instance_uid}; asking again later"
        )
    return request


def _archive_answer(answer: object, what: str, columns: Iterable[str]) -> Any:
    """An archive answer in the shape :mod:`pacsman.push._xnat_state` reads, or why not.

    Raises:
        TransientError: neither a ResultSet with a list of rows nor items; a row without a
            required column.
    """
    if isinstance(answer, Mapping) and isinstance(answer.get("items"), list):
        return answer
    result = answer.get("ResultSet") if isinstance(answer, Mapping) else None
    rows = result.get("Result") if isinstance(result, Mapping) else None
    if not isinstance(rows, list):
        raise TransientError(
            f"{what}: XNAT answered {_kind(answer)} that is neither an archive listing "
            "(ResultSet.Result, a list) nor an item (items); asking again later"
        )
    cleaned = [
        {str(k): _cell(v) for k, v in row.items()} for row in rows if isinstance(row, Mapping)
    ]
    required = [c for c in _REQUIRED_COLUMNS if c in columns]
    for number, row in enumerate(cleaned, 1):
        missing = [c for c in required if not row.get(c)]
        if missing:
            raise TransientError(
                f"{what}: row {number} of XNAT's listing has no {', '.join(missing)}; asking "
                "again later"
            )
    return {"ResultSet": {"Result": cleaned}}


def _instructions(script: str) -> int:
    """How many lines of a DicomEdit script instruct something."""
    text = _BLOCK_COMMENT.sub("\n", script)
    return sum(1 for line in text.splitlines() if not _NO_INSTRUCTION.fullmatch(line))
