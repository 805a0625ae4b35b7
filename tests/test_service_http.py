"""The service's HTTP side (issue 13 items 3, 5, 6, 7): real HTTP requests to
:func:`pacsman.service.http.make_app` served by :class:`HttpServer` on 127.0.0.1 (and
127.0.0.2 standing for another address, over TLS), over a real job store and a stub of the
running service.

Every security rule has a test: the token off loopback, no identifiers without it, POSTs
only with the token or from the page itself, escaped PACS text, the token file's mode.
"""

from __future__ import annotations

import dataclasses
import io
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from pacsman.config import Config, load_config
from pacsman.config.serve import HttpConfig
from pacsman.errors import EXIT_BAD_INPUT, FatalError, InputError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import Job, JobOptions, JobState
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.service.http import HttpServer, load_token, make_app
from pacsman.service.security import SESSION_COOKIE, Redactor, token_required
from pacsman.service.state import Readiness
from pacsman.testing.net import wait_for
from pacsman.testing.tls import make_pki
from tests.helpers import write_config

TOKEN = "t0ken-for-the-tests-0123456789"
#: Planted identifiers: none may appear in a view without the token.
PID, PID2, ACC = "PLANTEDPID123", "PLANTEDPID456", "PLANTEDACC789"
NAME = "Zyxwvut^Qwertyuiop"
XSS = "<script>alert('pwned')</script>"
VALID_CSV = b"PatientID,StudyDate\nP001,20240101\nP002,20240102\n"


@dataclass
class StubView:
    """The running service as the HTTP server sees it (:class:`ServiceView`)."""

    store: JobStore
    config: Config
    node_name: str = "head"
    ready: Readiness = field(
        default_factory=lambda: Readiness({"jobstore": True, "scp": True, "pacs:orthanc": True})
    )
    woken: int = 0

    def readiness(self) -> Readiness:
        return self.ready

    def associations_in_use(self) -> dict[str, int]:
        return {"orthanc": 0}

    def wake(self) -> None:
        self.woken += 1

    def status_line(self) -> str:
        return "idle"


@dataclass
class Running:
    """A served app: its URL, the stub behind it, and a requests session."""

    url: str
    view: StubView
    http: requests.Session
    verify: str | bool = True

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.url + path, verify=self.verify, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(self.url + path, verify=self.verify, timeout=10, **kwargs)

    @property
    def origin(self) -> dict[str, str]:
        return {"Origin": self.url}


def make_config(tmp_path: Path, **http: Any) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp_path, port=11112, called_ae_title="ORTHANC")
    config = load_config(path)
    serve = config.serve
    return dataclasses.replace(
        config, serve=dataclasses.replace(serve, http=dataclasses.replace(serve.http, **http))
    )


@contextmanager
def serving(
    tmp_path: Path,
    *,
    token: str | None = TOKEN,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    token_required: bool | None = None,
    **http: Any,
) -> Iterator[Running]:
    config = make_config(tmp_path, port=0, **http)
    with JobStore(config.jobstore) as store:
        view = StubView(store, config)
        app = make_app(view, token=token, metrics=metrics, token_required=token_required)
        with HttpServer(app, config.serve.http) as server, requests.Session() as session:
            yield Running(server.url, view, session)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Running]:
    with serving(tmp_path) as running:
        yield running


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(
    content: bytes = VALID_CSV, name: str = "cohort.csv"
) -> dict[str, tuple[str, io.BytesIO, str]]:
    return {"file": (name, io.BytesIO(content), "text/csv")}


def plant_job(store: JobStore, tmp_path: Path, *, state: JobState = JobState.FAILED) -> Job:
    """A job whose run holds identifiers everywhere a view could show them: query values,
    PatientIDs and names in row, series and push reasons, a ``<script>`` from the PACS."""
    job = store.add_job(
        name="cohort",
        queryfile_name="q.csv",
        content=b"PatientID\n",
        options=JobOptions(save=True, anonymize=True, push="xnat"),
    )
    rows = (
        QueryRow(2, {"PatientID": PID, "PatientName": NAME}),
        QueryRow(3, {"PatientID": PID2}, subject=PID2, session=f"{PID2}_MR"),
        QueryRow(4, {"AccessionNumber": ACC}),
    )
    run = store.open_run(QueryFile(tmp_path / "q.csv", "0" * 64, rows), "cfg", job_id=job.id)
    store.add_rows(run, [(row, "orthanc") for row in rows])
    series = (
        SeriesMatch("1.2.3", "1.2.3.1", "1", "MR", f"T1 {XSS}", 3),
        SeriesMatch("1.2.3", "1.2.3.2", "2", "MR", "T2", 2),
    )
    study = StudyMatch("1.2.3", PID, NAME, "20240101", "", ACC, f"Brain {XSS}", series)
    store.record_query(run, RowResult(rows[0], "orthanc", (study,)))
    store.fail_row(run, 3, f"C-FIND failed for PatientID {PID2} ({NAME.replace('^', ' ')}) {XSS}")
    store.record_query(run, RowResult(rows[2], "orthanc", ()))
    first, second = store.series_for_retrieve(run)
    store.update_series(run, first, ItemState.COMPLETE, received=3)
    store.update_series(
        run, second, ItemState.INCOMPLETE, received=1, detail=f"1 of 2; PACS: {PID} {NAME}"
    )
    for one in store.series_for_anonymize(run):
        store.record_anonymization(
            run,
            one,
            ItemState.ANONYMIZED,
            written=3,
            detail="",
            experiment=("S01", "E01"),
            directory=tmp_path / "anon",
        )
    store.record_push(run, "xnat", ("S01", "E01"), ItemState.FAILED, detail=f"500 for {PID}")
    store.attach_run(job.id, run.id)
    store.claim_job("head")
    if state is not JobState.RUNNING:
        store.settle_job(job.id, state, f"stopped on {PID}")
    return store.job(job.id)


def _absent(text: str, *needles: str) -> list[str]:
    lower = text.lower()
    return [n for n in needles if n.lower() in lower]


PLANTED = (PID, PID2, ACC, NAME, NAME.replace("^", " "), "Zyxwvut", "Qwertyuiop")


# -- health, readiness, metrics -------------------------------------------------------------------


def test_healthz_readyz_and_metrics(tmp_path: Path) -> None:
    """/healthz says alive; /readyz 200 with its checks, 503 with the problems; /metrics is
    what the metrics function gives, 404 without one."""
    with serving(tmp_path, metrics=lambda: (b"pacsman_up 1\n", "text/plain; version=0.0.4")) as s:
        assert s.get("/healthz").json() == {"status": "alive"}
        ready = s.get("/readyz")
        assert (ready.status_code, ready.json()["ready"]) == (200, True)
        s.view.ready = Readiness({"jobstore": True, "scp": False}, ("the SCP is not bound",))
        not_ready = s.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["problems"] == ["the SCP is not bound"]
        assert not_ready.json()["checks"] == {"jobstore": True, "scp": False}
        metrics = s.get("/metrics")
        assert (metrics.status_code, metrics.text) == (200, "pacsman_up 1\n")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    with serving(tmp_path / "none") as s:
        assert s.get("/metrics").status_code == 404


# -- submitting -----------------------------------------------------------------------------------


def test_post_jobs_queues_a_valid_file_and_wakes_the_service(served: Running) -> None:
    """A valid upload is queued with its options (source http), 201 with the job and its
    Location, and the scheduler is woken."""
    fields = {"save": "true", "priority": "5", "name": "my cohort", "pacs": "orthanc"}
    answer = served.post("/api/jobs", files=upload(), data=fields, headers=bearer())
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/api/jobs/{job['id']}"
    assert (job["name"], job["state"], job["priority"], job["source"]) == (
        "my cohort",
        "QUEUED",
        5,
        "http",
    )
    assert job["options"]["save"] is True
    assert job["options"]["pacs"] == "orthanc"
    assert served.view.store.job_queryfile(job["id"]) == VALID_CSV
    assert served.view.woken == 1


def test_a_bad_query_file_is_422_with_every_located_problem(served: Running) -> None:
    """Nothing is queued; each problem is located in the file as the user named it."""
    bad = b"PatientID,StudyDate\nP001,2023-13-01\nP002,notadate\n"
    answer = served.post("/api/jobs", files=upload(bad, "bad.csv"), headers=bearer())
    assert answer.status_code == 422, answer.text
    problems = answer.json()["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("bad.csv:2")
    assert problems[1].startswith("bad.csv:3")
    assert "nothing was queued" in answer.json()["error"]
    assert served.view.store.jobs() == []
    assert served.view.woken == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"push": "ftp"}, "push target 'ftp' is not one of xnat, dicom, folder"),
        ({"priority": "high"}, "priority 'high' is not a whole number"),
        ({"save": "maybe"}, "save 'maybe' is not yes or no"),
        ({"pacs": "nosuchnode"}, "pacs.nosuchnode: no such PACS node"),
    ],
)
def test_a_bad_option_is_400(served: Running, fields: dict[str, str], message: str) -> None:
    answer = served.post("/api/jobs", files=upload(), data=fields, headers=bearer())
    assert answer.status_code == 400, answer.text
    assert message in answer.text
    assert served.view.store.jobs() == []


def test_a_post_without_a_file_is_400(served: Running) -> None:
    answer = served.post("/api/jobs", data={"save": "true"}, headers=bearer())
    assert answer.status_code == 400
    assert "send it as the multipart field 'file'" in answer.json()["error"]


# -- reading jobs ---------------------------------------------------------------------------------


def test_jobs_counts_per_stage_and_rows(served: Running, tmp_path: Path) -> None:
    """GET /api/jobs and /api/jobs/{id}: counts per stage; /rows: state per stage and why."""
    job = plant_job(served.view.store, tmp_path)
    listed = served.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job.id]
    one = served.get(f"/api/jobs/{job.id}").json()
    counts = one["counts"]
    assert counts["rows"] == {"total": 3, "QUERIED": 1, "FAILED": 1, "NO_MATCH": 1}
    assert counts["series"] == {"total": 2, "retrieved": 1, "COMPLETE": 1, "INCOMPLETE": 1}
    assert counts["instances"] == {"expected": 5, "received": 4}
    assert counts["deidentified"] == {"series": 1, "QUARANTINED": 0, "instances": 3}
    assert counts["pushed"] == {"sessions": 1, "FAILED": 1}
    assert one["progress"]["query"] == {"done": 3, "total": 3, "failed": 2}
    assert one["progress"]["retrieve"] == {"done": 2, "total": 2, "failed": 1}
    assert one["progress"]["push"] == {"done": 1, "total": 1, "failed": 1}
    assert one["eta_seconds"] is None  # it is not running
    assert one["studies"] == {  # the same keys with no study claimed by a head node yet
        "total": 0,
        "by_state": {"OPEN": 0, "CLAIMED": 0, "EXPIRED": 0, "DONE": 0, "FAILED": 0},
        "by_node": [],
        "studies": [],
    }
    rows = served.get(f"/api/jobs/{job.id}/rows", headers=bearer()).json()["rows"]
    assert [(r["line"], r["state"], r["retrieve"], r["push"]) for r in rows] == [
        (2, "QUERIED", "INCOMPLETE", "FAILED"),
        (3, "FAILED", "", ""),
        (4, "NO_MATCH", "", ""),
    ]
    assert rows[0]["reasons"][0].startswith("series 2 INCOMPLETE: 1 of 2")
    assert rows[0]["reasons"][1].startswith("session S01/E01 push to xnat FAILED")
    assert rows[0]["found"][0]["PatientID"] == PID
    assert rows[2]["reasons"] == ["NO_MATCH: the PACS holds no study/series matching this row"]


def test_a_running_job_has_an_eta_from_its_throughput(served: Running, tmp_path: Path) -> None:
    """While a job runs, its ETA comes from what its run settled since it started."""
    store = served.view.store
    job = plant_job(store, tmp_path, state=JobState.RUNNING)
    assert job.run_id is not None
    now = datetime.now(UTC)
    started = (now - timedelta(seconds=100)).isoformat(timespec="milliseconds")
    settled = (now - timedelta(seconds=50)).isoformat(timespec="milliseconds")
    with closing(sqlite3.connect(store.path)) as db, db:  # the run started 100 s ago
        db.execute("UPDATE runs SET started_at = ? WHERE id = ?", (started, job.run_id))
        db.execute("UPDATE transitions SET at = ? WHERE run_id = ?", (settled, job.run_id))
    one = served.get(f"/api/jobs/{job.id}").json()
    assert one["state"] == "RUNNING"
    assert one["rates_per_second"]["instances"] == pytest.approx(4 / 100, rel=0.1)
    # 1 instance left at 0.04/s: 25 s; 1 series to de-identify at 1 per 100 s: the slowest
    assert one["eta_seconds"] == pytest.approx(100, rel=0.1)


def test_unknown_jobs_are_404(served: Running) -> None:
    for path in ("/api/jobs/99", "/api/jobs/99/rows", "/jobs/99"):
        assert served.get(path).status_code == 404, path
    answer = served.post("/api/jobs/99/cancel", headers=bearer())
    assert answer.status_code == 404
    assert "job 99: no such job" in answer.json()["error"]


# -- actions --------------------------------------------------------------------------------------


def test_actions_change_the_job_or_say_why_not(served: Running) -> None:
    """pause/resume/cancel apply as the job store's rules say (and wake the service); an
    action that does not apply is 409 with the store's message; an unknown one 404."""
    job = served.post("/api/jobs", files=upload(), headers=bearer()).json()
    path = f"/api/jobs/{job['id']}"
    assert served.post(f"{path}/pause", headers=bearer()).json()["state"] == "PAUSED"
    assert served.post(f"{path}/resume", headers=bearer()).json()["state"] == "QUEUED"
    assert served.post(f"{path}/cancel", headers=bearer()).json()["state"] == "CANCELLED"
    refused = served.post(f"{path}/resume", headers=bearer())
    assert refused.status_code == 409
    assert refused.json()["error"].startswith(f"job {job['id']} is CANCELLED: 'resume' does not")
    assert served.post(f"{path}/explode", headers=bearer()).status_code == 404
    assert served.view.woken == 4  # the submit and three actions


# -- who may post ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, False),  # no token, no Origin or Referer: refused
        ({"Origin": "SELF"}, True),
        ({"Referer": "SELF/"}, True),
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Referer": "http://evil.example/page"}, False),
        ({"Origin": "SELF", "Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "http://127.0.0.1:1"}, False),  # another port is another origin
        ({"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}, True),
    ],
)
def test_a_post_needs_the_token_or_the_same_origin(
    served: Running, headers: dict[str, str], allowed: bool
) -> None:
    """CSRF: on every address, a POST without the token must come from the page itself."""
    sent = {k: v.replace("SELF", served.url) for k, v in headers.items()}
    answer = served.post("/api/jobs", files=upload(), headers=sent)
    assert answer.status_code == (201 if allowed else 403), answer.text
    if not allowed:
        assert "send the API token" in answer.json()["error"]
        assert served.view.store.jobs() == []


def test_a_cross_site_page_cannot_cancel_or_use_the_form(served: Running) -> None:
    job = served.post("/api/jobs", files=upload(), headers=bearer()).json()
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert served.post(f"/api/jobs/{job['id']}/cancel", headers=evil).status_code == 403
    assert served.post("/jobs", files=upload(), headers=evil).status_code == 403
    assert served.view.store.job(job["id"]).state is JobState.QUEUED
    assert len(served.view.store.jobs()) == 1


def test_a_foreign_host_name_is_refused_on_loopback(served: Running) -> None:
    """DNS rebinding: a page whose own name points at 127.0.0.1 gets nothing."""
    host = {"Host": "evil.example"}
    assert served.get("/", headers=host).status_code == 403
    assert served.get("/api/jobs", headers=host).status_code == 403
    refused = served.post(
        "/api/jobs", files=upload(), headers={**host, "Origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    assert "is not this service's address" in refused.json()["error"]
    assert served.get("/", headers={"Host": "localhost"}).status_code == 200


# -- no identifiers without the token -------------------------------------------------------------


def test_no_identifier_reaches_a_view_without_the_token(tmp_path: Path) -> None:
    """PatientIDs, names, AccessionNumbers and query values, planted in query values, row,
    series and push reasons and the job's detail, appear in no response without the token
    (pages, API, /metrics, /readyz); with it, they do."""
    from pacsman.service.metrics import ServiceMetrics

    with serving(tmp_path) as s:
        metrics = ServiceMetrics(s.view, process=False)
        s.http.close()
        app = make_app(s.view, token=TOKEN, metrics=metrics.render)
        with HttpServer(app, dataclasses.replace(s.view.config.serve.http, port=0)) as server:
            s.url = server.url
            job = plant_job(s.view.store, tmp_path)
            paths = ["/", f"/jobs/{job.id}", "/api/jobs", f"/api/jobs/{job.id}"]
            paths += [f"/api/jobs/{job.id}/rows", "/metrics", "/readyz", "/healthz", "/login"]
            for path in paths:
                answer = s.get(path)
                assert answer.status_code == 200, (path, answer.text)
                assert _absent(answer.text, *PLANTED) == [], path
            rows = s.get(f"/api/jobs/{job.id}/rows").json()
            assert rows["identifiers"] is False
            assert "query" not in rows["rows"][0]
            assert rows["rows"][1]["reasons"][0].startswith(
                "FAILED: C-FIND failed for PatientID [hidden]"
            )
            assert (
                rows["rows"][0]["reasons"][0]
                == "series 2 INCOMPLETE: 1 of 2; PACS: [hidden] [hidden]"
            )
            assert s.get(f"/api/jobs/{job.id}").json()["detail"] == "stopped on [hidden]"
            for path in (f"/jobs/{job.id}", f"/api/jobs/{job.id}/rows", f"/api/jobs/{job.id}"):
                shown = s.get(path, headers=bearer()).text
                assert PID in shown, path
            assert ACC in s.get(f"/jobs/{job.id}", headers=bearer()).text


def test_the_redactor_hides_each_spelling_as_whole_words() -> None:
    """Any case, any punctuation between the words, each part of a name; never part of a
    longer word."""
    hide = Redactor([PID, "7", "12-345.6"], [NAME])
    text = f"{PID.lower()} zyxwvut QWERTYUIOP, Zyxwvut; series 7 of 17; id 12 345 6 on {NAME}."
    expected = "[hidden] [hidden], [hidden]; series [hidden] of 17; id [hidden] on [hidden]."
    assert hide(text) == expected
    assert hide("nothing to hide") == "nothing to hide"


# -- escaping -------------------------------------------------------------------------------------


def test_text_from_the_pacs_is_escaped_in_the_page(served: Running, tmp_path: Path) -> None:
    """A ``<script>`` in a StudyDescription, a SeriesDescription and a reason is shown as
    text: escaped with the token, escaped (or absent) without; the page allows no script
    but its own (Content-Security-Policy)."""
    job = plant_job(served.view.store, tmp_path)
    for headers in ({}, bearer()):
        page = served.get(f"/jobs/{job.id}", headers=headers)
        assert XSS not in page.text
        assert "<script>alert" not in page.text
        assert page.text.count("<script>") == 1  # the page's own
        assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'sha256-" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
    shown = served.get(f"/jobs/{job.id}", headers=bearer()).text
    assert "Brain &lt;script&gt;" in shown
    assert "T1 &lt;script&gt;" in shown


# -- the page's form ------------------------------------------------------------------------------


def test_the_form_queues_and_redirects_or_lists_every_problem(served: Running) -> None:
    same = {"Origin": served.url}
    answer = served.post(
        "/jobs",
        files=upload(),
        data={"save": "true", "name": "from the page"},
        headers=same,
        allow_redirects=False,
    )
    assert answer.status_code == 303
    job = served.view.store.jobs()[0]
    assert answer.headers["location"] == f"/jobs/{job.id}"
    assert (job.name, job.options.save, job.source) == ("from the page", True, "http")
    page = served.get(answer.headers["location"])
    assert "from the page" in page.text
    bad = served.post(
        "/jobs", files=upload(b"PatientID,StudyDate\nP,<b>x</b>\n", "bad.csv"), headers=same
    )
    assert bad.status_code == 422
    assert "bad.csv:2" in bad.text
    assert "<b>x</b>" not in bad.text
    assert len(served.view.store.jobs()) == 1


# -- off loopback: the token, TLS -----------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Running]:
    """127.0.0.2 standing for another address: HTTPS, every request needs the token."""
    pki = make_pki(tmp_path / "pki", ip_addresses=["127.0.0.2"])
    with serving(
        tmp_path, token_required=True, bind="127.0.0.2", cert=pki.cert("peer"), key=pki.key("peer")
    ) as running:
        running.verify = str(pki.ca)
        yield running


def test_off_loopback_every_request_but_healthz_needs_the_token(remote: Running) -> None:
    assert remote.url.startswith("https://127.0.0.2:")
    assert remote.get("/healthz").status_code == 200
    for path in ("/", "/jobs/1", "/api/jobs", "/api/jobs/1", "/readyz", "/metrics"):
        answer = remote.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert remote.get(path, headers=bearer("wrong-token-wrong-token")).status_code == 401
    bad = {"Authorization": "Bearer t\u00f6ken".encode()}  # non-ASCII: still just wrong
    assert remote.get("/api/jobs", headers=bad).status_code == 401
    assert remote.get("/api/jobs", headers=bearer()).status_code == 200
    assert remote.get("/", headers=bearer()).status_code == 200
    assert remote.post("/api/jobs", files=upload(), headers=remote.origin).status_code == 401
    assert remote.post("/api/jobs", files=upload(), headers=bearer()).status_code == 201


def test_the_browser_signs_in_with_a_strict_httponly_cookie(remote: Running) -> None:
    """The login form sets an HttpOnly, SameSite=Strict, Secure cookie (not the token);
    with it, pages show identifiers, and a POST must still come from the page itself."""
    assert "API token" in remote.get("/").text  # the 401 page is the sign-in form
    wrong = remote.post("/login", data={"token": "nope", "next": "/"}, headers=remote.origin)
    assert wrong.status_code == 401
    cross = remote.post("/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    signed = remote.post(
        "/login",
        data={"token": TOKEN, "next": "https://evil.example/"},
        headers=remote.origin,
        allow_redirects=False,
    )
    assert signed.status_code == 303
    assert signed.headers["location"] == "/"  # never off this service
    for elsewhere in ("//evil.example/", "/\\evil.example", "/jobs/1/../../x"):
        sent = {"token": TOKEN, "next": elsewhere}
        answer = remote.post("/login", data=sent, headers=remote.origin, allow_redirects=False)
        assert answer.headers["location"] == "/", elsewhere
    back = {"token": TOKEN, "next": "/jobs/7"}
    answer = remote.post("/login", data=back, headers=remote.origin, allow_redirects=False)
    assert answer.headers["location"] == "/jobs/7"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" in cookie
    assert TOKEN not in cookie
    assert remote.http.cookies.get(SESSION_COOKIE)
    assert remote.get("/").status_code == 200
    assert remote.get("/api/jobs").status_code == 200
    assert remote.post("/api/jobs", files=upload()).status_code == 403  # no Origin
    assert remote.post("/api/jobs", files=upload(), headers=remote.origin).status_code == 201
    job = remote.view.store.jobs()[0]
    assert remote.get(f"/api/jobs/{job.id}/rows").json()["identifiers"] is True
    out = remote.post("/logout", headers=remote.origin, allow_redirects=False)
    assert out.status_code == 303
    assert remote.get("/api/jobs").status_code == 401


def test_loopback_is_the_default_and_needs_no_token() -> None:
    """127.0.0.1 by default; a token is required off loopback or behind a proxy."""
    assert HttpConfig().bind == "127.0.0.1"
    assert not token_required(HttpConfig())
    assert token_required(HttpConfig(bind="10.1.2.3", cert=Path("c"), key=Path("k")))
    assert token_required(HttpConfig(behind_proxy=True))


def test_a_required_token_must_be_configured(tmp_path: Path) -> None:
    config = make_config(tmp_path, bind="0.0.0.0", behind_proxy=True)
    with JobStore(config.jobstore) as store, pytest.raises(InputError) as caught:
        make_app(StubView(store, config), token=None)
    assert "serve.http.bind 0.0.0.0 is behind a reverse proxy: every request needs the API" in str(
        caught.value
    )
    assert "LoadCredential=pacsman-http-token" in str(caught.value)


# -- the token file -------------------------------------------------------------------------------


def test_the_token_file_must_be_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o640)
    config = make_config(tmp_path, token_file=path)
    with pytest.raises(
        InputError, match=rf"mode is -rw-r-----, readable by others; run 'chmod 600 {path}'"
    ) as caught:
        load_token(config.serve.http)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert f"serve.http.token_file {path}" in str(caught.value)
    path.chmod(0o600)
    assert load_token(config.serve.http) == TOKEN
    path.write_text("short")
    with pytest.raises(InputError, match="at least 16 characters; make one with"):
        load_token(config.serve.http)
    with pytest.raises(InputError, match="no-such-file: cannot read it"):
        load_token(make_config(tmp_path, token_file=tmp_path / "no-such-file").serve.http)


def test_the_token_comes_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_token(config.serve.http) is None
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "pacsman-http-token").write_text(TOKEN)
    (credentials / "pacsman-http-token").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert load_token(config.serve.http) == TOKEN


# -- the server -----------------------------------------------------------------------------------


def test_a_port_in_use_is_named_and_the_server_stops_quickly(tmp_path: Path) -> None:
    import time

    config = make_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        http = dataclasses.replace(config.serve.http, port=port)
        with JobStore(config.jobstore) as store:
            app = make_app(StubView(store, config), token=None)
            with pytest.raises(FatalError, match=rf"serve.http.port {port} on 127.0.0.1 is in use"):
                HttpServer(app, http).__enter__()
            server = HttpServer(app, dataclasses.replace(http, port=0))
            handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
            with server, requests.Session() as session:
                assert session.get(server.url + "/healthz", timeout=5).status_code == 200
                # the service owns signals: uvicorn installed none
                assert handlers == [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
                started = time.monotonic()
            assert time.monotonic() - started < 5.0
            with pytest.raises(requests.ConnectionError):
                requests.get(server.url + "/healthz", timeout=2)


def test_requests_are_logged_without_query_strings(served: Running) -> None:
    """``http_request`` (debug): method, path, status; never the query string."""
    structlog.reset_defaults()  # debug events too, whatever an earlier test configured
    with structlog.testing.capture_logs() as events:
        served.get(f"/api/jobs?patient={PID}")
        # the server logs once the answer is sent: the client may have it a moment before
        wait_for(
            lambda: any(e["event"] == "http_request" for e in events),
            timeout=5,
            what="the http_request event",
        )
    logged = [e for e in events if e["event"] == "http_request"]
    assert [(e["method"], e["path"], e["status"]) for e in logged] == [("GET", "/api/jobs", 200)]
    assert PID not in repr(events)


def test_a_body_larger_than_a_job_may_carry_is_413(
    served: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused by its Content-Length, or (chunked) once that much has arrived."""
    import pacsman.service.http as http_module

    monkeypatch.setattr(http_module, "MAX_BODY_BYTES", 1000)
    answer = served.post("/api/jobs", files=upload(b"x" * 5000), headers=bearer())
    assert answer.status_code == 413
    assert "larger than 1000 bytes" in answer.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=q.csv\r\n\r\n"
        for _ in range(10):
            yield b"x" * 500

    kind = {"Content-Type": "multipart/form-data; boundary=b"}
    chunked = served.post("/api/jobs", data=chunks(), headers={**bearer(), **kind})
    assert chunked.status_code == 413
    assert served.view.store.jobs() == []
