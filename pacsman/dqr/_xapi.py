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

A peer that stalls, floods or lies (tests/test_dqr_hostile.py): every answer is read whole
by pacsman, bounded in size and time (:mod:`._answers`), and must have the shape its
endpoint promises (:mod:`._shapes`).  An answer that is not JSON, an HTML page or JSON of
another shape is :class:`TransientError` during the run (queue, history, import, archive
reads: the run asks again) and :class:`FatalError` in the pre-flight (``/xapi/pacs``).

QueuedPacsRequests carry the patient's name and ID: they are read, never logged, never
put in a message; neither are DQR query criteria (removed from XNAT's error text).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

import requests
from xnat import exceptions as xnat_errors

from pacsman.config import Config
from pacsman.dqr._answers import (
    BoundedReader,
    DqrRefused,
    MiB,
    decoded,
    import_refusal,
    is_html,
    kind_of,
    not_found,
    own_words,
    parsed,
    withhold,
)
from pacsman.dqr._model import DqrStudy, PacsEntry, QueuedRequest
from pacsman.dqr._shapes import (
    archive_answer,
    instructions,
    pacs_entries,
    ping_outcome,
    queued_answer,
    queued_request,
    study_entry,
)
from pacsman.errors import FatalError, InputError, ItemFailed, PacsmanError, TransientError
from pacsman.push.credentials import resolve_credentials
from pacsman.push.xnat_rest import Rest, answer_error, logged_in

__all__ = ["DqrApi", "DqrRefused", "open_dqr_api"]

#: Seconds XNAT has to answer one DQR call (an import only queues the request): for the
#: first byte of the answer, and again for the whole of its body.
REQUEST_TIMEOUT = 60.0


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
        return pacs_entries(answer, f"XNAT at {self.url} answered {request}")

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
        return ping_outcome(answer)

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
            raise type(exc)(withhold(str(exc), criteria.values())) from None
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
            "studies": [study_entry(study)],
        }
        what = (
            f"asking XNAT's DQR to import row {study.line} (session {study.session!r}) "
            "with POST /xapi/dqr/import"
        )
        response = self._send("POST", "/xapi/dqr/import", json=body)
        if response.status_code != 200:
            raise import_refusal(response, what, self.project, pacs_id, receiver)
        return queued_answer(decoded(response, what, TransientError), study, what)

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
        enabled, problem = parsed(response)
        if problem or not isinstance(enabled, bool):
            said = problem or f"{kind_of(enabled)}, not true or false"
            return False, f"GET {base}/enabled answered {said}"
        if not enabled:
            return False, f"XNAT reports it disabled: GET {base}/enabled answered false"
        response = self._send("GET", base)
        if response.status_code == 204:
            return False, f"XNAT has none, or has it disabled: GET {base} answered 204"
        if response.status_code != 200:
            raise answer_error(response, f"{what}: GET {base}")
        if is_html(response):
            return False, f"GET {base} answered an HTML page, not a script"
        lines = instructions(response.text)
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
        return archive_answer(decoded(response, what, TransientError), what, columns)

    # -- helpers ----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> requests.Response:
        """``method path``: the answer, read whole (by the session's :class:`BoundedReader`).
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
            return decoded(response, what, odd)
        if response.status_code == 404 and path.startswith(("/xapi/pacs", "/xapi/dqr")):
            raise not_found(response, what, path)
        if response.status_code == 400:
            raise ItemFailed(f"{what}: XNAT refused the request (400: {own_words(response)})")
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
                f"{what}: XNAT answered {kind_of(answer)}, not a list of requests; asking "
                "again later"
            )
        found = [queued_request(item) for item in answer if isinstance(item, Mapping)]
        return [request for request in found if request.id > 0]

    def _odd(self, request: str, expected: str, answer: object) -> FatalError:
        return FatalError(
            f"XNAT at {self.url} answered {request} with {kind_of(answer)}, not {expected}; "
            "is xnat.url the address of XNAT, with its DQR plugin?"
        )


@contextmanager
def open_dqr_api(config: Config) -> Iterator[DqrApi]:
    """Log in to ``xnat.url`` as the push does and yield the DQR connection for
    ``xnat.project``; it logs out when the block ends.

    The login is the push's probe (:func:`pacsman.push.xnat_rest.logged_in`: XNAT's own
    status decides, TLS as configured); the DQR calls then go through a session of their
    own that reads at most ``dqr.max_answer_mb`` of each answer, within REQUEST_TIMEOUT
    (:class:`BoundedReader`).

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
        reader = BoundedReader(what, config.dqr.max_answer_mb * MiB, timeout)
        http.hooks["response"].append(reader)  # every answer, redirects too
        rest = Rest(http, probe.url, what, timeout=timeout, verify=probe.verify)
        try:
            yield DqrApi(rest, project)
        finally:
            with suppress(PacsmanError):  # a courtesy; never hides the run's own outcome
                rest.logout()
