"""``pacsman dqr``'s XNAT side against an XNAT that stalls, floods or lies (issue 16 A).

A small hostile XNAT of the test's own (``http.server`` on 127.0.0.1, an OS-chosen port, in
a thread) answers the login as XNAT does (``GET /data/auth``) and every other route as each
test says: lying import answers, floods of many MB or of hundreds of thousands of entries,
a gzip bomb, a peer that accepts and never answers or trickles its answer, a PACS list that
cannot be trusted, anonymization answers that only look enabled, and an archive whose
session has the right label but another subject or study.

What must hold in each case: a :class:`TransientError` (the run asks again later) or a
:class:`FatalError`/:class:`InputError` (the run stops with the fix) whose message names
the endpoint; never another exception, never a wait beyond the timeouts, never more read
than ``dqr.max_answer_mb``; and no patient name or ID from any XNAT answer in any log event
or message (every test's log events are checked).
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from pacsman.anonymize import MappingTable
from pacsman.cli import main
from pacsman.config import Config, parse_config
from pacsman.config._yaml import load_yaml
from pacsman.dqr import _xapi
from pacsman.dqr._arrival import check_arrival, labels_taken
from pacsman.dqr._model import ArrivalVerdict, DqrState, DqrStudy, PacsEntry, RequestStatus
from pacsman.dqr._preflight import preflight
from pacsman.dqr._resolve import resolve_studies
from pacsman.dqr._xapi import DqrApi, open_dqr_api
from pacsman.errors import EXIT_OK, FatalError, InputError, ItemFailed, PacsmanError, TransientError
from pacsman.jobstore import JobStore
from pacsman.jobstore.dqr import DqrLedger
from pacsman.models import QueryRow
from pacsman.testing.net import free_port
from tests.helpers import write_config, write_queryfile

MiB = 1 << 20
UID = "1.2.826.0.1.3680043.8.498.1001"
OTHER_UID = "1.2.826.0.1.3680043.8.498.2002"
#: What identifies the patient in the hostile answers: it may reach no log event, no message.
PATIENT_NAME = "Hostile^Harriet"
PATIENT_ID = "PID-8472-SECRET"
PHI = (PATIENT_NAME, PATIENT_ID, "Harriet", "8472")
STUDY = DqrStudy(line=2, study_instance_uid=UID, subject="SUBJ01", session="SESS01")
#: Seconds a stalled or trickling answer may take in these tests (REQUEST_TIMEOUT is set to
#: STALL for them); each such test must end within BOUND.
STALL = 0.5
BOUND = 5.0

Answer = Callable[[BaseHTTPRequestHandler, bytes], None]


# -- the hostile XNAT ------------------------------------------------------------------------------


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> None:
    """One whole answer with its Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def as_json(value: Any, status: int = 200) -> Answer:
    """Answer ``value`` as JSON."""
    body = json.dumps(value).encode()
    return lambda handler, _: send(handler, status, body)


def as_text(text: str, status: int = 200, content_type: str = "text/plain") -> Answer:
    """Answer ``text`` as is."""
    return lambda handler, _: send(handler, status, text.encode(), content_type)


def request_entry(
    request_id: Any = 7, status: Any = "QUEUED", uid: Any = UID, **more: Any
) -> dict[str, Any]:
    """One QueuedPacsRequest as XNAT writes it, with the patient's name and ID in it."""
    return {
        "id": request_id,
        "username": "admin",
        "pacsId": 1,
        "xnatProject": "P1",
        "studyInstanceUid": uid,
        "seriesIds": [],
        "destinationAeTitle": "XNAT:8104",
        "status": status,
        "priority": 10,
        "queuedTime": 1765000000000,
        "studyDate": "20240105",
        "accessionNumber": "ACC1",
        "patientId": PATIENT_ID,
        "patientName": PATIENT_NAME,
        **more,
    }


def import_answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """XNAT's honest import answer: one QUEUED request for the study asked for."""
    asked = json.loads(body)["studies"][0]["studyInstanceUid"]
    send(handler, 200, json.dumps([request_entry(uid=asked)]).encode())


def result_set(*rows: Mapping[str, Any]) -> Answer:
    """An XNAT listing (``ResultSet.Result``)."""
    return as_json({"ResultSet": {"Result": list(rows), "totalRecords": str(len(rows))}})


class HostileXnat:
    """An XNAT-like server whose every route a test may replace (``answer``).

    By default it answers as an honest XNAT with DQR would for project P1: one PACS, a
    successful ping, an enabled anonymization script, an empty queue and history, no
    sessions.  ``release`` ends every stalled or trickling answer (at the latest when the
    server stops).
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[str] = []
        self.routes: dict[tuple[str, str], Answer] = {
            ("GET", "/data/auth"): as_text("User 'admin' is logged in"),
            ("GET", "/data/projects/P1"): as_json({"items": []}),
            ("GET", "/xapi/pacs"): as_json(
                [
                    {
                        "id": 1,
                        "aeTitle": "ORTHANC",
                        "host": "127.0.0.1",
                        "queryRetrievePort": 4242,
                        "label": "Hospital PACS",
                        "queryable": True,
                        "storable": False,
                        "defaultQueryRetrievePacs": True,
                    }
                ]
            ),
            ("GET", "/xapi/pacs/1/status"): as_json(
                {"pacsId": 1, "successful": True, "enabled": True, "pingTime": 3}
            ),
            ("GET", "/xapi/anonymize/projects/P1/enabled"): as_json(True),
            ("GET", "/xapi/anonymize/projects/P1"): as_text('version "6.1"\n(0010,0010) := ""\n'),
            ("POST", "/xapi/dqr/import"): import_answer,
            ("GET", "/xapi/dqr/import/queue"): as_json([]),
            ("GET", "/xapi/dqr/query/history/user"): as_json([]),
            ("GET", "/data/projects/P1/experiments"): result_set(),
        }
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                owner.dispatch(self, "GET")

            def do_POST(self) -> None:
                owner.dispatch(self, "POST")

            def do_PUT(self) -> None:
                owner.dispatch(self, "PUT")

            def do_DELETE(self) -> None:
                owner.dispatch(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, method: str, path: str, answer: Answer) -> None:
        """Answer ``method path`` (query string ignored) with ``answer`` from now on."""
        self.routes[(method, path)] = answer

    def dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        self.seen.append(f"{method} {path}")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if not handler.headers.get("Authorization"):
            send(handler, 401, b"login required", "text/plain")
            return
        route = self.routes.get((method, path))
        try:
            if route is None:
                send(handler, 404, f"no route {method} {path}".encode(), "text/plain")
            else:
                route(handler, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # pacsman hung up on a flood or a trickle: that is the point

    def __enter__(self) -> HostileXnat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=BOUND)


def stall(xnat: HostileXnat) -> Answer:
    """Accept the request and never answer (until the server stops)."""
    return lambda handler, _: xnat.release.wait(30.0) and None


def trickle(xnat: HostileXnat, every: float = 0.05) -> Answer:
    """Send the status and headers, then one byte of the body every ``every`` seconds."""

    def answer(handler: BaseHTTPRequestHandler, _: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(b"[")
        deadline = time.monotonic() + 30.0
        while not xnat.release.wait(every) and time.monotonic() < deadline:
            handler.wfile.write(b" ")
            handler.wfile.flush()

    return answer


def flood(total: int, *, declared: bool, entry: bytes = b'{"id":1,"status":"QUEUED"},') -> Answer:
    """A JSON list of ``total`` bytes, its length declared or not (then the end of the
    connection ends it)."""

    def answer(handler: BaseHTTPRequestHandler, _: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declared:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        block = entry * (64 * 1024 // len(entry))
        handler.wfile.write(b"[")
        written = 1
        while written + len(block) < total - 1:
            handler.wfile.write(block)
            written += len(block)
        handler.wfile.write(b'{"id":2}]')

    return answer


def gzip_bomb(expanded: int) -> Answer:
    """A small gzip body that expands to ``expanded`` bytes of JSON whitespace."""
    packed = gzip.compress(b"[" + b" " * (expanded - 2) + b"]", compresslevel=9)

    def answer(handler: BaseHTTPRequestHandler, _: bytes) -> None:
        send(handler, 200, packed, headers={"Content-Encoding": "gzip"})

    return answer


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    monkeypatch.setenv("NETRC", "/nonexistent-netrc")


@pytest.fixture(autouse=True)
def events() -> Iterator[list[dict[str, Any]]]:
    """Every log event of the test; none may carry the patient's name or ID."""
    with capture_logs() as captured:
        yield captured
    assert [] == [word for word in PHI if word in repr(captured)]


@pytest.fixture
def xnat() -> Iterator[HostileXnat]:
    """The hostile XNAT, honest until a test says otherwise."""
    with HostileXnat() as running:
        yield running


def make_config(xnat: HostileXnat, *, dqr: Mapping[str, Any] | None = None, **more: Any) -> Config:
    """A config for project P1 at the hostile XNAT."""
    data = {
        "pacs": {"demo": {"host": "127.0.0.1", "port": free_port(), "called_ae_title": "ORTHANC"}},
        "xnat": {"url": xnat.url, "project": "P1", **more},
        "dqr": dict(dqr or {}),
    }
    return parse_config(load_yaml(yaml.safe_dump(data)), source="t.yaml")


@pytest.fixture
def config(xnat: HostileXnat) -> Config:
    """Project P1 at the hostile XNAT, answers bounded to 1 MiB."""
    return make_config(xnat, dqr={"max_answer_mb": 1})


@pytest.fixture
def api(config: Config) -> Iterator[DqrApi]:
    """A logged-in DQR connection to the hostile XNAT."""
    with open_dqr_api(config) as opened:
        yield opened


def message(caught: pytest.ExceptionInfo[PacsmanError], *words: str) -> str:
    """The error's message: it names each of ``words`` and no PHI."""
    text = str(caught.value)
    assert [] == [word for word in PHI if word in text], text
    assert [] == [word for word in words if word not in text], text
    return text


# -- the import answer lies ------------------------------------------------------------------------


IMPORT = ("POST", "/xapi/dqr/import")


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (as_json([request_entry(7), request_entry(8)]), "2 requests (ids 7, 8)"),
        (as_json([]), "0 requests"),
        (as_json([request_entry(status="PROCESSING")]), "status 'PROCESSING'"),
        (as_json([request_entry(status="Complete^Harriet")]), "status 'UNKNOWN'"),
        (as_json([request_entry(uid=OTHER_UID)]), f"StudyInstanceUID {OTHER_UID}, not {UID}"),
        (as_json([request_entry(request_id="seven")]), "no request id"),
        (as_json([request_entry(request_id=None)]), "no request id"),
        (as_json([request_entry(request_id=10**20)]), "no request id"),
        (as_json({"error": PATIENT_NAME}), "no request id"),
        (as_json(["QUEUED"]), "1 entry that is not a QueuedPacsRequest"),
        (as_text(json.dumps([request_entry()])[:90]), "not JSON"),
        (as_text(f"patient {PATIENT_NAME} queued"), "not JSON"),
        (as_text("[" * 100_000 + "]" * 100_000), "not JSON"),
        (
            as_text(
                "<html><head><title>XNAT -- Login</title></head><body>Please log in</body></html>",
                content_type="text/html",
            ),
            "an HTML page ('XNAT -- Login') instead of JSON: its login page",
        ),
    ],
    ids=[
        "two-entries",
        "empty-list",
        "processing",
        "unknown-status",
        "other-study",
        "id-not-an-int",
        "id-missing",
        "id-beyond-a-long",
        "object",
        "list-of-strings",
        "cut-json",
        "plain-text",
        "nested-deep",
        "login-page",
    ],
)
def test_an_import_answer_that_lies_is_asked_again(
    xnat: HostileXnat, api: DqrApi, answer: Answer, said: str
) -> None:
    """Anything but one QUEUED request for the study asked for is a TransientError (the run
    counts the attempt and asks again), naming the endpoint and what was wrong."""
    xnat.answer(*IMPORT, answer)
    with pytest.raises(TransientError) as caught:
        api.import_study(1, ("XNAT", 8104), STUDY)
    message(caught, "POST /xapi/dqr/import", "row 2", said)


def test_an_honest_import_answer_and_a_bare_object_are_one_request(
    xnat: HostileXnat, api: DqrApi
) -> None:
    """One QUEUED request is taken, also when XNAT answers it as a bare object."""
    assert 7 == api.import_study(1, ("XNAT", 8104), STUDY).id
    xnat.answer(*IMPORT, as_json(request_entry(9)))
    taken = api.import_study(1, ("XNAT", 8104), STUDY)
    assert (9, RequestStatus.QUEUED) == (taken.id, taken.status)


# -- queue and history: floods and garbage ---------------------------------------------------------


QUEUE = ("GET", "/xapi/dqr/import/queue")
HISTORY = ("GET", "/xapi/dqr/query/history/user")


@pytest.mark.parametrize("declared", [True, False], ids=["length-declared", "no-length"])
def test_a_flood_is_cut_at_the_cap(xnat: HostileXnat, api: DqrApi, declared: bool) -> None:
    """40 MiB where 1 MiB is allowed: reading stops at the cap (at once when the length is
    declared), a TransientError naming the endpoint, the cap and the key to raise it."""
    xnat.answer(*HISTORY, flood(40 * MiB, declared=declared))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransientError) as caught:
            api.history()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < BOUND
    assert peak < 4 * MiB
    message(caught, "GET /xapi/dqr/query/history/user", "1 MiB", "dqr.max_answer_mb")


def test_a_redirect_that_floods_is_cut_too(xnat: HostileXnat, api: DqrApi) -> None:
    """A 302 with 40 MiB in its body (``requests`` would read a redirect's body whole before
    following it): cut at the cap all the same."""

    def redirect(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.send_response(302)
        handler.send_header("Location", "/xapi/dqr/import/queue")
        handler.send_header("Content-Type", "text/html")
        handler.end_headers()
        block = b"<p>moved</p>" * 5000
        for _ in range(40 * MiB // len(block)):
            handler.wfile.write(block)

    xnat.answer(*HISTORY, redirect)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        api.history()
    assert time.monotonic() - started < BOUND
    message(caught, "GET /xapi/dqr/query/history/user", "1 MiB", "dqr.max_answer_mb")
    assert "GET /xapi/dqr/import/queue" not in xnat.seen


def short_answer(handler: BaseHTTPRequestHandler, _: bytes) -> None:
    """Announce 1,000 bytes, send one, hang up."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"[")


def redirect_loop(handler: BaseHTTPRequestHandler, _: bytes) -> None:
    """Send the client back where it came from, for ever."""
    send(handler, 302, b"", headers={"Location": handler.path})


@pytest.mark.parametrize(
    "answer", [short_answer, redirect_loop], ids=["short-answer", "redirect-loop"]
)
def test_a_broken_answer_is_transient(xnat: HostileXnat, api: DqrApi, answer: Answer) -> None:
    """An answer shorter than it announced, or a redirect loop: a TransientError naming the
    request (never the ItemFailed the transport would make of a loop)."""
    xnat.answer(*QUEUE, answer)
    with pytest.raises(TransientError) as caught:
        api.queue()
    message(caught, "GET /xapi/dqr/import/queue")


def test_the_default_cap_holds_against_a_gzip_bomb(xnat: HostileXnat) -> None:
    """A 60 KiB gzip body that expands to 48 MiB: cut at the default 32 MiB, decompressed."""
    xnat.answer(*QUEUE, gzip_bomb(48 * MiB))
    started = time.monotonic()
    with open_dqr_api(make_config(xnat)) as api, pytest.raises(TransientError) as caught:
        api.queue()
    assert time.monotonic() - started < BOUND
    message(caught, "GET /xapi/dqr/import/queue", "32 MiB", "dqr.max_answer_mb")


def test_hundreds_of_thousands_of_garbage_entries(xnat: HostileXnat, api: DqrApi) -> None:
    """300,000 entries, most with a missing or garbage id, an unknown status or no fields at
    all, within the cap: only requests with an id are kept; unknown statuses read UNKNOWN
    (kept short); nothing crashes, and it takes well under the bound."""
    garbage: list[Any] = [
        {"id": "x", "status": "QUEUED"},
        {"status": "QUEUED", "patientName": PATIENT_NAME},
        {"id": -3},
        {"id": True},
        {"id": 1.5},
        None,
        "QUEUED",
        17,
        [1, 2],
        {"id": {"nested": 1}},
        {"id": 10**20, "status": "QUEUED"},
    ]
    entries = [garbage[n % len(garbage)] for n in range(300_000)]
    entries[1000] = request_entry(41, status="ISSUED")
    entries[2000] = request_entry("42", status={"weird": PATIENT_ID})
    entries[3000] = request_entry(43, status="x" * 500, uid=None)
    body = json.dumps(entries).encode()
    assert len(body) < 8 * MiB
    xnat.answer(*HISTORY, lambda handler, _: send(handler, 200, body))
    started = time.monotonic()
    with open_dqr_api(make_config(xnat, dqr={"max_answer_mb": 8})) as big:
        found = big.history()
    assert time.monotonic() - started < BOUND
    assert [41, 42, 43] == [r.id for r in found]
    assert [RequestStatus.ISSUED, RequestStatus.UNKNOWN, RequestStatus.UNKNOWN] == [
        r.status for r in found
    ]
    assert [UID, UID, ""] == [r.study_instance_uid for r in found]
    assert all(len(r.status_text) <= 40 for r in found)
    assert PATIENT_ID not in found[1].status_text


@pytest.mark.parametrize("route", [QUEUE, HISTORY], ids=["queue", "history"])
@pytest.mark.parametrize(
    "answer",
    [
        as_json({"items": []}),
        as_text("not json at all"),
        as_text("<html><title>Login</title></html>", content_type="text/html"),
        as_json(PATIENT_NAME),
    ],
    ids=["object", "text", "login-page", "string"],
)
def test_an_odd_poll_answer_is_transient(
    xnat: HostileXnat, api: DqrApi, route: tuple[str, str], answer: Answer
) -> None:
    """Mid-run, an answer to a poll that is not a list is a TransientError (the run polls
    again), never a FatalError that would end a run of hundreds of studies."""
    xnat.answer(*route, answer)
    poll = api.queue if route == QUEUE else api.history
    with pytest.raises(TransientError) as caught:
        poll()
    message(caught, f"GET {route[1]}")


# -- stalls ----------------------------------------------------------------------------------------


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DQR call waits at most STALL seconds for XNAT."""
    monkeypatch.setattr(_xapi, "REQUEST_TIMEOUT", STALL)


@pytest.mark.usefixtures("short_timeout")
@pytest.mark.parametrize(
    ("route", "call"),
    [
        (QUEUE, lambda api: api.queue()),
        (HISTORY, lambda api: api.history()),
        (IMPORT, lambda api: api.import_study(1, ("XNAT", 8104), STUDY)),
        (("GET", "/xapi/pacs"), lambda api: api.pacs_list()),
        (("GET", "/xapi/anonymize/projects/P1/enabled"), lambda api: api.anonymization_enabled()),
        (("GET", "/data/projects/P1/experiments"), lambda api: check_arrival(api, STUDY)),
    ],
    ids=["queue", "history", "import", "pacs", "anonymization", "archive"],
)
@pytest.mark.parametrize("how", ["silent", "trickle"])
def test_a_stalled_answer_is_bounded(
    xnat: HostileXnat,
    config: Config,
    route: tuple[str, str],
    call: Callable[[DqrApi], object],
    how: str,
) -> None:
    """A peer that accepts and never answers, or answers one byte at a time (each byte in
    time for the socket's timeout, the whole never): a TransientError naming the endpoint
    and the seconds, within the timeout plus a little."""
    xnat.answer(*route, stall(xnat) if how == "silent" else trickle(xnat))
    with open_dqr_api(config) as api:
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            call(api)
        took = time.monotonic() - started
    assert took < BOUND
    message(caught, route[1], f"{STALL:g} s")


@pytest.mark.usefixtures("short_timeout")
def test_a_stalled_login_is_bounded(xnat: HostileXnat, config: Config) -> None:
    """Even the login probe (the push's) gives up after the timeout."""
    xnat.answer("GET", "/data/auth", stall(xnat))
    started = time.monotonic()
    with pytest.raises(TransientError) as caught, open_dqr_api(config):
        pass
    assert time.monotonic() - started < BOUND
    message(caught, "/data/auth")


@pytest.mark.usefixtures("short_timeout")
def test_a_logout_that_trickles_hides_nothing(xnat: HostileXnat, config: Config) -> None:
    """XNAT set a login session (JSESSIONID), and its logout trickles: the block ends with
    its own outcome, in time (logging out is a courtesy)."""
    cookie = {"Set-Cookie": "JSESSIONID=abc; Path=/"}
    xnat.answer(*QUEUE, lambda handler, _: send(handler, 200, b"[]", headers=cookie))
    xnat.answer("DELETE", "/data/JSESSION", trickle(xnat))
    started = time.monotonic()
    with open_dqr_api(config) as api:
        assert [] == api.queue()
    assert time.monotonic() - started < BOUND
    assert "DELETE /data/JSESSION" in xnat.seen


# -- /xapi/pacs lies -------------------------------------------------------------------------------


PACS = {"aeTitle": "ORTHANC", "host": "127.0.0.1", "queryRetrievePort": 4242}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (as_json([{"id": 1, **PACS}, {"id": 1, **PACS, "aeTitle": "OTHER"}]), "id 1 twice"),
        (as_json([{"id": 1, "host": "127.0.0.1"}]), "entry 1 has no aeTitle"),
        (as_json([{"id": "one", **PACS}]), "entry 1 has no id"),
        (as_json([{**PACS}]), "entry 1 has no id"),
        (as_json([{"id": 1, **PACS}, "ORTHANC"]), "entry 2 is not a PACS"),
        (as_json({"id": 1, **PACS}), "a JSON object, not a list"),
        (as_text("<html><title>Login</title></html>", content_type="text/html"), "HTML page"),
    ],
    ids=["duplicate-ids", "no-ae-title", "id-garbage", "id-missing", "string", "object", "html"],
)
def test_a_pacs_list_that_lies_stops_the_preflight(
    xnat: HostileXnat, api: DqrApi, config: Config, answer: Answer, said: str
) -> None:
    """A PACS list pacsman cannot trust stops the run before any import, naming the
    endpoint and what was wrong: an import must never go to a PACS id that is ambiguous."""
    xnat.answer("GET", "/xapi/pacs", answer)
    with pytest.raises(FatalError) as caught:
        preflight(api, config, pacs_id=None, pacs_ae=None)
    message(caught, "GET /xapi/pacs", said)
    assert "IMPORT" not in " ".join(xnat.seen).upper()


def test_a_ping_that_lies_fails_the_preflight(
    xnat: HostileXnat, api: DqrApi, config: Config
) -> None:
    """``successful: "true"`` (a string) is not a success."""
    xnat.answer("GET", "/xapi/pacs/1/status", as_json({"successful": "true", "enabled": True}))
    with pytest.raises(FatalError) as caught:
        preflight(api, config, pacs_id=None, pacs_ae=None)
    message(caught, "does not answer XNAT")


# -- the anonymization script ----------------------------------------------------------------------


ANON = "/xapi/anonymize/projects/P1"


@pytest.mark.parametrize(
    ("script", "works"),
    [
        ('version "6.1"\n(0010,0010) := ""\n', True),
        ("-(0010,1000)\n", True),
        ("  \n\t\n", False),
        ("// de-identify later\n  // TODO\n", False),
        ('version "6.1"\n\n// nothing yet\n', False),
        ("/* one\n   block */\n# a hash line\n", False),
    ],
    ids=["real", "one-line", "whitespace", "comments", "version-only", "block-comment"],
)
def test_a_script_without_instructions_is_not_enabled(
    xnat: HostileXnat, api: DqrApi, config: Config, script: str, works: bool
) -> None:
    """XNAT answers /enabled true and a script, but one of only blank lines, comments and its
    version line de-identifies nothing: not enabled, and the pre-flight says why."""
    xnat.answer("GET", ANON, as_text(script))
    assert works == api.anonymization_enabled()
    if works:
        return
    with pytest.raises(InputError) as caught:
        preflight(api, config, pacs_id=None, pacs_ae=None)
    message(caught, "no enabled anonymization script", "holds no instruction", "allow_identified")


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (as_json("true"), "a JSON string"),
        (as_json(1), "a JSON number"),
        (as_json({"enabled": True}), "a JSON object"),
        (as_json(None), "null"),
        (as_text("yes"), "not JSON"),
        (as_text("<html><title>Login</title></html>", content_type="text/html"), "HTML page"),
    ],
    ids=["string", "number", "object", "null", "text", "login-page"],
)
def test_enabled_that_is_no_boolean_is_not_enabled(
    xnat: HostileXnat, config: Config, answer: Answer, said: str
) -> None:
    """/enabled answering anything but true or false is read as not enabled, with the
    reason in the pre-flight's message; with xnat.allow_identified the run goes ahead with
    the reason in its warning."""
    xnat.answer("GET", f"{ANON}/enabled", answer)
    with open_dqr_api(config) as api:
        assert not api.anonymization_enabled()
        with pytest.raises(InputError) as caught:
            preflight(api, config, pacs_id=None, pacs_ae=None)
    message(caught, f"GET {ANON}/enabled", said, "xnat.allow_identified: true")
    allowed = make_config(xnat, allow_identified=True)
    with capture_logs() as logged, open_dqr_api(allowed) as api:
        assert preflight(api, allowed, pacs_id=None, pacs_ae=None).identified_allowed
    warning = next(e for e in logged if e["event"] == "dqr_identified_data")
    assert said in warning["reason"]


# -- the archive lies ------------------------------------------------------------------------------


EXPERIMENTS = ("GET", "/data/projects/P1/experiments")


def archive(xnat: HostileXnat, subject: str, uid: str, *, files: int = 3) -> None:
    """The project holds session SESS01 (experiment E1) of ``subject`` with ``uid``."""
    row = {"ID": "XNAT_E00001", "label": "SESS01", "subject_label": subject, "UID": uid}
    xnat.answer(*EXPERIMENTS, result_set(row))
    uri = "/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files/{}.dcm"
    rows = [{"URI": uri.format(n), "collection": "DICOM"} for n in range(files)]
    xnat.answer("GET", "/data/experiments/XNAT_E00001/scans/ALL/files", result_set(*rows))


@pytest.mark.parametrize(
    ("subject", "uid", "said"),
    [
        (PATIENT_NAME, UID, "belongs to another subject (XNAT experiment XNAT_E00001)"),
        ("SUBJ01", OTHER_UID, f"holds StudyInstanceUID {OTHER_UID}, not {UID}"),
        ("SUBJ01", "", "holds StudyInstanceUID (none)"),
        (PATIENT_ID, OTHER_UID, "belongs to another subject"),
    ],
    ids=["other-subject", "other-study", "no-uid", "both"],
)
def test_the_right_label_with_another_study_is_never_done(
    xnat: HostileXnat, api: DqrApi, subject: str, uid: str, said: str
) -> None:
    """Session SESS01 is there with files, but of another subject (whose label here is a
    patient's name, as XNAT gives subjects without relabelling) or another study:
    OTHER_STUDY, before an import and on arrival, and the other subject's label is not
    repeated."""
    archive(xnat, subject, uid)
    arrival = check_arrival(api, STUDY)
    assert ArrivalVerdict.OTHER_STUDY == arrival.verdict
    assert said in arrival.detail
    assert [] == [word for word in PHI if word in arrival.detail]
    [(_, taken)] = labels_taken(api, [STUDY])
    assert (ArrivalVerdict.OTHER_STUDY, arrival.detail) == (taken.verdict, taken.detail)


def test_the_right_study_is_complete_or_unverified(xnat: HostileXnat, api: DqrApi) -> None:
    """The control: the same session of the right subject and study is taken."""
    archive(xnat, "SUBJ01", UID)
    assert ArrivalVerdict.UNVERIFIED == check_arrival(api, STUDY).verdict


def test_a_session_without_scans_is_empty(xnat: HostileXnat, api: DqrApi) -> None:
    """XNAT answers 404 for the files of a session without scans (the push reads that as no
    files): EMPTY, never DONE, never a crash."""
    archive(xnat, "SUBJ01", UID)
    files = "/data/experiments/XNAT_E00001/scans/ALL/files"
    xnat.answer("GET", files, as_text("no scans", status=404))
    arrival = check_arrival(api, STUDY)
    assert (ArrivalVerdict.EMPTY, 0) == (arrival.verdict, arrival.files)


@pytest.mark.parametrize(
    "answer",
    [
        as_json({"items": "nope"}),
        as_json({"ResultSet": {"Result": "nope"}}),
        as_json([1, 2, 3]),
        result_set({"label": "SESS01", "subject_label": "SUBJ01", "UID": UID}),
        result_set({"ID": ["XNAT_E1"], "label": "SESS01", "subject_label": None, "UID": 5}),
        as_text(f"<html><h3>{PATIENT_NAME}</h3></html>", content_type="text/html"),
    ],
    ids=["items", "result-not-a-list", "list", "no-id", "odd-types", "html"],
)
def test_a_malformed_archive_answer_is_transient(
    xnat: HostileXnat, api: DqrApi, answer: Answer
) -> None:
    """An archive listing pacsman cannot read is a TransientError naming the endpoint (the
    run looks again later), never a KeyError or TypeError out of the run."""
    xnat.answer(*EXPERIMENTS, answer)
    with pytest.raises(TransientError) as caught:
        check_arrival(api, STUDY)
    message(caught, "/data/projects/P1/experiments")


# -- PHI in what DQR's query and its errors say ----------------------------------------------------


def test_query_errors_never_repeat_the_criteria(xnat: HostileXnat, api: DqrApi) -> None:
    """XNAT's 400 quoting the patient's name and ID it was asked for: the message keeps
    XNAT's words, without them."""
    said = f"Invalid patientName {PATIENT_NAME} for patientId {PATIENT_ID}"
    xnat.answer("POST", "/xapi/dqr/query/studies", as_text(said, status=400))
    criteria = {"patientName": PATIENT_NAME, "patientId": PATIENT_ID}
    with pytest.raises(ItemFailed) as caught:
        api.query_studies(1, criteria)
    assert re.search(r"Invalid patientName \S+ for patientId \S+", message(caught, "400"))


def test_query_answers_with_phi_are_read_not_repeated(xnat: HostileXnat, api: DqrApi) -> None:
    """A query answer cut in the middle of a patient's name: not JSON, and not quoted."""
    cut = json.dumps([{"studyInstanceUid": UID, "patient": {"name": PATIENT_NAME}}])[:-10]
    xnat.answer("POST", "/xapi/dqr/query/studies", as_text(cut))
    with pytest.raises(PacsmanError) as caught:
        api.query_studies(1, {"studyInstanceUid": UID})
    message(caught, "POST /xapi/dqr/query/studies", "not JSON")


def test_query_answers_of_odd_shapes_resolve_or_are_noted(
    xnat: HostileXnat, api: DqrApi, config: Config, tmp_path: Path
) -> None:
    """DQR's query answering entries of every odd shape (a string, a UID that is an object,
    the patient as a string, an accession number as a list, a date as a broken list): the
    one exact match is kept, the rest dropped, nothing crashes, no PHI in any problem."""
    answers = [
        "a study",
        {"studyInstanceUid": {"uid": UID}, "accessionNumber": "ACC1"},
        {
            "studyInstanceUid": UID,
            "accessionNumber": "ACC1",
            "patient": PATIENT_NAME,
            "modalitiesInStudy": "MR",
            "studyDate": [2024, "x", 5],
        },
        {
            "studyInstanceUid": OTHER_UID,
            "accessionNumber": ["ACC1"],
            "patient": {"id": PATIENT_ID, "name": {"alphabetic": PATIENT_NAME}},
        },
    ]
    xnat.answer("POST", "/xapi/dqr/query/studies", as_json(answers))
    rows = [QueryRow(line=2, keys={"AccessionNumber": "ACC1"}, subject="SUBJ01", session=None)]
    table = MappingTable(tmp_path / "mapping.sqlite")
    try:
        resolved = resolve_studies(config, rows, api, PacsEntry(1, "ORTHANC"), mapping=table)
    finally:
        table.close()
    assert [(UID, "SUBJ01")] == [(s.study_instance_uid, s.subject) for s in resolved.studies]
    assert [] == [word for word in PHI if word in repr(resolved.row_problems)]


# -- a whole run through the hostile XNAT ----------------------------------------------------------


class Lying:
    """A DQR that queues request 7 honestly, then lies while it works on it: the first polls
    answer XNAT's login page, then a queue of 30,000 garbage entries with request 7
    PROCESSING among them, then the history with request 7 RECEIVED (every entry carrying
    the patient's name and ID); the session appears in the archive once it is RECEIVED."""

    def __init__(self, xnat: HostileXnat) -> None:
        self.polls = 0
        garbage = [{"id": "x", "patientName": PATIENT_NAME}, {"status": "QUEUED"}, None, "7"]
        self.flood = [garbage[n % len(garbage)] for n in range(30_000)]
        xnat.answer(*QUEUE, self.queue)
        xnat.answer(*HISTORY, self.history)
        xnat.answer(*EXPERIMENTS, self.experiments)
        query = {
            "studyInstanceUid": UID,
            "accessionNumber": "ACC1",
            "studyDate": "20240105",
            "patient": {"id": PATIENT_ID, "name": PATIENT_NAME},
        }
        xnat.answer("POST", "/xapi/dqr/query/studies", as_json([query]))
        uri = "/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files/{}.dcm"
        files = [{"URI": uri.format(n), "collection": "DICOM"} for n in range(3)]
        xnat.answer("GET", "/data/experiments/XNAT_E00001/scans/ALL/files", result_set(*files))

    @property
    def received(self) -> bool:
        return self.polls > 6

    def queue(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        self.polls += 1
        if self.polls <= 3:
            page = b"<html><head><title>XNAT -- Login</title></head></html>"
            send(handler, 200, page, "text/html")
            return
        entries = [] if self.received else [*self.flood, request_entry(7, "PROCESSING")]
        send(handler, 200, json.dumps(entries).encode())

    def history(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        entries = [request_entry(7, "RECEIVED")] if self.received else [{"id": None}]
        send(handler, 200, json.dumps(entries).encode())

    def experiments(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        row = {"ID": "XNAT_E00001", "label": "SESS01", "subject_label": "SUBJ01", "UID": UID}
        answer = {"ResultSet": {"Result": [row] if self.received else []}}
        send(handler, 200, json.dumps(answer).encode())


def test_a_run_survives_a_lying_dqr(
    xnat: HostileXnat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pacsman dqr`` end to end against the lying DQR: it polls past the login pages and
    the garbage, follows request 7 to RECEIVED, and settles the study UNVERIFIED (DQR's own
    query: no counts); no patient name or ID in any log event (main() writes them to
    stderr), any output, or the job store."""
    lying = Lying(xnat)
    dqr = {"query": "xnat", "interval": 0, "poll_interval": 0.05, "receiver_port": 8104}
    stale = {"queued": 30, "processing": 30, "issued": 30, "received": 30}
    extra = (
        f"xnat:\n  url: {xnat.url}\n  project: P1\n"
        + "dqr:\n"
        + "".join(f"  {k}: {v}\n" for k, v in dqr.items())
        + "  stale_after:\n"
        + "".join(f"    {k}: {v}\n" for k, v in stale.items())
    )
    config = write_config(tmp_path, port=free_port(), called_ae_title="ORTHANC", extra=extra)
    queryfile = write_queryfile(tmp_path, "AccessionNumber,Subject,Session\nACC1,SUBJ01,SESS01\n")
    started = time.monotonic()
    status = main(["dqr", "--queryfile", str(queryfile), "--config", str(config)])
    assert time.monotonic() - started < 30.0
    out, err = capsys.readouterr()
    assert EXIT_OK == status, err
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        ledger = DqrLedger(store)
        run = store.run_by_id(max(r.id for r in store.run_records()))
        [study] = ledger.studies(run)
        stored = repr(ledger.studies(run)) + repr(ledger.rows(run))
    assert (DqrState.UNVERIFIED, 7) == (study.state, study.request_id)
    assert lying.polls > 6
    assert ["POST /xapi/dqr/import"] == [s for s in xnat.seen if s.startswith("POST /xapi/dqr/i")]
    assert [] == [word for word in PHI if word in out + err + stored]
    assert '"event": "dqr_poll_failed"' in err  # main() logs JSON lines to stderr


class Doubling:
    """A DQR that answers an import with two QUEUED requests for the study (7 and 8, where
    one was expected) and really queues both; request 7 leaves the queue RECEIVED after two
    more looks at the queue, with the session in the archive.  ``stale_first``: the first
    import is answered honestly with request 5, which then stays QUEUED for ever (given up
    as stale, still listed); the second import gets the two."""

    def __init__(self, xnat: HostileXnat, *, stale_first: bool) -> None:
        self.imports = 0
        self.after_lie = 0
        self.stale_first = stale_first
        xnat.answer(*IMPORT, self.import_answer)
        xnat.answer(*QUEUE, self.queue)
        xnat.answer(*HISTORY, self.history)
        xnat.answer(*EXPERIMENTS, self.experiments)
        query = {"studyInstanceUid": UID, "accessionNumber": "ACC1", "studyDate": "20240105"}
        xnat.answer("POST", "/xapi/dqr/query/studies", as_json([query]))
        uri = "/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files/{}.dcm"
        files = [{"URI": uri.format(n), "collection": "DICOM"} for n in range(3)]
        xnat.answer("GET", "/data/experiments/XNAT_E00001/scans/ALL/files", result_set(*files))

    @property
    def lied(self) -> bool:
        return self.imports >= (2 if self.stale_first else 1)

    @property
    def received(self) -> bool:
        return self.after_lie > 2

    def import_answer(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        self.imports += 1
        entries = [request_entry(7), request_entry(8)] if self.lied else [request_entry(5)]
        send(handler, 200, json.dumps(entries).encode())

    def queue(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        entries = [request_entry(5)] if self.stale_first and self.imports else []
        if self.lied:
            self.after_lie += 1
            entries += [] if self.received else [request_entry(7)]
            entries.append(request_entry(8))
        send(handler, 200, json.dumps(entries).encode())

    def history(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        entries = [request_entry(7, "RECEIVED")] if self.received else []
        send(handler, 200, json.dumps(entries).encode())

    def experiments(self, handler: BaseHTTPRequestHandler, _: bytes) -> None:
        row = {"ID": "XNAT_E00001", "label": "SESS01", "subject_label": "SUBJ01", "UID": UID}
        answer = {"ResultSet": {"Result": [row] if self.received else []}}
        send(handler, 200, json.dumps(answer).encode())


def run_dqr_command(xnat: HostileXnat, tmp_path: Path, *, stale: float = 30.0) -> int:
    """``pacsman dqr`` of one row (ACC1 -> SUBJ01/SESS01) against the hostile XNAT, tiny
    intervals, every staleness timer ``stale`` seconds; returns the exit code."""
    dqr = {"query": "xnat", "interval": 0, "poll_interval": 0.05, "backoff_max": 0.1}
    extra = (
        f"xnat:\n  url: {xnat.url}\n  project: P1\n"
        + "dqr:\n"
        + "".join(f"  {k}: {v}\n" for k, v in dqr.items())
        + "  stale_after:\n"
        + "".join(f"    {k}: {stale}\n" for k in ("queued", "processing", "issued", "received"))
    )
    config = write_config(tmp_path, port=free_port(), called_ae_title="ORTHANC", extra=extra)
    queryfile = write_queryfile(tmp_path, "AccessionNumber,Subject,Session\nACC1,SUBJ01,SESS01\n")
    return main(["dqr", "--queryfile", str(queryfile), "--config", str(config)])


def the_study(tmp_path: Path) -> Any:
    """The one study of the job store's newest run."""
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        run = store.run_by_id(max(r.id for r in store.run_records()))
        [study] = DqrLedger(store).studies(run)
    return study


@pytest.mark.parametrize("stale_first", [False, True], ids=["lie", "stale-then-lie"])
def test_a_refused_import_answer_is_followed_not_asked_again(
    xnat: HostileXnat, tmp_path: Path, capsys: pytest.CaptureFixture[str], stale_first: bool
) -> None:
    """XNAT answers an import with two requests where one was expected: pacsman refuses the
    answer (an attempt), but before asking again it finds the request XNAT queued for the
    study in its queue, newer than any it recorded, and follows it: one import, request 7
    followed to RECEIVED.  A request given up as stale that XNAT still lists (5) is never
    taken over again, and does not hide the newer one."""
    doubling = Doubling(xnat, stale_first=stale_first)
    started = time.monotonic()
    status = run_dqr_command(xnat, tmp_path, stale=1.0)
    assert time.monotonic() - started < 30.0
    _, err = capsys.readouterr()
    assert EXIT_OK == status, err
    study = the_study(tmp_path)
    assert (DqrState.UNVERIFIED, 7) == (study.state, study.request_id)
    assert (2 if stale_first else 1) == doubling.imports
    assert "XNAT request 7 found in its queue; followed" in err
    assert '"event": "dqr_retry"' in err  # the answer of two was refused: an attempt


def test_an_archive_listing_of_another_shape_holds_no_run(
    xnat: HostileXnat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The project's session listing answers JSON of another shape when the run checks which
    labels are taken: the run goes on (dqr_labels_unchecked), looks the study up before its
    import instead, finds the session there and settles it without an import."""
    listings = iter([as_json({"ResultSet": {"Result": {"ID": "x"}}})])
    archive(xnat, "SUBJ01", UID)
    honest = xnat.routes[EXPERIMENTS]
    xnat.answer(*EXPERIMENTS, lambda handler, body: next(listings, honest)(handler, body))
    query = {"studyInstanceUid": UID, "accessionNumber": "ACC1", "studyDate": "20240105"}
    xnat.answer("POST", "/xapi/dqr/query/studies", as_json([query]))
    assert EXIT_OK == run_dqr_command(xnat, tmp_path)
    _, err = capsys.readouterr()
    assert '"event": "dqr_labels_unchecked"' in err
    assert DqrState.UNVERIFIED == the_study(tmp_path).state
    assert [] == [s for s in xnat.seen if s == "POST /xapi/dqr/import"]
