"""``/metrics`` of ``pacsman serve``: gauges read from a real job store at each scrape, live
counters fed through the real logging pipeline (and the child's forwarded events), and no
patient data in any metric or label."""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

import pacsman.log
from pacsman.config import Config, parse_config
from pacsman.errors import JobStoreError
from pacsman.jobstore import JobStore
from pacsman.jobstore._metrics_views import MetricsViews
from pacsman.jobstore.jobs import Job, JobAction, JobOptions
from pacsman.log import add_observer, bind_process, configure_logging, forward, remove_observer
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.service.metrics import ServiceMetrics, retry_cause
from pacsman.service.state import Readiness

#: Until the lead mixes MetricsViews into JobStore, the tests mix it in themselves.
Store: type[JobStore] = (
    JobStore if issubclass(JobStore, MetricsViews) else type("Store", (JobStore, MetricsViews), {})
)

# Planted patient data: none of it may reach /metrics.
PATIENT_ID = "PHI-4711"
PATIENT_NAME = "Doe^Jane"
ACCESSION = "ACC-998877"
STUDY_UID = "1.2.826.0.1.3680043.99.1"
JOB_NAME = "Doe^Jane brain MRI for Dr Smith"
UID = f"{STUDY_UID}.{{}}"
PLANTED = (PATIENT_ID, PATIENT_NAME, ACCESSION, STUDY_UID, JOB_NAME, "Smith", "SUBJ01", "SESS01")


def _config() -> Config:
    nodes = {
        "main": {
            "host": "127.0.0.1",
            "port": 104,
            "called_ae_title": "MAIN",
            "max_associations": 2,
        },
        "backup": {"host": "127.0.0.1", "port": 105, "called_ae_title": "BACKUP"},
    }
    return parse_config({"local": {"ae_title": "PACSMAN"}, "pacs": nodes}, source="test.yaml")


@dataclass
class _View:
    """What the scheduler shows the metrics, with fixed answers."""

    store: JobStore
    config: Config = field(default_factory=_config)
    node_name: str = "head1"
    ready: Readiness = field(
        default_factory=lambda: Readiness(
            checks={"jobstore": True, "scp": True, "pacs_main": False, "disk": True},
            problems=("PACS main did not answer its last C-ECHO",),
            claiming=False,
        )
    )
    in_use: dict[str, int] = field(default_factory=lambda: {"main": 2})

    def readiness(self) -> Readiness:
        return self.ready

    def associations_in_use(self) -> Mapping[str, int]:
        return self.in_use

    def wake(self) -> None:
        pass

    def status_line(self) -> str:
        return ""


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(body: bytes) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _names(samples: Samples, prefix: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {key for key in samples if key[0].startswith(prefix)}


def _series(n: int, instances: int) -> SeriesMatch:
    return SeriesMatch(STUDY_UID, UID.format(n), series_number=str(n), expected_instances=instances)


def _study(*series: SeriesMatch) -> StudyMatch:
    return StudyMatch(
        STUDY_UID,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        accession_number=ACCESSION,
        study_description="brain MRI",
        series=series,
    )


def _job_with_a_run(store: JobStore, tmp_path: Path) -> Job:
    """A RUNNING job (de-identify, push to XNAT) part way through every stage:
    rows 2, 3 QUERIED and 4 PENDING; series 1 COMPLETE, de-identified, pushed; 2 INCOMPLETE;
    3 RETRIEVING; 4 COMPLETE, not de-identified yet; 5 COMPLETE, de-identified, not pushed."""
    options = JobOptions(save=True, anonymize=True, push="xnat")
    job = store.add_job(name=JOB_NAME, queryfile_name="q.csv", content=b"x", options=options)
    claimed = store.claim_job("head1")
    assert claimed is not None
    assert job.id == claimed.id
    rows = tuple(QueryRow(line=n, keys={"PatientID": PATIENT_ID}) for n in (2, 3, 4))
    queryfile = QueryFile(path=tmp_path / "q.csv", sha256="a" * 64, rows=rows)
    run = store.open_run(queryfile, "c" * 64, default_pacs="main", job_id=job.id)
    store.attach_run(job.id, run.id)
    store.add_rows(run, [(row, "main") for row in rows])
    store.record_query(run, RowResult(rows[0], "main", (_study(_series(1, 3), _series(2, 2)),)))
    second = _study(_series(3, 4), _series(4, 5), _series(5, 2))
    store.record_query(run, RowResult(rows[1], "main", (second,)))
    series = {s.series_number: s for s in store.series_for_retrieve(run)}
    for number, state, received in (
        ("1", ItemState.COMPLETE, 3),
        ("2", ItemState.INCOMPLETE, 1),
        ("3", ItemState.RETRIEVING, None),
        ("4", ItemState.COMPLETE, 5),
        ("5", ItemState.COMPLETE, 2),
    ):
        store.update_series(run, series[number], state, received=received)
    anonymize = {s.series_number: s for s in store.series_for_anonymize(run)}
    for number, session in (("1", "SESS01"), ("5", "SESS02")):
        store.record_anonymization(
            run,
            anonymize[number],
            ItemState.ANONYMIZED,
            written=1,
            detail="",
            experiment=(f"SUBJ0{number}", session),
            directory=tmp_path / "deid" / session,
        )
    store.record_push(run, "xnat", ("SUBJ01", "SESS01"), ItemState.DONE, uri="/data/x")
    return store.job(job.id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with Store(tmp_path / "jobs.sqlite") as opened:
        yield opened


def test_the_job_store_counts_per_job_at_each_scrape(store: JobStore, tmp_path: Path) -> None:
    """Rows, series per stage and state, sessions per push state, verified-vs-expected
    instances and the queue per stage: what the store holds for each job, now."""
    job = _job_with_a_run(store, tmp_path)
    queued = store.add_job(
        name="second", queryfile_name="r.csv", content=b"x", options=JobOptions()
    )
    samples = _samples(ServiceMetrics(_View(store)).render()[0])
    key = str(job.id)
    assert {
        ("QUEUED", 1.0),
        ("RUNNING", 1.0),
        ("PAUSED", 0.0),
        ("DONE", 0.0),
        ("FAILED", 0.0),
        ("CANCELLED", 0.0),
    } == {
        (dict(labels)["state"], v)
        for (name, labels), v in samples.items()
        if name == "pacsman_jobs"
    }
    assert 1 == _value(samples, "pacsman_job_state", job_id=key, state="RUNNING")
    assert 1 == _value(samples, "pacsman_job_state", job_id=str(queued.id), state="QUEUED")
    assert set() == {  # not started: its rows are not known yet
        name for name, labels in samples if ("job_id", str(queued.id)) in labels
    } - {"pacsman_job_state"}
    assert {"QUERIED": 2, "PENDING": 1} == {
        dict(labels)["state"]: v
        for (name, labels), v in samples.items()
        if name == "pacsman_job_rows" and dict(labels)["job_id"] == key
    }
    assert {
        ("retrieve", "COMPLETE"): 3,
        ("retrieve", "INCOMPLETE"): 1,
        ("retrieve", "RETRIEVING"): 1,
        ("deidentify", "ANONYMIZED"): 2,
    } == {
        (dict(labels)["stage"], dict(labels)["state"]): v
        for (name, labels), v in samples.items()
        if name == "pacsman_job_series"
    }
    assert 1 == _value(samples, "pacsman_job_sessions", job_id=key, state="DONE")
    assert 1 == _value(samples, "pacsman_job_sessions", job_id=key, state="PENDING")
    assert 3 + 2 + 4 + 5 + 2 == _value(samples, "pacsman_job_instances_expected", job_id=key)
    assert 3 + 5 + 2 == _value(samples, "pacsman_job_instances_verified", job_id=key)
    assert {"query": 1, "retrieve": 1, "deidentify": 1, "push": 1} == {
        dict(labels)["stage"]: v
        for (name, labels), v in samples.items()
        if name == "pacsman_job_queue_depth" and dict(labels)["job_id"] == key
    }
    assert 1 == _value(samples, "pacsman_jobstore_readable")


def test_the_running_service_readiness_and_associations(store: JobStore) -> None:
    """Readiness as a whole and per check, whether it claims, and associations in use per
    PACS node beside each node's max_associations."""
    samples = _samples(ServiceMetrics(_View(store)).render()[0])
    assert 0 == _value(samples, "pacsman_ready")
    assert {"jobstore": 1, "scp": 1, "pacs_main": 0, "disk": 1} == {
        dict(labels)["check"]: v
        for (name, labels), v in samples.items()
        if name == "pacsman_ready_check"
    }
    assert 0 == _value(samples, "pacsman_claiming")
    assert (2, 0) == (
        _value(samples, "pacsman_associations_in_use", pacs="main"),
        _value(samples, "pacsman_associations_in_use", pacs="backup"),
    )
    assert (2, 1) == (
        _value(samples, "pacsman_associations_max", pacs="main"),
        _value(samples, "pacsman_associations_max", pacs="backup"),
    )
    assert 1 == _value(samples, "pacsman_service_info", node="head1", version=pacsman.__version__)
    assert _value(samples, "process_resident_memory_bytes")


def test_jobs_that_ended_long_ago_leave_the_per_job_metrics(
    store: JobStore, tmp_path: Path
) -> None:
    """A job that ended more than a day ago is still counted in ``pacsman_jobs`` but has no
    per-job series any more, so a service that runs for months keeps its label sets small."""
    job = _job_with_a_run(store, tmp_path)
    old = store.add_job(name="old", queryfile_name="o.csv", content=b"x", options=JobOptions())
    store.request_job(old.id, JobAction.CANCEL)
    later = datetime.now(UTC) + timedelta(hours=25)
    samples = _samples(ServiceMetrics(_View(store), clock=lambda: later).render()[0])
    assert 1 == _value(samples, "pacsman_jobs", state="CANCELLED")
    assert {str(job.id)} == {
        dict(labels)["job_id"] for name, labels in samples if name == "pacsman_job_state"
    }


def _restore_logging() -> None:
    """Leave logging as a test process starts: structlog's defaults, no context bound."""
    structlog.reset_defaults()
    pacsman.log._process_context.clear()


@contextmanager
def _observed(metrics: ServiceMetrics) -> Iterator[io.StringIO]:
    """JSON logging at info level into a string, with ``metrics`` observing every event."""
    stream = io.StringIO()
    configure_logging(level="info", console="json", stream=stream)
    add_observer(metrics.observe, events=metrics.events)
    try:
        yield stream
    finally:
        remove_observer(metrics.observe)
        _restore_logging()


_CONGESTION = (
    "PACS main (MAIN@127.0.0.1:104) answered the C-MOVE with 0xA702 (Refused: out of "
    "resources, unable to perform sub-operations)"
)


def _log_the_pipeline_events() -> None:
    """What the retrieve workers, the scheduler and the child process log, as they log it."""
    log = structlog.get_logger("pacsman.test")
    for _ in range(2):
        log.warning("retrying", operation="c_move", attempt=1, reason=_CONGESTION, pacs="main")
    log.warning(
        "retrying",
        operation="c_find",
        reason="C-FIND to PACS main: no C-FIND response within 30 s; aborted; retrying",
        pacs="main",
    )
    log.warning("retrying", operation="push", reason="XNAT answered 503", session="P/S/E")
    log.warning(
        "retrying",
        operation="c_get",
        reason=f"PACS main refused PatientID {PATIENT_ID} ({PATIENT_NAME})",
        pacs="a PACS nobody configured",
        cause="Not A Cause!",
        patient_id=PATIENT_ID,
    )
    log.debug("dimse_status", pacs="main", operation="c_move", status=0x0000)
    log.debug("dimse_status", pacs="main", operation="c_move", status=0xA702)
    log.debug("dimse_status", pacs="main", operation="c_find", status=None)
    for state in ("COMPLETE", "INCOMPLETE"):
        log.info("series_retrieved", pacs="main", row=2, state=state, study_uid=STUDY_UID)
    log.error("series_failed", pacs="main", row=3, reason=f"{ACCESSION} refused", series=2)
    forward(  # the de-identify/push process's event, as its JSON line came over the pipe
        {
            "event": "push_done",
            "level": "info",
            "timestamp": "2026-12-05T12:00:00Z",
            "session": "P1/SUBJ01/SESS01",
            "files": 3,
            "elapsed_s": 3.5,
        }
    )
    log.info("push_done", session="P1/SUBJ02/SESS02", elapsed_s=12.0)
    log.warning("push_failed", session="P1/SUBJ03/SESS03", reason="refused", elapsed_s=0.7)


def test_live_counters_come_from_the_events_the_service_logs(store: JobStore) -> None:
    """Retries by operation and cause, final DIMSE statuses (debug events, counted though the
    log shows info and up), series verdicts, pushes and their latency (the child's forwarded
    events too), and what the job runner reports retrieved."""
    metrics = ServiceMetrics(_View(store))
    with _observed(metrics) as stream:
        _log_the_pipeline_events()
    metrics.retrieved("main", 10, 5_000)
    metrics.retrieved("main", 2, 1_000)
    metrics.retrieved("unknown", 1, 10)
    samples = _samples(metrics.render()[0])
    assert {
        ("c_move", "congestion", "main"): 2,
        ("c_find", "timeout", "main"): 1,
        ("push", "http_503", ""): 1,
        ("c_get", "other", "other"): 1,
    } == {
        (dict(labels)["operation"], dict(labels)["cause"], dict(labels)["pacs"]): v
        for (name, labels), v in samples.items()
        if name == "pacsman_retries_total"
    }
    assert {("c_move", "0x0000"): 1, ("c_move", "0xA702"): 1, ("c_find", "none"): 1} == {
        (dict(labels)["operation"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "pacsman_dimse_responses_total"
    }
    assert "dimse_status" not in stream.getvalue()  # observed, not shown at info level
    assert "series_retrieved" in stream.getvalue()
    assert (1, 1, 2) == tuple(
        _value(samples, "pacsman_series_verdicts_total", pacs="main", state=state)
        for state in ("COMPLETE", "INCOMPLETE", "FAILED")
    )
    assert (2, 1) == (
        _value(samples, "pacsman_sessions_pushed_total", state="DONE"),
        _value(samples, "pacsman_sessions_pushed_total", state="FAILED"),
    )
    assert (2, 15.5, 1) == (
        _value(samples, "pacsman_push_seconds_count", state="DONE"),
        _value(samples, "pacsman_push_seconds_sum", state="DONE"),
        _value(samples, "pacsman_push_seconds_bucket", state="DONE", le="5.0"),
    )
    assert (12, 6_000, 1) == (
        _value(samples, "pacsman_retrieved_instances_total", pacs="main"),
        _value(samples, "pacsman_retrieved_bytes_total", pacs="main"),
        _value(samples, "pacsman_retrieved_instances_total", pacs="other"),
    )


def test_events_are_counted_whatever_the_log_level(store: JobStore) -> None:
    """``log.level: warning`` leaves series verdicts out of the log, not out of /metrics."""
    metrics = ServiceMetrics(_View(store), process=False)
    stream = io.StringIO()
    configure_logging(level="warning", console="json", stream=stream)
    add_observer(metrics.observe, events=metrics.events)
    try:
        structlog.get_logger("pacsman.test").info("series_retrieved", pacs="main", state="COMPLETE")
    finally:
        remove_observer(metrics.observe)
        _restore_logging()
    samples = _samples(metrics.render()[0])
    assert 1 == _value(samples, "pacsman_series_verdicts_total", pacs="main", state="COMPLETE")
    assert "" == stream.getvalue()


def test_no_patient_data_in_any_metric_or_label(store: JobStore, tmp_path: Path) -> None:
    """PatientID, name, accession, UIDs, the job's name and XNAT labels are in the store and
    in the events; none of them is in the body /metrics serves."""
    _job_with_a_run(store, tmp_path)
    metrics = ServiceMetrics(_View(store))
    with _observed(metrics):
        _log_the_pipeline_events()
    body = metrics.render()[0].decode("utf-8")
    assert [] == [planted for planted in PLANTED if planted in body]
    assert "pacsman_job_series" in body
    assert "pacsman_retries_total" in body


def test_render_gives_the_text_format_and_its_content_type(store: JobStore) -> None:
    """The 0.0.4 text format every Prometheus reads; only pacsman_ and process_ names, and
    no ``_created`` series beside the counters."""
    metrics = ServiceMetrics(_View(store))
    metrics.retrieved("main", 1, 100)
    body, content_type = metrics.render()
    assert "text/plain; version=0.0.4; charset=utf-8" == content_type
    assert b"_created" not in body  # prometheus-client's second series per counter
    names = {family.name for family in text_string_to_metric_families(body.decode("utf-8"))}
    assert {n for n in names if not n.startswith(("pacsman_", "process_"))} == set()


def test_an_observer_never_raises_whatever_the_event() -> None:
    """Events of the wrong shape are counted as ``other`` or ignored, never raised."""
    metrics = ServiceMetrics(_View(store=None), process=False)  # type: ignore[arg-type]
    for event in (
        {"event": ["not", "hashable"]},
        {"event": "retrying", "reason": object(), "operation": 5, "pacs": ["x"]},
        {"event": "dimse_status", "status": "bogus", "operation": None},
        {"event": "dimse_status", "status": True},
        {"event": "push_done", "elapsed_s": "soon"},
        {"event": "series_failed", "series": -3},
        {},
        None,
    ):
        metrics.observe(event)  # type: ignore[arg-type]


def test_the_log_hook_hands_every_event_to_observers_and_survives_their_errors() -> None:
    """Observers see the process context, every event the log takes and the debug events
    they name (the log still shows info and up); one that raises costs the log nothing; a
    removed one sees no more."""
    seen: list[dict[str, Any]] = []

    def broken(event: Mapping[str, Any]) -> None:
        raise RuntimeError("an observer's bug")

    def record(event: Mapping[str, Any]) -> None:
        seen.append(dict(event))

    stream = io.StringIO()
    configure_logging(level="info", console="json", stream=stream)
    bind_process(run_id=7)
    add_observer(broken, events=["quiet"])
    add_observer(record)
    try:
        log = structlog.get_logger("pacsman.test")
        log.debug("quiet", n=1)
        log.debug("unnamed", n=0)
        log.info("loud", n=2)
        remove_observer(record)
        remove_observer(record)  # no longer there: nothing happens
        log.info("unseen", n=3)
    finally:
        remove_observer(broken)
        _restore_logging()
    assert [("quiet", "debug", 7), ("loud", "info", 7)] == [
        (e["event"], e["level"], e["run_id"]) for e in seen
    ]
    shown = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert ["loud", "unseen"] == shown


def test_an_unreadable_job_store_leaves_the_rest_of_the_scrape(store: JobStore) -> None:
    """A job store that cannot be read now: ``pacsman_jobstore_readable`` 0, the rest served."""

    class _Broken:
        @contextmanager
        def snapshot(self) -> Iterator[None]:
            raise JobStoreError("job store x: disk I/O error")
            yield

    samples = _samples(ServiceMetrics(_View(store=_Broken())).render()[0])  # type: ignore[arg-type]
    assert (0, 0) == (
        _value(samples, "pacsman_jobstore_readable"),
        _value(samples, "pacsman_ready"),
    )


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (_CONGESTION, "congestion"),
        ("PACS main answered C-FIND with 0xFE00 (Cancel: sub-operations terminated)", "cancelled"),
        (
            "PACS main rejected the association from calling AE 'PACSMAN' for now (source 3, "
            "reason 2): the PACS refused a new association (local limit exceeded)",
            "association_rejected",
        ),
        (
            "PACS main took the connection but did not answer the association request within "
            "30 s (pacs.main.timeouts.acse)",
            "association_failed",
        ),
        (
            "retrieve from PACS main ended without a final status after 3 completed "
            "sub-operation(s) (association aborted or timed out)",
            "no_answer",
        ),
        ("C-FIND to PACS main: no C-FIND response within 30 s; aborted; retrying", "timeout"),
        (
            "C-FIND to PACS main: the PACS released or aborted the association during the "
            "C-FIND; retrying",
            "aborted",
        ),
        ("xnat: XNAT answered 503 (Service Unavailable)", "http_503"),
        ("xnat: no TCP connection within 10 s (the host does not answer)", "connection"),
        ("xnat: the XNAT login session was closed; logging in again", "xnat_login"),
        ("XNAT is still building P/S/E in its prearchive", "xnat_building"),
        (
            "XNAT accepted P/S/E but holds 3 of 5 file(s) (scan 2); sending it again",
            "incomplete_on_target",
        ),
        ("PACS main answered C-ECHO with 0x0110 (Failure: processing failure)", "dimse_failure"),
        (f"something new about {PATIENT_ID}", "other"),
    ],
)
def test_a_retry_s_reason_becomes_a_short_cause(reason: str, cause: str) -> None:
    """The reason (free text that may name a session or a file) never becomes a label."""
    assert cause == retry_cause(reason)


def test_a_scrape_of_a_large_job_takes_a_few_aggregate_queries(
    store: JobStore, tmp_path: Path
) -> None:
    """5,000 series in one job: the scrape reads them in well under a second."""
    job = store.add_job(name="big", queryfile_name="b.csv", content=b"x", options=JobOptions())
    store.claim_job("head1")
    rows = tuple(QueryRow(line=n, keys={"PatientID": f"P{n}"}) for n in range(2, 102))
    queryfile = QueryFile(path=tmp_path / "b.csv", sha256="b" * 64, rows=rows)
    run = store.open_run(queryfile, "c" * 64, default_pacs="main", job_id=job.id)
    store.attach_run(job.id, run.id)
    store.add_rows(run, [(row, "main") for row in rows])
    for row in rows:
        series = tuple(
            SeriesMatch(
                f"{STUDY_UID}.{row.line}", f"{STUDY_UID}.{row.line}.{n}", str(n), "MR", "", 10
            )
            for n in range(50)
        )
        store.record_query(
            run, RowResult(row, "main", (StudyMatch(f"{STUDY_UID}.{row.line}", series=series),))
        )
    metrics = ServiceMetrics(_View(store))
    started = time.perf_counter()
    samples = _samples(metrics.render()[0])
    elapsed = time.perf_counter() - started
    assert 5_000 == _value(
        samples, "pacsman_job_series", job_id=str(job.id), stage="retrieve", state="QUERIED"
    )
    assert 50_000 == _value(samples, "pacsman_job_instances_expected", job_id=str(job.id))
    assert elapsed < 1.0, f"a scrape took {elapsed:.2f} s"
