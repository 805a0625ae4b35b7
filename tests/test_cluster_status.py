"""Status and metrics are cluster-wide (issue 14, item 5): ``pacsman status`` lists the head
nodes of the job store, ``status --job N`` says which node holds each study, the web page
shows both, and ``/metrics`` counts nodes and studies per node, with no identifier.

One store per backend (a SQLite file; PostgreSQL when installed), built with the job store's
own calls: three head nodes (alpha alive, beta silent for 5 minutes, gamma stopped) and a
job of five studies: alpha finished one and failed one, beta holds one and let the lease of
another expire, one is still open.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pacsman.cli import main
from pacsman.config import Config, load_config
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobOptions
from pacsman.models import QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.service.http import HttpServer, make_app
from pacsman.service.metrics import ServiceMetrics
from pacsman.service.state import Readiness
from pacsman.testing.postgres import PostgresServer
from tests.helpers import write_config

PACS = "orthanc"
#: StudyInstanceUIDs: identifiers, never in a view without the token, nor in a metric.
UIDS = tuple(f"1.2.826.0.1.777{n}" for n in range(5))
PID = "PLANTEDPID4711"
STATES = ("alive", "stale", "stopped")
_NAMES = itertools.count(1)


@dataclass(frozen=True)
class Cluster:
    location: Path | str
    job_id: int


def _queryfile(tmp_path: Path) -> QueryFile:
    rows = tuple(QueryRow(line=n + 2, keys={"PatientID": f"{PID}{n}"}) for n in range(5))
    return QueryFile(path=tmp_path / "cohort.csv", sha256="a" * 64, rows=rows)


def _study(n: int) -> StudyMatch:
    series = tuple(
        SeriesMatch(UIDS[n], f"{UIDS[n]}.{k}", series_number=str(k), expected_instances=2)
        for k in range(1, 3)
    )
    return StudyMatch(UIDS[n], patient_id=f"{PID}{n}", study_date="20240101", series=series)


def _age_heartbeat(location: Path | str, node: str, minutes: int) -> None:
    """Make ``node`` look silent for ``minutes`` (its heartbeat written that long ago)."""
    old = (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="milliseconds")
    sql = "UPDATE service_nodes SET heartbeat_at = ? WHERE node_name = ?"
    if isinstance(location, Path):
        with sqlite3.connect(location) as db:
            db.execute(sql, (old, node))
        return
    import psycopg

    with psycopg.connect(location) as db:
        db.execute(sql.replace("?", "%s"), (old, node))


def build(location: Path | str, tmp_path: Path) -> Cluster:
    """Three head nodes and one job whose studies are spread between two of them."""
    with JobStore(location) as store:
        for n, name in enumerate(("alpha", "beta", "gamma")):
            store.register_node(
                name, http_url="", ae_title=f"{name.upper()}_SCP", scp_port=11112 + n
            )
            store.beat_node(name, f"1 job(s) running, PACS {PACS} 1/2 associations")
        store.stop_node("gamma", "stopped")
        queryfile = _queryfile(tmp_path)
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, PACS) for row in queryfile.rows])
        for n, row in enumerate(queryfile.rows):
            store.record_query(run, RowResult(row, PACS, (_study(n),)))
        job = store.add_job(
            name="cohort", queryfile_name="cohort.csv", content=b"x", options=JobOptions(save=True)
        )
        assert store.claim_job("alpha") is not None
        store.attach_run(job.id, run.id)
        store.open_studies(run, job.id)
        for node, lease, failed in (
            ("alpha", 30.0, set()),
            ("alpha", 30.0, {UIDS[1]}),
            ("beta", 300.0, None),
            ("beta", -12.0, None),
        ):
            held = store.claim_studies(run, job.id, node, limit=1, lease_seconds=lease)
            assert held is not None
            if failed is not None:
                store.settle_studies(replace(run, lease=held), failed=failed)
    _age_heartbeat(location, "beta", 5)
    return Cluster(location, job.id)


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    if request.param == "sqlite":
        return build(tmp_path / "jobs.sqlite", tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"cluster_{next(_NAMES)}"
    server.create_database(name)
    return build(server.dsn(name), tmp_path)


# -- the job store's views ---------------------------------------------------------------------


def test_head_nodes_with_their_studies(cluster: Cluster) -> None:
    """One query gives every node, its Storage SCP, its state and its studies now."""
    now = datetime.now(UTC)
    with JobStore(cluster.location) as store:
        nodes = {n.node_name: n for n in store.head_nodes()}
    assert ["alpha", "beta", "gamma"] == sorted(nodes)
    alpha, beta, gamma = nodes["alpha"], nodes["beta"], nodes["gamma"]
    assert ("ALPHA_SCP", 11112) == (alpha.ae_title, alpha.scp_port)
    assert ["alive", "stale", "stopped"] == [n.state(now).value for n in (alpha, beta, gamma)]
    assert (0, 0, 1, 1) == (alpha.held, alpha.expired, alpha.done, alpha.failed)
    assert (1, 1, 0, 0) == (beta.held, beta.expired, beta.done, beta.failed)
    assert (0, 0, 0, 0) == (gamma.held, gamma.expired, gamma.done, gamma.failed)


def test_study_places_say_which_node_holds_each_study(cluster: Cluster) -> None:
    """Each study with its line, state and node; an expired lease says so."""
    with JobStore(cluster.location) as store:
        places = store.study_places(cluster.job_id)
        totals = sorted(store.study_totals())
    shown = [(p.line, p.shown_state, p.node) for p in places]
    assert [
        (2, "DONE", "alpha"),
        (3, "FAILED", "alpha"),
        (4, "CLAIMED", "beta"),
        (5, "EXPIRED", "beta"),
        (6, "OPEN", ""),
    ] == shown
    assert [2] * 5 == [p.series for p in places]
    assert re.fullmatch(
        r"lease of beta expired 1[2-9] s ago: another node will take it over", places[3].where()
    )
    assert places[2].where().startswith("held by beta: lease ")
    assert [("alpha", 0, 0, 1, 1), ("beta", 1, 1, 0, 0)] == totals


# -- pacsman status ----------------------------------------------------------------------------


def _status(capsys: pytest.CaptureFixture[str], cluster: Cluster, *args: str) -> tuple[int, str]:
    code = main(["status", "--jobstore", str(cluster.location), *args])
    return code, capsys.readouterr().out


def test_status_lists_the_head_nodes(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsman status``: every head node, its SCP, alive or not, its status and studies."""
    _, out = _status(capsys, cluster)
    section = out[out.index("head nodes") :]
    assert section.startswith("head nodes   3: 1 alive, 1 stale, 1 stopped\n    alpha      alive")
    assert re.search(r"alpha +alive: process \d+ on .+, Storage SCP ALPHA_SCP on port 11112", out)
    assert re.search(r"beta +stale: no heartbeat for 5 min 0\d s", out)
    assert "\n    gamma      stopped at " in out
    assert "studies: 1 done, 1 failed\n" in section
    assert "studies: 1 held now, 1 lease(s) expired: another node will take them over" in out
    assert f"now: 1 job(s) running, PACS {PACS} 1/2 associations" in out
    assert not any(uid in out for uid in UIDS)


def test_status_of_a_job_says_which_node_holds_each_study(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --job N``: the job's studies per node, then each study, expired leases
    first, by query-file line (no StudyInstanceUID)."""
    _, out = _status(capsys, cluster, "--job", str(cluster.job_id))
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  studies "))
    assert (
        f"  studies      5 in job {cluster.job_id} on 2 head node(s): "
        "1 open, 1 held, 1 lease expired, 1 done, 1 failed"
    ) == lines[start]
    assert "    alpha      1 done, 1 failed (alive)" == lines[start + 1]
    assert "    beta       1 held now, 1 lease expired (stale)" == lines[start + 2]
    table = lines[start + 4 : start + 9]
    assert re.fullmatch(
        rf"  line 5 +{PACS}  EXPIRED  lease of beta expired \d+ s ago: another node will take "
        "it over",
        table[0],
    )
    assert re.fullmatch(
        rf"  line 4 +{PACS}  CLAIMED  held by beta: lease .+ left \(generation \d+\)", table[1]
    )
    assert [f"  line 3     {PACS}  FAILED   failed on alpha"] == table[2:3]
    assert table[3].startswith(f"  line 6     {PACS}  OPEN     open: the next node")
    assert [f"  line 2     {PACS}  DONE     done on alpha"] == table[4:5]
    assert "head nodes" not in out
    assert not any(uid in out for uid in UIDS)
    assert PID not in out


def test_status_json_has_nodes_and_studies(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --job N --json``: head nodes with their state, studies per node and one by
    one, still without a StudyInstanceUID."""
    _, out = _status(capsys, cluster, "--job", str(cluster.job_id), "--json")
    found = json.loads(out)
    assert ["alive", "stale", "stopped"] == [n["state"] for n in found["head_nodes"]]
    assert "BETA_SCP" == found["head_nodes"][1]["ae_title"]
    assert {
        "alpha": {"DONE": 1, "FAILED": 1},
        "beta": {"CLAIMED": 1, "EXPIRED": 1},
    } == found["studies"]["by_node"]
    assert [2, 3, 4, 5, 6] == [s["line"] for s in found["studies"]["studies"]]
    assert not any(uid in out for uid in UIDS)


def test_one_shot_store_shows_nothing_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store no ``pacsman serve`` ever used shows no head-node section."""
    queryfile = _queryfile(tmp_path)
    with JobStore(tmp_path / "jobs.sqlite") as store:
        run = store.open_run(queryfile, "c" * 64)
        store.add_rows(run, [(row, PACS) for row in queryfile.rows])
    main(["status", "--jobstore", str(tmp_path / "jobs.sqlite")])
    out = capsys.readouterr().out
    assert "head nodes" not in out
    assert "studies " not in out
    main(["status", "--jobstore", str(tmp_path / "jobs.sqlite"), "--json"])
    assert "head_nodes" not in json.loads(capsys.readouterr().out)


# -- /metrics ----------------------------------------------------------------------------------


@dataclass
class _View:
    """The running service as ``/metrics`` sees it, on the cluster's store."""

    store: JobStore
    config: Config
    node_name: str = "alpha"

    def readiness(self) -> Readiness:
        return Readiness({"jobstore": True})

    def associations_in_use(self) -> dict[str, int]:
        return {}

    def wake(self) -> None:
        pass

    def status_line(self) -> str:
        return ""


def test_metrics_count_nodes_studies_and_expired_leases(cluster: Cluster, tmp_path: Path) -> None:
    """``pacsman_cluster_nodes``, ``pacsman_studies`` per node and state, and the leases
    waiting for a take-over; no UID, PatientID or path in any line."""
    config = load_config(write_config(tmp_path, port=11112, called_ae_title="ORTHANC"))
    with JobStore(cluster.location) as store:
        body, _ = ServiceMetrics(_View(store, config), process=False).render()
    text = body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    nodes = {state: samples["pacsman_cluster_nodes", (("state", state),)] for state in STATES}
    assert {"alive": 1, "stale": 1, "stopped": 1} == nodes
    studies = {
        labels: value for (name, labels), value in samples.items() if name == "pacsman_studies"
    }
    assert {
        (("node", "alpha"), ("state", "CLAIMED")): 0,
        (("node", "alpha"), ("state", "DONE")): 1,
        (("node", "alpha"), ("state", "FAILED")): 1,
        (("node", "beta"), ("state", "CLAIMED")): 1,
        (("node", "beta"), ("state", "DONE")): 0,
        (("node", "beta"), ("state", "FAILED")): 0,
    } == studies
    assert 1 == samples["pacsman_study_leases_expired", ()]
    assert not any(uid in text for uid in UIDS)
    assert PID not in text
    assert str(tmp_path) not in text


# -- the web page ------------------------------------------------------------------------------

TOKEN = "t0ken-for-the-cluster-tests-0123"


@contextmanager
def _page(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """The service's web page over the cluster's store: a function that GETs a path."""
    config = load_config(write_config(tmp_path, port=11112, called_ae_title="ORTHANC"))
    http = replace(config.serve.http, port=0)
    with JobStore(cluster.location) as store:
        app = make_app(_View(store, config), token=TOKEN)
        with HttpServer(app, http) as server, requests.Session() as session:

            def get(path: str, **headers: str) -> str:
                answer = session.get(server.url + path, headers=headers, timeout=10)
                assert 200 == answer.status_code
                return answer.text

            yield get


def test_web_page_shows_head_nodes_and_where_studies_are(cluster: Cluster, tmp_path: Path) -> None:
    """The front page has a Head nodes panel; a job's page has its studies per node and
    which node holds each, with the StudyInstanceUID only for a request with the token."""
    with _page(cluster, tmp_path) as get:
        front = get("/")
        anonymous = get(f"/jobs/{cluster.job_id}")
        signed = get(f"/jobs/{cluster.job_id}", Authorization=f"Bearer {TOKEN}")
    panel = front[front.index('id="h-nodes"') : front.index('id="h-jobs"')]
    assert "ALPHA_SCP:11112" in panel
    assert re.search(
        r'<td>alpha <small>\(this one\)</small></td>\s*<td><span class="state s-alive">', panel
    )
    assert 's-stale">stale' in panel
    assert 's-stopped">stopped' in panel
    assert f"1 job(s) running, PACS {PACS} 1/2 associations" in panel
    studies = anonymous[anonymous.index('id="h-studies"') : anonymous.index('id="h-rows"')]
    assert re.search(r"<td>beta</td><td>.*s-stale.*</td>(<td class=\"n\">1</td>){2}", studies)
    assert "lease of beta expired" in studies
    assert "another node will take it over" in studies
    assert "held by beta: lease" in studies
    assert not any(uid in anonymous for uid in UIDS)
    assert PID not in anonymous
    assert all(uid in signed for uid in UIDS)


def test_api_job_says_where_its_studies_are(cluster: Cluster, tmp_path: Path) -> None:
    """``GET /api/jobs/{id}``: the job's studies per state and per head node (with the
    node's state), and each study with the node holding it; its StudyInstanceUID only for
    a request with the token."""
    with _page(cluster, tmp_path) as get:
        anonymous = get(f"/api/jobs/{cluster.job_id}")
        signed = get(f"/api/jobs/{cluster.job_id}", Authorization=f"Bearer {TOKEN}")
        listed = get("/api/jobs", Authorization=f"Bearer {TOKEN}")
    found = json.loads(anonymous)["studies"]
    assert 5 == found["total"]
    assert {"OPEN": 1, "CLAIMED": 1, "EXPIRED": 1, "DONE": 1, "FAILED": 1} == found["by_state"]
    assert [
        {
            "node": "alpha",
            "node_state": "alive",
            "CLAIMED": 0,
            "EXPIRED": 0,
            "DONE": 1,
            "FAILED": 1,
        },
        {"node": "beta", "node_state": "stale", "CLAIMED": 1, "EXPIRED": 1, "DONE": 0, "FAILED": 0},
    ] == found["by_node"]
    shown = [(s["line"], s["pacs"], s["state"], s["node"]) for s in found["studies"]]
    assert [
        (2, PACS, "DONE", "alpha"),
        (3, PACS, "FAILED", "alpha"),
        (4, PACS, "CLAIMED", "beta"),
        (5, PACS, "EXPIRED", "beta"),
        (6, PACS, "OPEN", ""),
    ] == shown
    held, expired, still_open = found["studies"][2:5]
    assert 250 < held["lease_seconds_left"] <= 300
    assert held["where"].startswith("held by beta: lease ")
    assert expired["lease_seconds_left"] < 0
    assert "another node will take it over" in expired["where"]
    assert (None, "", 2) == (
        still_open["lease_seconds_left"],
        still_open["owner_node"],
        still_open["series"],
    )
    assert not any("StudyInstanceUID" in s for s in found["studies"])
    assert not any(uid in anonymous for uid in UIDS)
    assert PID not in anonymous
    with_token = json.loads(signed)["studies"]
    assert list(UIDS) == [s["StudyInstanceUID"] for s in with_token["studies"]]
    assert {key for key in found} == {key for key in with_token}
    assert "studies" not in json.loads(listed)["jobs"][0]
