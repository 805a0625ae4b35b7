"""``pacsman dqr`` end to end: the XNAT emulator's DQR in front of a real Orthanc, the real
command, the job store (issue 16 A).

Every fault switch of the emulator ends each study DONE, or FAILED/PARTIAL with a reason,
within a bound: tiny intervals and staleness timers come from the config.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pacsman.cli import main
from pacsman.config.dqr import DqrConfig, DqrStaleAfter
from pacsman.dqr import DqrState, DqrStudy
from pacsman.dqr._follow import Action, Seen, Watch, backoff, judge
from pacsman.dqr._model import (
    ArrivalVerdict,
    QueuedRequest,
    RequestStatus,
    RowProblem,
    RowProblemKind,
    SessionArrival,
)
from pacsman.dqr._run import _row_outcomes
from pacsman.jobstore import JobStore, RowQuery, RunRecord
from pacsman.jobstore.dqr import DqrLedger, DqrRow, DqrStudyRecord
from pacsman.models import ItemState, QueryFile, QueryRow
from pacsman.pipeline._runview import Activity, RunActivity
from pacsman.pipeline.dqrstatus import DqrRunStatus, dqr_status_lines
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, benchmark_cohort, iter_datasets
from pacsman.testing.xnat_emulator import DqrPacs, XnatEmulator
from tests.helpers import write_config, write_queryfile

PROJECT = "PROJ"
SCRIPT = 'version "6.1"\n(0010,0030) := ""\n'
BRAIN, KNEE, SPINE, CHEST = DEMO_STUDIES  # 23, 13, 27 and 13 instances
#: Every test's bound: a run that has not settled by then is a failure.
BOUND = 60.0
QUERY = """\
AccessionNumber,Subject,Session
ACC0001,SUBJ01,SESS01
ACC0002,SUBJ02,SESS02
"""


# -- the peers and the command ---------------------------------------------------------------


def _emulator(data: Path, orthanc: OrthancServer, **kwargs: Any) -> XnatEmulator:
    pacs = DqrPacs(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "Test PACS")
    settings: dict[str, Any] = {
        "projects": [PROJECT],
        "dqr_pacs": [pacs],
        "dqr_session_idle": 0.1,
        "dqr_step": 0.02,
        "anonymization_scripts": {PROJECT: SCRIPT},
    }
    return XnatEmulator(data, **(settings | kwargs))


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The emulator's login, as pacsman's push finds it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")


@pytest.fixture
def xnat(tmp_path: Path, demo_orthanc: OrthancServer, credentials: None) -> Iterator[XnatEmulator]:
    """An emulator whose DQR pulls from the demo Orthanc (its receiver registered there)."""
    with _emulator(tmp_path / "xnat", demo_orthanc) as running:
        demo_orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", running.dqr_receiver_port)
        yield running


def dqr_config(
    tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator, *, query: str = "pacs", **dqr: Any
) -> Path:
    """A config for ``pacsman dqr`` with tiny intervals and timers (``dqr`` overrides)."""
    settings: dict[str, Any] = {
        "receiver_port": xnat.dqr_receiver_port,
        "query": query,
        "interval": 0,
        "poll_interval": 0.05,
        "max_in_flight": 2,
        "max_attempts": 3,
        "backoff_max": 0.1,
    }
    stale = {"queued": 5, "processing": 1, "issued": 1, "received": 1} | dqr.pop("stale", {})
    settings |= dqr
    lines = "".join(
        f"  {k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in settings.items()
    )
    stale_lines = "".join(f"    {k}: {v}\n" for k, v in stale.items())
    extra = f"xnat:\n  url: {xnat.url}\n  project: {PROJECT}\n"
    extra += f"dqr:\n{lines}  stale_after:\n{stale_lines}"
    return write_config(
        tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title, extra=extra
    )


def run_dqr(config: Path, queryfile: Path, *more: str) -> int:
    """``pacsman dqr`` in this process; returns the exit code."""
    return main(["dqr", "--queryfile", str(queryfile), "--config", str(config), *more])


def studies(tmp_path: Path) -> dict[int, Any]:
    """The dqr studies of the job store's newest run, by line."""
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        ledger = DqrLedger(store)
        newest = max(r.id for r in store.run_records())
        run = store.run_by_id(newest)
        return {r.line: r for r in ledger.studies(run)}


def sessions(xnat: XnatEmulator) -> dict[str, int]:
    """Session label -> files, for every session of the project."""
    return {s.label: s.file_count for s in xnat.sessions(PROJECT)}


# -- the happy path ----------------------------------------------------------------------------


def test_happy_path_every_session_once_and_verified(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two rows, counts from pacsman's C-FIND: both DONE (verified), each session once; a rerun
    imports nothing and exits 0 again."""
    config = dqr_config(tmp_path, demo_orthanc, xnat)
    queryfile = write_queryfile(tmp_path, QUERY)
    started = time.monotonic()
    assert 0 == run_dqr(config, queryfile, "--info")
    took = time.monotonic() - started
    out = capsys.readouterr().out
    found = studies(tmp_path)
    assert {2: DqrState.DONE, 3: DqrState.DONE} == {line: r.state for line, r in found.items()}
    assert {"SESS01": 23, "SESS02": 13} == sessions(xnat)
    assert 2 == len(xnat.dqr_requests())
    assert "2 done" in out
    assert "every row done" in out
    with (tmp_path / "data" / "q_dqr_info.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert ["DONE", "DONE"] == [r["state"] for r in rows]
    assert ["yes", "yes"] == [r["counts_verified"] for r in rows]
    assert took < BOUND
    assert 0 == run_dqr(config, queryfile)
    assert 2 == len(xnat.dqr_requests())
    assert "0 call(s)" in capsys.readouterr().out
    queryfile.write_text(QUERY.replace("\n", "\n\n", 1), encoding="utf-8")  # lines 3 and 4
    assert 0 == run_dqr(config, queryfile)
    assert "run 1 (resumed)" in capsys.readouterr().out
    assert {3: DqrState.DONE, 4: DqrState.DONE} == {
        n: r.state for n, r in studies(tmp_path).items()
    }


def test_thirty_studies_each_session_once_and_complete(
    tmp_path: Path, orthanc: OrthancServer, credentials: None
) -> None:
    """30 studies (labels from the mapping table), five at XNAT at once: every session once,
    complete, with the counts pacsman's C-FIND promised."""
    cohort = benchmark_cohort(60, n_studies=30, series_per_study=2, rows=8, columns=8)
    orthanc.upload_datasets(ds for spec in cohort for ds in iter_datasets(spec))
    rows = "".join(f"{spec.accession_number}\n" for spec in cohort)
    queryfile = write_queryfile(tmp_path, "AccessionNumber\n" + rows)
    with _emulator(tmp_path / "xnat", orthanc, dqr_session_idle=0.05) as xnat:
        orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", xnat.dqr_receiver_port)
        config = dqr_config(tmp_path, orthanc, xnat, max_in_flight=5)
        started = time.monotonic()
        assert 0 == run_dqr(config, queryfile)
        took = time.monotonic() - started
        found = sessions(xnat)
        requested = [r["studyInstanceUid"] for r in xnat.dqr_requests()]
    assert 30 == len(found)
    assert {2} == set(found.values())
    assert sorted(str(s.study_instance_uid) for s in cohort) == sorted(requested)
    assert {DqrState.DONE} == {r.state for r in studies(tmp_path).values()}
    assert took < BOUND


# -- every fault switch ends each study with a verdict ---------------------------------------

ONE = "AccessionNumber,Subject,Session\nACC0001,SUBJ01,SESS01\n"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"dqr_failed": 1}, "FAILED"),
        ({"dqr_stuck_processing": 1}, "stayed PROCESSING"),
        ({"dqr_stuck_issued": 1}, "stayed ISSUED"),
        ({"dqr_import_status": 500}, "import call failed"),
    ],
)
def test_a_request_given_up_is_asked_again_and_ends_done(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    fault: dict[str, Any],
    reason: str,
) -> None:
    """FAILED inside XNAT, stuck in PROCESSING or ISSUED (past the timer), 500 on import: the
    request is given up, the study asked for again, and the session ends complete, once."""
    config = dqr_config(tmp_path, demo_orthanc, xnat)
    xnat.faults.update(fault)
    assert 0 == run_dqr(config, write_queryfile(tmp_path, ONE))
    (record,) = studies(tmp_path).values()
    assert (DqrState.DONE, 2) == (record.state, record.attempts)
    assert {"SESS01": 23} == sessions(xnat)
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        details = [r[0] for r in store._read("SELECT detail FROM transitions WHERE kind = 'dqr'")]
    assert any(reason in d for d in details), details


@pytest.mark.parametrize(
    ("fault", "files", "detail"),
    [
        ({"dqr_partial": 1, "dqr_partial_drop": 2}, 21, "21 of 23 file(s)"),
        ({"dqr_zero_files": 1}, 0, "0 files"),
    ],
)
def test_a_partial_or_empty_session_is_reported_or_replaced(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
    fault: dict[str, Any],
    files: int,
    detail: str,
) -> None:
    """Without replace_partial: PARTIAL with the files short, exit 1, the session kept; the
    same command with replace_partial: the session deleted, asked again, DONE and complete."""
    queryfile = write_queryfile(tmp_path, ONE)
    xnat.faults.update(fault)
    assert 1 == run_dqr(dqr_config(tmp_path, demo_orthanc, xnat), queryfile)
    (record,) = studies(tmp_path).values()
    assert DqrState.PARTIAL == record.state
    assert detail in record.detail
    assert "dqr.replace_partial" in record.detail
    assert {"SESS01": files} == sessions(xnat)
    assert "line 2: PARTIAL" in capsys.readouterr().out
    xnat.faults.update(fault)  # the first request after the deletion is partial again
    config = dqr_config(tmp_path, demo_orthanc, xnat, replace_partial=True)
    assert 0 == run_dqr(config, queryfile)
    (record,) = studies(tmp_path).values()
    assert DqrState.DONE == record.state
    assert {"SESS01": 23} == sessions(xnat)


def test_a_queue_that_stops_moving_fails_each_study_with_the_reason(
    tmp_path: Path, demo_orthanc: OrthancServer, xnat: XnatEmulator
) -> None:
    """The 843-of-1,910 jam: nothing leaves XNAT's queue; each study is asked for up to
    max_attempts times, each request given up at the queued timer, then FAILED."""
    xnat.faults.dqr_queue_stops_after = 0
    config = dqr_config(tmp_path, demo_orthanc, xnat, max_attempts=2, stale={"queued": 0.3})
    started = time.monotonic()
    assert 1 == run_dqr(config, write_queryfile(tmp_path, QUERY))
    assert time.monotonic() - started < BOUND
    found = studies(tmp_path)
    assert {DqrState.FAILED} == {r.state for r in found.values()}
    for record in found.values():
        assert 2 == record.attempts
        assert "stayed QUEUED" in record.detail
        assert "dqr.max_attempts" in record.detail
    assert 4 == len(xnat.dqr_requests())
    assert {} == sessions(xnat)


def test_403_stops_the_run_and_leaves_the_studies_resumable(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A project not DQR-enabled: exit 3 with the fix, nothing queued, studies PENDING with no
    attempt spent; once enabled, the same command finishes them."""
    config = dqr_config(tmp_path, demo_orthanc, xnat)
    queryfile = write_queryfile(tmp_path, QUERY)
    xnat.faults.dqr_disabled_projects = (PROJECT,)
    assert 3 == run_dqr(config, queryfile)
    assert "DQR is not enabled for project" in capsys.readouterr().err
    assert {(DqrState.PENDING, 0)} == {(r.state, r.attempts) for r in studies(tmp_path).values()}
    assert [] == xnat.dqr_requests()
    xnat.faults.dqr_disabled_projects = ()
    assert 0 == run_dqr(config, queryfile)
    assert {"SESS01": 23, "SESS02": 13} == sessions(xnat)


# -- what is already there, labels, rows ------------------------------------------------------


def test_counts_unverified_with_dqrs_own_query(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dqr.query xnat: no counts, so the sessions settle UNVERIFIED (exit 0, listed apart as
    counts unverified, never as verified)."""
    config = dqr_config(tmp_path, demo_orthanc, xnat, query="xnat")
    assert 0 == run_dqr(config, write_queryfile(tmp_path, QUERY))
    found = studies(tmp_path)
    assert {DqrState.UNVERIFIED} == {r.state for r in found.values()}
    assert all("counts unverified" in r.detail for r in found.values())
    out = capsys.readouterr().out
    assert "2 done, counts unverified" in out
    assert "counts unverified: 2 session(s)" in out
    assert {"SESS01": 23, "SESS02": 13} == sessions(xnat)


def test_existing_sessions_are_skipped_and_a_taken_label_fails_before_any_import(
    tmp_path: Path, demo_orthanc: OrthancServer, xnat: XnatEmulator
) -> None:
    """A complete session already there is DONE without an import; a row whose Session label
    holds another study FAILS before any import; a row matching nothing is NO_MATCH."""
    config = dqr_config(tmp_path, demo_orthanc, xnat)
    first = write_queryfile(tmp_path, ONE, "first.csv")
    assert 0 == run_dqr(config, first)
    assert 0 == run_dqr(config, first, "--new-run")
    assert 1 == len(xnat.dqr_requests())
    (record,) = studies(tmp_path).values()
    assert DqrState.DONE == record.state
    assert "already in XNAT" in record.detail
    text = "AccessionNumber,Subject,Session\nACC0002,SUBJ01,SESS01\nNOSUCHACC,SUBJ09,SESS09\n"
    assert 1 == run_dqr(config, write_queryfile(tmp_path, text, "second.csv"))
    (record,) = studies(tmp_path).values()
    assert DqrState.FAILED == record.state
    assert "another Session label" in record.detail
    assert 1 == len(xnat.dqr_requests())
    with JobStore(tmp_path / "jobs.sqlite", read_only=True) as store:
        newest = store.run_by_id(max(r.id for r in store.run_records()))
        assert "NO_MATCH" == store.row_states(newest)[3].value
    assert {"SESS01": 23} == sessions(xnat)


def test_status_and_report_show_a_dqr_runs_studies_and_reasons(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``pacsman status`` shows a dqr run's studies by state and the rows needing attention;
    ``pacsman report`` writes each row with its state and reason; ``runs`` lists it."""
    xnat.faults.dqr_zero_files = 1
    text = QUERY + "NOSUCHACC,SUBJ09,SESS09\n"
    assert 1 == run_dqr(dqr_config(tmp_path, demo_orthanc, xnat), write_queryfile(tmp_path, text))
    capsys.readouterr()
    store = ["--jobstore", str(tmp_path / "jobs.sqlite")]
    assert 1 == main(["status", "--run", "1", *store])
    out = capsys.readouterr().out
    assert "(pacsman dqr)" in out
    assert "studies      2: 1 done, 1 partial" in out
    assert "rows         3: 2 resolved, 1 no match" in out
    assert "line 2: PARTIAL: session 'SESS01' exists with 0 files" in out
    assert "line 4: NO_MATCH: no study at PACS node" in out
    assert "pacsman dqr --queryfile" in out
    report = tmp_path / "report.csv"
    assert 0 == main(["report", "--run", "1", "--out", str(report), *store])
    with report.open(encoding="utf-8") as fh:
        rows = {int(r["row"]): r for r in csv.DictReader(fh)}
    assert ["PARTIAL", "DONE", ""] == [rows[line]["state"] for line in (2, 3, 4)]
    assert ["yes", "", "yes"] == [rows[line]["attention"] for line in (2, 3, 4)]
    assert "0 files" in rows[2]["reason"]
    assert "ACC0002" == rows[3]["AccessionNumber"]
    capsys.readouterr()
    assert 0 == main(["runs", "--json", *store])
    (listed,) = json.loads(capsys.readouterr().out)
    assert (1, 3, 2) == (listed["run"], listed["rows"], listed["attention"])


# -- the follow rules, without a peer --------------------------------------------------------


def _seen(status: RequestStatus | None, *, age: float = 0.0, **kwargs: Any) -> Seen:
    request = None if status is None else QueuedRequest(7, "1.2.3", status)
    fields: dict[str, Any] = {
        "state": DqrState.QUEUED,
        "request_id": 7,
        "request": request,
        "missing_polls": 0,
        "status_since": 1000.0 - age,
    }
    return Seen(**(fields | kwargs))


def test_staleness_timer_per_status() -> None:
    """Each status has its timer; RECEIVING, BUILDING and unknown statuses use issued."""
    config = DqrConfig(stale_after=DqrStaleAfter(queued=10, processing=20, issued=30, received=40))
    for status, limit in [
        (RequestStatus.QUEUED, 10),
        (RequestStatus.PROCESSING, 20),
        (RequestStatus.ISSUED, 30),
        (RequestStatus.RECEIVING, 30),
        (RequestStatus.BUILDING, 30),
        (RequestStatus.UNKNOWN, 30),
        (RequestStatus.RECEIVED, 40),
    ]:
        assert Action.WAIT == judge(_seen(status, age=limit - 1), "E", 1000.0, config).action
        assert Action.GIVE_UP == judge(_seen(status, age=limit + 1), "E", 1000.0, config).action
    failed = judge(_seen(RequestStatus.ERROR), "E", 1000.0, config)
    assert (Action.GIVE_UP, "XNAT reported request 7 ERROR") == (failed.action, failed.detail)


def test_a_vanished_request_is_stale_after_more_than_one_poll() -> None:
    """Missing from queue and history once: wait; twice: given up."""
    config = DqrConfig()
    assert Action.WAIT == judge(_seen(None, missing_polls=1), "E", 1000.0, config).action
    assert Action.GIVE_UP == judge(_seen(None, missing_polls=2), "E", 1000.0, config).action


def test_unverified_settles_only_once_the_session_held_still() -> None:
    """Files there without counts: UNVERIFIED only after the same look over two polls; a
    partial session after RECEIVED likewise; a complete one at once."""
    config = DqrConfig()
    watch = Watch()
    arrival = SessionArrival(ArrivalVerdict.UNVERIFIED, 5, (("1", 5),))
    actions = []
    for _ in range(3):
        looks = watch.look("1.2.3", arrival)
        seen = _seen(RequestStatus.RECEIVED, arrival=arrival, still_looks=looks)
        actions.append(judge(seen, "E", 1000.0, config).action)
    assert [Action.WAIT, Action.WAIT, Action.SETTLE] == actions
    short = SessionArrival(ArrivalVerdict.PARTIAL, 4, (("1", 4),), "4 of 5 file(s)")
    issued = _seen(RequestStatus.ISSUED, arrival=short, still_looks=3)
    assert Action.WAIT == judge(issued, "E", 1000.0, config).action
    received = _seen(RequestStatus.RECEIVED, arrival=short, still_looks=3)
    assert Action.PARTIAL == judge(received, "E", 1000.0, config).action
    complete = SessionArrival(ArrivalVerdict.COMPLETE, 5, (("1", 5),))
    verdict = judge(_seen(RequestStatus.ISSUED, arrival=complete, still_looks=1), "E", 0, config)
    assert (Action.SETTLE, DqrState.DONE) == (verdict.action, verdict.state)


def test_backoff_doubles_up_to_backoff_max() -> None:
    """One poll interval, doubled per attempt, capped."""
    config = DqrConfig(poll_interval=15, backoff_max=600)
    assert [15, 30, 60, 120, 240, 480, 600, 600] == [backoff(n, config) for n in range(1, 9)]


# -- the job store's dqr tables, on both backends ---------------------------------------------


def test_ledger_records_runs_studies_and_lines_on_both_backends(store_location: Path | str) -> None:
    """A dqr run is found again (never the pipeline's run of the same file), its studies keep
    their state, a renumbered row takes its study along, --new-run retires it."""
    rows = (QueryRow(2, {"AccessionNumber": "A1"}), QueryRow(3, {"AccessionNumber": "A2"}))
    queryfile = QueryFile(Path("q.csv"), "sha", rows)
    study = DqrStudy(3, "1.2.3", "S1", "E1", expected=(), counts_verified=False)
    with JobStore(store_location) as store:
        ledger = DqrLedger(store)
        pipeline_run = store.open_run(queryfile, "cfg", default_pacs="p")
        run = ledger.open_run(queryfile, "cfg", default_pacs="p", new_run=False)
        assert run.id != pipeline_run.id
        store.add_rows(run, [(row, "p") for row in rows])
        ledger.record_resolved(
            run, [study], [(2, ItemState.NO_MATCH, "no study"), (3, ItemState.QUERIED, "")]
        )
        (record,) = ledger.studies(run)
        ledger.save(
            run, replace(record, state=DqrState.QUEUED, request_id=7, attempts=1), before=record
        )
        again = ledger.open_run(queryfile, "cfg", default_pacs="p", new_run=False)
        moved = QueryFile(
            Path("q.csv"),
            "sha",
            (QueryRow(5, {"AccessionNumber": "A1"}), QueryRow(6, {"AccessionNumber": "A2"})),
        )
        store.add_rows(again, [(row, "p") for row in moved.rows])
        ledger.follow_lines(again)
        (found,) = ledger.studies(again)
        states = {row.query.line: row.query.state for row in ledger.rows(again)}
        fresh = ledger.open_run(queryfile, "cfg", default_pacs="p", new_run=True)
        assert ledger.is_dqr_run(run.id)
        assert not ledger.is_dqr_run(pipeline_run.id)
    assert (again.id, again.resumed) == (run.id, True)
    assert (6, DqrState.QUEUED, 7, 1) == (found.line, found.state, found.request_id, found.attempts)
    assert {5: ItemState.NO_MATCH, 6: ItemState.QUERIED} == states
    assert fresh.id not in (run.id, pipeline_run.id)


def test_row_states_come_from_the_kind_of_each_row_problem() -> None:
    """A row's state is the kind of its problems, never their wording: only DUPLICATE ones
    (also a study an earlier resolve gave another line) -> DUPLICATE, only NO_MATCH ones ->
    NO_MATCH, any other or a mix -> FAILED; a row that selected a study is QUERIED."""
    dup, none, refused = RowProblemKind.DUPLICATE, RowProblemKind.NO_MATCH, RowProblemKind.REFUSED
    rows = [QueryRow(line, {"AccessionNumber": f"A{line}"}) for line in range(2, 9)]
    problems = [
        RowProblem(2, dup, "first"),
        RowProblem(3, none, "no study at PACS node 'p' matches this row exactly"),
        RowProblem(4, refused, "is already selected by line 9, in its wording only"),
        RowProblem(5, dup, "first"),
        RowProblem(5, refused, "second"),
        RowProblem(7, none, "no study"),
        RowProblem(7, none, "still none"),
    ]
    studies = [DqrStudy(6, "1.2.6", "S6", "E6"), DqrStudy(8, "1.2.8", "S8", "E8")]
    kept, outcomes = _row_outcomes(rows, studies, problems, {"1.2.8": 2})
    assert [6] == [s.line for s in kept]
    assert [
        (2, ItemState.DUPLICATE, "first"),
        (3, ItemState.NO_MATCH, "no study at PACS node 'p' matches this row exactly"),
        (4, ItemState.FAILED, "is already selected by line 9, in its wording only"),
        (5, ItemState.FAILED, "first; second"),
        (6, ItemState.QUERIED, ""),
        (7, ItemState.NO_MATCH, "no study; still none"),
        (8, ItemState.DUPLICATE, "StudyInstanceUID 1.2.8 is already selected by line 2"),
    ] == outcomes


def test_status_of_a_running_dqr_run_lists_what_is_in_flight() -> None:
    """While the run works: the studies at XNAT with their status, request, age and attempt;
    only what failed counts as attention; exit 4."""
    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    query = RowQuery(2, "p", {"AccessionNumber": "A1"}, "S1", "E1", ItemState.QUERIED, "", "")
    issued = DqrStudyRecord(
        DqrStudy(2, "1.2.3", "S1", "E1"),
        DqrState.ISSUED,
        request_id=12,
        request_status="ISSUED",
        status_since=now.timestamp() - 95,
        attempts=2,
    )
    failed_query = replace(query, line=3, keys={"AccessionNumber": "A2"})
    failed = DqrStudyRecord(
        DqrStudy(3, "1.2.4", "S2", "E2"), DqrState.FAILED, attempts=3, detail="gave up"
    )
    status = DqrRunStatus(
        record=RunRecord(1, "q.csv", "2026-12-06T09:00:00+00:00"),
        activity=Activity(RunActivity.RUNNING, "process 1 on vm"),
        rows=(DqrRow(query, (issued,)), DqrRow(failed_query, (failed,))),
        now=now,
        resume="pacsman dqr --queryfile q.csv",
    )
    lines = dqr_status_lines(status)
    assert "  studies      2: 1 issued, 1 failed" in lines
    assert "  line 2: issued for 1 min 35 s request 12, attempt 2" in lines
    assert [(3, "FAILED: gave up")] == status.attention
    assert 4 == status.exit_code


def test_status_of_an_interrupted_dqr_run_lists_what_its_resume_takes_up() -> None:
    """kill -9 left a study ISSUED and one not yet asked for: they are listed as unfinished,
    not as needing attention (the same command takes them up); only what failed is."""
    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    query = RowQuery(2, "p", {"AccessionNumber": "A1"}, "S1", "E1", ItemState.QUERIED, "", "")
    issued = DqrStudyRecord(
        DqrStudy(2, "1.2.3", "S1", "E1"), DqrState.ISSUED, request_id=12, attempts=1
    )
    pending = DqrStudyRecord(DqrStudy(3, "1.2.4", "S2", "E2"), DqrState.PENDING)
    failed = DqrStudyRecord(
        DqrStudy(4, "1.2.5", "S3", "E3"), DqrState.FAILED, attempts=3, detail="gave up"
    )
    rows = tuple(
        DqrRow(replace(query, line=study.study.line), (study,))
        for study in (issued, pending, failed)
    )
    status = DqrRunStatus(
        record=RunRecord(1, "q.csv", "2026-12-06T09:00:00+00:00"),
        activity=Activity(RunActivity.INTERRUPTED, "process 1 on vm is gone"),
        rows=rows,
        now=now,
        resume="pacsman dqr --queryfile q.csv",
    )
    lines = dqr_status_lines(status)
    assert "unfinished when it stopped: 2 study(ies)" in lines
    assert [(4, "FAILED: gave up")] == status.attention
    assert "attention so far: 1 row(s)" in lines
    assert 1 == status.exit_code


def test_a_bad_query_file_exits_2_and_sends_nothing(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    xnat: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The main command's validation, every problem at once: exit 2, XNAT never asked."""
    config = dqr_config(tmp_path, demo_orthanc, xnat)
    bad = write_queryfile(tmp_path, "AccessionNumber,StudyDate\nACC0001,2024-13-01\n")
    assert 2 == run_dqr(config, bad)
    assert "q.csv:2" in capsys.readouterr().err
    assert [] == xnat.request_log


def test_max_in_flight_and_interval_pace_the_import_calls(
    tmp_path: Path, demo_orthanc: OrthancServer, xnat: XnatEmulator
) -> None:
    """max_in_flight 1: the next study is asked for only once the last one settled;
    interval: never two import calls closer than that."""
    config = dqr_config(tmp_path, demo_orthanc, xnat, max_in_flight=1, interval=0.3)
    assert 0 == run_dqr(config, write_queryfile(tmp_path, QUERY))
    first, second = sorted(xnat.dqr_requests(), key=lambda r: r["id"])
    received = dict((step["status"], step["time"]) for step in first["timeline"])["RECEIVED"]
    assert second["queuedTime"] >= received
    assert second["queuedTime"] - first["queuedTime"] >= 300


def test_an_archive_that_does_not_answer_never_holds_the_run(
    tmp_path: Path, demo_orthanc: OrthancServer, xnat: XnatEmulator
) -> None:
    """XNAT's archive answers 503 to every read: no study is imported unchecked; each is
    looked up again, every failed look an attempt, and ends FAILED with the reason."""
    xnat.faults.route_status = {f"/data/projects/{PROJECT}/experiments": 503}
    config = dqr_config(tmp_path, demo_orthanc, xnat, max_attempts=2)
    started = time.monotonic()
    assert 1 == run_dqr(config, write_queryfile(tmp_path, QUERY))
    assert time.monotonic() - started < BOUND
    found = studies(tmp_path)
    assert {(DqrState.FAILED, 2)} == {(r.state, r.attempts) for r in found.values()}
    assert all("checking session" in r.detail for r in found.values())
    assert [] == xnat.dqr_requests()
