"""The service's commands (issue 13, item 3): ``pacsman submit`` validates locally and
queues in the job store; ``pacsman jobs`` lists the queue; ``cancel``, ``pause``,
``resume`` and ``retry-failed`` against each job state; ``status --job`` and
``report --job``; ``serve`` hands the config to the scheduler."""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import openpyxl
import pytest

from pacsman.cli import COMMANDS, main
from pacsman.config import Config
from pacsman.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNNING
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobAction, JobOptions, JobState
from pacsman.models import RowResult, SeriesMatch, StudyMatch
from pacsman.queryfile import load_queryfile
from tests.helpers import write_config, write_queryfile

GOOD = "PatientID,StudyDate,Subject,Session\nP001,20240105,S1,E1\nP002,20240106,S2,E2\n"
BAD = "PatientID,StudyDate,Modalty\nP001,2023-13-01,CT\nP002,yesterday,MR\n"
SERVICE_COMMANDS = ("serve", "submit", "jobs", "cancel", "pause", "resume", "retry-failed")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    extra = "serve:\n  node_name: head\n"
    return write_config(tmp_path, port=11112, called_ae_title="PACS", node="main", extra=extra)


def _jobstore(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _submit(
    capsys: pytest.CaptureFixture[str], config: Path, queryfile: Path, *extra: str
) -> tuple[int, str, str]:
    return _run(capsys, "submit", str(queryfile), *extra, "--config", str(config))


# -- submit --------------------------------------------------------------------------------


def test_submit_queues_the_file_and_prints_its_id(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0, ``job 1 queued (ct-cohort): pacsman status --job 1``; the job holds the
    file's bytes and the options; no service runs, so a warning says the job waits."""
    queryfile = write_queryfile(tmp_path, GOOD, name="ct-cohort.csv")
    code, out, err = _submit(capsys, config, queryfile, "--save", "--priority", "5")
    assert EXIT_OK == code
    assert f"job 1 queued (ct-cohort): pacsman status --job 1 --config {config}\n" == out
    assert "warning: no 'pacsman serve' runs on the job store" in err
    assert "job 1 waits until one starts" in err
    with JobStore(_jobstore(tmp_path)) as store:
        job = store.job(1)
        assert GOOD.encode() == store.job_queryfile(1)
    assert (JobState.QUEUED, 5, "cli", JobOptions(save=True)) == (
        job.state,
        job.priority,
        job.source,
        job.options,
    )


def test_submit_with_a_live_service_gives_no_warning(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that beat its heartbeat just now serves the store: no warning; a stopped one
    does not count."""
    queryfile = write_queryfile(tmp_path, GOOD)
    with JobStore(_jobstore(tmp_path)) as store:
        store.register_node("head", http_url="http://127.0.0.1:8104")
    code, _, err = _submit(capsys, config, queryfile, "--name", "first")
    assert (EXIT_OK, "") == (code, err.partition("warning")[1])
    with JobStore(_jobstore(tmp_path)) as store:
        store.stop_node("head", "stopped")
    _, _, err = _submit(capsys, config, queryfile)
    assert "no 'pacsman serve' runs" in err


def test_push_without_a_target_is_xnat_and_implies_save_and_anonymize(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--push`` as in the one-shot command; ``--push dicom`` names another target;
    ``--pacs``, ``--name`` are kept."""
    queryfile = write_queryfile(tmp_path, GOOD)
    assert EXIT_OK == _submit(capsys, config, queryfile, "--push")[0]
    assert EXIT_OK == _submit(capsys, config, queryfile, "--push", "dicom", "--pacs", "main")[0]
    assert EXIT_OK == _submit(capsys, config, queryfile, "--anonymize", "--name", "my job")[0]
    with JobStore(_jobstore(tmp_path)) as store:
        first, second, third = store.job(1), store.job(2), store.job(3)
    assert JobOptions(save=True, anonymize=True, push="xnat") == first.options
    assert JobOptions(save=True, anonymize=True, push="dicom", pacs="main") == second.options
    assert (JobOptions(anonymize=True), "my job") == (third.options, third.name)


def test_a_bad_file_queues_nothing_and_names_every_problem(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2; every located message, in the file's name as given (not a private copy's);
    no job."""
    queryfile = write_queryfile(tmp_path, BAD, name="bad.csv")
    code, out, err = _submit(capsys, config, queryfile, "--save")
    assert (EXIT_BAD_INPUT, "") == (code, out)
    located = [line for line in err.splitlines() if line.startswith(f"{queryfile}:")]
    assert 3 == len(located), err
    assert f"{queryfile}:2:2: column 'StudyDate': '2023-13-01' is not a date" in err
    with JobStore(_jobstore(tmp_path)) as store:
        assert [] == store.jobs()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--priority", "1001"], "--priority 1001: use -1000 to 1000"),
        (["--pacs", "nowhere"], "nowhere"),
    ],
)
def test_wrong_options_queue_nothing(
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    """A priority out of range or a PACS node the config lacks: exit 2, nothing queued."""
    queryfile = write_queryfile(tmp_path, GOOD)
    code, _, err = _submit(capsys, config, queryfile, *extra)
    assert EXIT_BAD_INPUT == code
    assert message in err
    assert not _jobstore(tmp_path).exists() or not JobStore(_jobstore(tmp_path)).jobs()


def test_a_missing_file_is_named(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2: ``nosuch.csv: cannot read the query file (No such file or directory)``."""
    code, _, err = _submit(capsys, config, tmp_path / "nosuch.csv")
    assert EXIT_BAD_INPUT == code
    assert f"{tmp_path / 'nosuch.csv'}: cannot read the query file (No such file" in err


def test_an_xlsx_file_with_its_sheet_is_queued(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workbook, read from ``--sheet``; the job keeps the sheet for the service."""
    workbook = openpyxl.Workbook()
    workbook.active.title = "notes"
    sheet = workbook.create_sheet("cohort")
    for line in GOOD.splitlines():
        sheet.append(line.split(","))
    path = tmp_path / "cohort.xlsx"
    workbook.save(path)
    code, out, _ = _submit(capsys, config, path, "--save", "--sheet", "cohort")
    assert EXIT_OK == code, out
    with JobStore(_jobstore(tmp_path)) as store:
        assert "cohort" == store.job(1).options.sheet


# -- jobs ------------------------------------------------------------------------------------


def _attach_run(store: JobStore, job_id: int, queryfile: Path, queried: int) -> int:
    """Job ``job_id`` claimed by node 'head' with a run whose first ``queried`` rows found
    one study of one series (as the service's runner records them)."""
    parsed = load_queryfile(queryfile)
    store.claim_job("head")
    run = store.open_run(parsed, "c" * 64, default_pacs="main", job_id=job_id)
    store.attach_run(job_id, run.id)
    store.add_rows(run, [(row, "main") for row in parsed.rows])
    for row in parsed.rows[:queried]:
        uid = f"1.2.{row.line}"
        study = StudyMatch(uid, series=(SeriesMatch(uid, f"{uid}.1", expected_instances=3),))
        store.record_query(run, RowResult(row, "main", (study,)))
    return run.id


def test_jobs_lists_the_queue_with_state_options_node_and_progress(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per job, newest first; a running job shows its node and how far it is."""
    queryfile = write_queryfile(tmp_path, GOOD, name="ct-cohort.csv")
    _submit(capsys, config, queryfile, "--save", "--priority", "3")
    _submit(capsys, config, queryfile, "--name", "second")
    with JobStore(_jobstore(tmp_path)) as store:
        _attach_run(store, 1, queryfile, queried=1)
        store.request_job(1, JobAction.PAUSE)
    code, out, _ = _run(capsys, "jobs", "--config", str(config))
    assert EXIT_OK == code
    lines = out.splitlines()
    assert "no 'pacsman serve' runs on it" in lines[0]
    assert re.match(r"id +name +state +prio +options +submitted +node +progress$", lines[1])
    assert re.match(
        r"2 +second +QUEUED +0 +query only +\d{4}-\d\d-\d\d [\d:]+ UTC +- +-$", lines[2]
    )
    assert re.match(
        r"1 +ct-cohort +RUNNING \(pause requested\) +3 +--save .* UTC +head +"
        r"1/2 rows queried, 0/1 series retrieved$",
        lines[3],
    )
    code, out, _ = _run(capsys, "jobs", "--config", str(config), "--json")
    listed = json.loads(out)
    assert [2, 1] == [job["id"] for job in listed["jobs"]]
    progress = listed["jobs"][1]["progress"]
    assert {"rows": 2, "rows_queried": 1, "series": 1, "series_retrieved": 0} == progress
    assert ("RUNNING", "pause", "head") == tuple(
        listed["jobs"][1][k] for k in ("state", "requested", "owner_node")
    )


def test_jobs_on_an_empty_queue_says_how_to_fill_it(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job store without jobs (a run of the one-shot command made it)."""
    JobStore(_jobstore(tmp_path)).close()
    code, out, _ = _run(capsys, "jobs", "--jobstore", str(_jobstore(tmp_path)))
    assert EXIT_OK == code
    assert "no jobs yet; queue one with: pacsman submit QUERYFILE" in out


# -- cancel, pause, resume, retry-failed -------------------------------------------------------


@pytest.fixture
def queued(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A job store holding job 1, QUEUED; returns the job store."""
    queryfile = write_queryfile(tmp_path, GOOD, name="ct-cohort.csv")
    assert EXIT_OK == _submit(capsys, config, queryfile, "--save")[0]
    return _jobstore(tmp_path)


def _act(capsys: pytest.CaptureFixture[str], jobstore: Path, *argv: str) -> tuple[int, str, str]:
    return _run(capsys, *argv, "--jobstore", str(jobstore))


def test_waiting_jobs_change_at_once(queued: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QUEUED → pause → PAUSED → resume → QUEUED → cancel → CANCELLED, each said in one line."""
    assert (EXIT_OK, "job 1 PAUSED: 'pacsman resume 1' queues it again\n") == _act(
        capsys, queued, "pause", "1"
    )[:2]
    assert (EXIT_OK, "job 1 QUEUED again (resumed)\n") == _act(capsys, queued, "resume", "1")[:2]
    assert (EXIT_OK, "job 1 CANCELLED\n") == _act(capsys, queued, "cancel", "1")[:2]
    with JobStore(queued) as store:
        assert JobState.CANCELLED == store.job(1).state


def test_a_running_job_gets_a_request_for_its_node(
    queued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RUNNING: cancel is requested (the service stops it at the next series); resume does
    not apply (exit 2 with the store's message)."""
    with JobStore(queued) as store:
        store.claim_job("head")
    code, out, _ = _act(capsys, queued, "cancel", "1")
    assert EXIT_OK == code
    expected = "job 1 is RUNNING: cancel requested; the service stops it at the next series\n"
    assert expected == out
    with JobStore(queued) as store:
        assert {1: JobAction.CANCEL} == store.requests_for("head")
    code, out, err = _act(capsys, queued, "resume", "1")
    assert (EXIT_BAD_INPUT, "") == (code, out)
    assert "pacsman: job 1 is RUNNING: 'resume' does not apply; cancel or pause it\n" == err


def test_retry_failed_queues_a_failed_job_and_refuses_a_cancelled_one(
    queued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """FAILED → retry-failed → QUEUED; CANCELLED → retry-failed: exit 2, the store's fix."""
    with JobStore(queued) as store:
        store.claim_job("head")
        store.settle_job(1, JobState.FAILED, "2 series failed")
    code, out, _ = _act(capsys, queued, "retry-failed", "1")
    assert EXIT_OK == code
    assert out.startswith("job 1 QUEUED again (retry-failed")
    _act(capsys, queued, "cancel", "1")
    code, _, err = _act(capsys, queued, "retry-failed", "1")
    assert EXIT_BAD_INPUT == code
    assert "submit the query file again for a new job" in err


def test_an_unknown_job_or_store_is_named(
    queued: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No such job: exit 2 naming 'pacsman jobs'; no such job store: exit 2, none created."""
    code, _, err = _act(capsys, queued, "pause", "7")
    assert EXIT_BAD_INPUT == code
    assert "job 7: no such job in this job store; 'pacsman jobs' lists them" in err
    missing = tmp_path / "elsewhere.sqlite"
    code, _, err = _act(capsys, missing, "cancel", "1")
    assert EXIT_BAD_INPUT == code
    assert f"the job store {missing} does not exist" in err
    assert not missing.exists()


# -- status --job, report --job ---------------------------------------------------------------


def test_status_and_report_of_a_job_not_started(
    queued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --job: ``job 1 is QUEUED, not started yet``, exit 4; report --job: exit 2."""
    code, out, _ = _act(capsys, queued, "status", "--job", "1")
    assert (EXIT_RUNNING, "job 1 is QUEUED, not started yet\n") == (code, out)
    code, out, _ = _act(capsys, queued, "status", "--job", "1", "--json")
    assert {"job": 1, "state": "QUEUED", "run": None} == json.loads(out)
    code, _, err = _act(capsys, queued, "report", "--job", "1")
    assert EXIT_BAD_INPUT == code
    assert "job 1 is QUEUED, not started yet" in err
    code, _, err = _act(capsys, queued, "status", "--job", "1", "--run", "1")
    assert (EXIT_BAD_INPUT, "pacsman: give one of a query file, --run ID or --job N\n") == (
        code,
        err,
    )


def test_status_and_report_of_a_started_job_show_its_run(
    queued: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--job 1`` shows and reports the job's run, as ``--run N`` does."""
    with JobStore(queued) as store:
        run_id = _attach_run(store, 1, tmp_path / "ct-cohort.csv", queried=2)
    by_job = _act(capsys, queued, "status", "--job", "1", "--json")
    by_run = _act(capsys, queued, "status", "--run", str(run_id), "--json")
    job, run = json.loads(by_job[1]), json.loads(by_run[1])
    assert "nothing: job 1 is running on head" == job.pop("resume")  # the service resumes it
    run.pop("resume")
    assert (by_run[0], run) == (by_job[0], job)
    assert run_id == json.loads(by_job[1])["run"]
    out = tmp_path / "report.csv"
    code, printed, _ = _act(capsys, queued, "report", "--job", "1", "--out", str(out))
    assert EXIT_OK == code
    assert f"run {run_id}: 2 row(s) written to {out}" in printed


# -- serve, and every command's help ------------------------------------------------------------


def test_serve_hands_the_loaded_config_to_the_scheduler(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pacsman serve --config X`` returns what ``run_service(config)`` returns."""
    seen: list[Config] = []

    def run_service(loaded: Config) -> int:
        seen.append(loaded)
        return 0

    scheduler = types.ModuleType("pacsman.service.scheduler")
    scheduler.run_service = run_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pacsman.service.scheduler", scheduler)
    assert EXIT_OK == main(["serve", "--config", str(config)])
    assert [config] == [c.source for c in seen]
    assert "head" == seen[0].serve.node_name


@pytest.mark.parametrize("command", SERVICE_COMMANDS)
def test_every_service_command_explains_itself(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listed in ``pacsman --help``; its own help has a description and the common
    options."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(
        rf"^  {command} +{re.escape(COMMANDS[command])}$", capsys.readouterr().out, re.M
    )
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert 0 == stopped.value.code
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: pacsman {command}")
    assert not rest.startswith(("positional arguments", "options"))
    for option in ("--config", "--log-level", "--version"):
        assert option in text
