"""Progress counters, ``progress`` events off a terminal, and one log format for both processes.

The live display itself is tested on a real pseudo-terminal (``test_progress_tty.py``); here:
the counters and their ETA, the counts the de-identify/push process sends over its pipe, the
``progress`` events a run logs every ``log.progress_interval`` seconds when its console is not
a terminal, and the log processors that make the child's events the run's own.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pacsman.log
from pacsman.cli import main
from pacsman.log import HUMAN, bind_process, configure_logging, demoted, forward
from pacsman.pipeline.progress import PipeCounts, Stage, Tracker, apply, reporting
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.synthetic import DEMO_STUDIES
from tests.helpers import write_config, write_queryfile


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Whatever a test configures, the next one starts from the defaults."""
    yield
    configure_logging()
    pacsman.log._process_context.clear()


def test_eta_counts_this_commands_pace_from_where_earlier_runs_stopped() -> None:
    """Resumed at 40 of 100 instances; 20 more in 10 s: 2/s, 40 left, ETA 20 s; the rate
    counts only the bytes moved now, and stops when the stage is done."""
    clock = _Clock()
    tracker = Tracker([Stage.RETRIEVE], clock=clock)
    tracker.plan(Stage.RETRIEVE, total=10, done=4, instances_total=100, instances=40)
    tracker.start(Stage.RETRIEVE)
    clock.now += 10
    tracker.add(Stage.RETRIEVE, units=2, instances=20, size=20_000_000)
    (view,) = tracker.views()
    assert (view.done, view.instances, view.mb, view.mb_per_s, view.eta_s) == (6, 60, 20, 2, 20)
    assert view.text() == ("retrieve 6/10 series, 60/100 instances, 20.0 MB, 2.0 MB/s, ETA 0:00:20")
    tracker.add(Stage.RETRIEVE, units=3, failed=1, instances=40, size=20_000_000)
    clock.now += 50
    (view,) = tracker.views()
    assert view.finished
    assert (view.mb_per_s, view.state()) == (4.0, "done, 1 failed")
    assert view.fields() == {
        "done": 9,
        "total": 10,
        "failed": 1,
        "instances": 100,
        "instances_total": 100,
        "mb": 40.0,
        "mb_per_s": 4.0,
        "eta_s": 0.0,
    }


def test_a_stage_not_started_is_waiting_and_has_no_rate() -> None:
    """Planned but not started: ``waiting``, no MB/s, no ETA; the query stage counts rows."""
    tracker = Tracker([Stage.QUERY, Stage.PUSH], clock=_Clock())
    tracker.plan(Stage.QUERY, total=3, done=1, failed=1)
    tracker.plan(Stage.PUSH, total=2, instances_total=36)
    query, push = tracker.views()
    assert query.text() == "query 1/3 rows, waiting, 1 failed"
    assert query.fields() == {"done": 1, "total": 3, "failed": 1, "eta_s": None}
    assert push.text() == "push 0/2 sessions, 0/36 instances, 0.0 MB, waiting"


def test_counts_sent_over_the_pipe_add_up_to_the_same_counters() -> None:
    """What the de-identify/push process counts, coalesced into a few lines, gives the run's
    tracker the same totals as counting in place."""
    lines: list[str] = []
    sender = PipeCounts(lines.append, interval=3600)
    sender.start(Stage.DEIDENTIFY)
    for _ in range(30):
        sender.add(Stage.DEIDENTIFY, instances=1, size=1000)
    sender.add(Stage.DEIDENTIFY, units=1)
    sender.add(Stage.PUSH, failed=1)
    sender.flush()
    received = Tracker([Stage.DEIDENTIFY, Stage.PUSH], clock=_Clock())
    for line in lines:
        apply(received, json.loads(line)["progress"])
    direct = Tracker([Stage.DEIDENTIFY, Stage.PUSH], clock=_Clock())
    direct.start(Stage.DEIDENTIFY)
    direct.add(Stage.DEIDENTIFY, units=1, instances=30, size=30_000)
    direct.add(Stage.PUSH, failed=1)
    assert len(lines) <= 4
    assert direct.views() == received.views()


def test_off_a_terminal_progress_events_come_every_interval(restore_logging: None) -> None:
    """JSON console: a ``progress`` event per interval with every stage's counters and ETA."""
    stream = io.StringIO()
    configure_logging(console="json", stream=stream)
    tracker = Tracker([Stage.QUERY, Stage.RETRIEVE])
    tracker.plan(Stage.QUERY, total=2, done=2)
    tracker.plan(Stage.RETRIEVE, total=5, instances_total=36)
    tracker.add(Stage.RETRIEVE, units=1, instances=3, size=1_500_000)

    def events() -> list[dict[str, Any]]:
        lines = stream.getvalue().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == "progress"]

    with reporting(tracker, run_id=1, interval=0.05):
        wait_for(lambda: len(events()) >= 2, timeout=10, what="two progress events")
    event = events()[0]
    assert event["query"] == {"done": 2, "total": 2, "failed": 0, "eta_s": None}
    assert {
        k: event["retrieve"][k] for k in ("done", "total", "instances", "instances_total", "mb")
    } == {"done": 1, "total": 5, "instances": 3, "instances_total": 36, "mb": 1.5}
    assert event["retrieve"]["eta_s"] is not None
    assert HUMAN not in event


def test_a_human_console_off_a_terminal_gets_one_readable_progress_line(
    restore_logging: None,
) -> None:
    """``log.console: human`` under nohup: the event's own text, not nested dicts."""
    stream = io.StringIO()
    configure_logging(console="human", stream=stream)
    tracker = Tracker([Stage.QUERY])
    tracker.plan(Stage.QUERY, total=4, done=1)
    with reporting(tracker, run_id=1, interval=0.05):
        wait_for(lambda: "progress" in stream.getvalue(), timeout=10, what="a progress line")
    line = stream.getvalue().splitlines()[0]
    assert "progress: query 1/4 rows, waiting" in line
    assert "{" not in line


def test_events_of_the_other_process_become_ours(restore_logging: None, tmp_path: Path) -> None:
    """A JSON event of the de-identify/push process is logged in this process's format,
    with its bound run_id, and written once to log.file."""
    stream, log_file = io.StringIO(), tmp_path / "log.jsonl"
    configure_logging(console="human", stream=stream, file=log_file)
    bind_process(run_id=7)
    child = {"event": "series_anonymized", "level": "info", "timestamp": "x", "row": 2}
    forward(child)
    forward({**child, "level": "debug"})  # below the level: not shown
    (line,) = stream.getvalue().splitlines()
    assert "series_anonymized" in line
    assert "row=2" in line
    assert "run_id=7" in line
    assert not line.startswith("{")
    (written,) = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert (written["event"], written["run_id"], written["row"]) == ("series_anonymized", 7, 2)


def test_demoted_events_show_at_debug_only_and_own_human_text(restore_logging: None) -> None:
    """Within ``demoted``: gone at info, debug at debug; ``_human`` text replaces the fields
    on a human console, an empty one leaves the event to the command; JSON keeps fields."""
    log = pacsman.log.structlog.get_logger("test")
    stream = io.StringIO()
    configure_logging(console="human", stream=stream)
    with demoted("scp_started"):
        log.info("scp_started", port=1)
    log.info("summary", rows=3, **{HUMAN: ""})
    log.info("progress", rows=3, **{HUMAN: "query 1/3 rows"})
    assert stream.getvalue().count("\n") == 1
    assert "progress: query 1/3 rows" in stream.getvalue()
    assert "rows=3" not in stream.getvalue()
    stream = io.StringIO()
    configure_logging(console="json", stream=stream, level="debug")
    with demoted("scp_started"):
        log.info("scp_started", port=1)
    log.info("summary", rows=3, **{HUMAN: ""})
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("scp_started", "debug"),
        ("summary", "info"),
    ]
    assert lines[1]["rows"] == 3


def test_pynetdicom_errors_are_debug_and_its_warnings_stay(restore_logging: None) -> None:
    """pynetdicom's per-connection error lines (pacsman reports the failure itself) only at
    debug level; its warnings (e.g. a dropped DIMSE message) at warning."""
    stream = io.StringIO()
    configure_logging(console="json", stream=stream)
    pynetdicom_log = logging.getLogger("pynetdicom")
    pynetdicom_log.error("Association request failed: unable to connect to remote")
    pynetdicom_log.warning("dropped a message")
    (event,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (event["event"], event["level"]) == ("pynetdicom", "warning")


def test_a_run_off_a_terminal_logs_progress_and_every_event_has_its_run_id(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``--save --anonymize`` with stderr not a terminal (as under nohup), against a PACS slowed
    to 0.05 s per instance: ``progress`` events with the counters, every event (the
    de-identify/push process's too) JSON with the run_id, one line per series de-identified,
    ``nothing_to_*`` at most once, no superseded event, and a ``run_finished`` event that
    holds the printed summary's figures."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    port = free_port()
    pacs = FakePacs.from_specs(DEMO_STUDIES[:2], faults=Faults(pending_delay=0.05)).start()
    try:
        pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
        config = write_config(tmp_path, port=pacs.port, called_ae_title=pacs.ae_title)
        text = config.read_text().replace("local:\n", f"local:\n  port: {port}\n", 1)
        assert "\nlog:" not in text
        config.write_text(text + "log:\n  progress_interval: 0.3\n")
        queryfile = write_queryfile(
            tmp_path, "PatientID,Subject,Session\nDEMO001,S1,E1\nDEMO002,S2,E2\n"
        )
        argv = ["-q", str(queryfile), "--save", "--anonymize", "--config", str(config)]
        status = main(argv)
    finally:
        pacs.stop()
    out, err = capfd.readouterr()
    events = [json.loads(line) for line in err.splitlines()]
    names = Counter(e["event"] for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    (finished,) = [e for e in events if e["event"] == "run_finished"]
    assert status == 0, out + err
    assert progress
    assert {"query", "retrieve", "deidentify"} <= set(progress[-1])
    assert all(e.get("run_id") == 1 for e in events), [e for e in events if "run_id" not in e]
    assert names["series_anonymized"] == 5
    assert names["series_retrieved"] == 5
    assert not {"scp_started", "scp_stopped", "anonymize_batch_done"} & set(names)
    assert names["nothing_to_anonymize"] == 0
    assert finished["found"]["series"] == 5
    assert finished["retrieved"]["series"] == {"COMPLETE": 5}
    assert finished["deidentified"]["series"] == {"ANONYMIZED": 5}
    assert finished["attention"] == []
    assert "5 series: 5 complete; 36 instance(s) received" in out
    assert f"  next           {finished['next']}\n" in out
