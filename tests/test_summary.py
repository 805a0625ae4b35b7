"""The summary a run ends with: every stage asked for, where the files are, each row that needs
attention with its reason, the next step; printed, and logged as the ``run_finished`` event.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.pipeline.summary import Attention, RunSummary, StageFigures
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port
from pacsman.testing.synthetic import DEMO_STUDIES
from tests.helpers import write_config, write_queryfile

#: Line 2 selects 3 series, line 3 nothing, line 4 two series.
QUERY = "PatientID,Subject,Session\nDEMO001,S1,E1\nNOSUCH,S9,E9\nDEMO002,S2,E2\n"


def _run(tmp_path: Path, pacs: FakePacs, port: int) -> int:
    config = write_config(
        tmp_path,
        port=pacs.port,
        called_ae_title=pacs.ae_title,
        local_port=port,
        extra_node="retrieve_passes: 1",
    )
    queryfile = write_queryfile(tmp_path, QUERY)
    return main(["-q", str(queryfile), "--save", "--config", str(config)])


def _finished(err: str) -> dict[str, object]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (event,) = [e for e in events if e["event"] == "run_finished"]
    return event


def test_rows_that_need_attention_are_listed_with_their_reason_and_what_to_do(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A row that matches nothing and a series the PACS delivers short: exit 1; the summary
    says what was found and retrieved, lists both rows with their reasons, and says what to
    do; ``run_finished`` holds the same.  Once the PACS delivers, the rerun resumes and only
    the row with no match is left."""
    port = free_port()
    pacs = FakePacs.from_specs(DEMO_STUDIES[:2], faults=Faults(short_delivery=2, fault_moves=1))
    pacs.start()
    try:
        pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
        status = _run(tmp_path, pacs, port)
        out, err = capfd.readouterr()
        pacs.faults = Faults()
        again = _run(tmp_path, pacs, port)
        out_again, err_again = capfd.readouterr()
    finally:
        pacs.stop()
    event = _finished(err)
    lines = out.splitlines()
    attention = {a["line"]: a["reason"] for a in event["attention"]}  # type: ignore[attr-defined]
    assert status == 1
    assert lines[0].startswith("run 1 (new) finished in 0:00:")
    assert lines[0].endswith("3 row(s), 2 need attention")
    assert (
        "  found          3 row(s): 1 no_match, 2 queried; 2 study(ies), 5 series, "
        "36 instance(s) expected"
    ) in lines
    assert any(x.startswith("  retrieved      5 series: 4 complete, 1 incomplete;") for x in lines)
    assert f"  files          retrieved: {tmp_path / 'data'}" in lines
    assert f"                 info CSV: {tmp_path / 'data' / 'q_info.csv'}" in lines
    assert "  attention      2 row(s):" in lines
    assert sorted(attention) == [2, 3]
    assert attention[2].startswith("series 1 INCOMPLETE: ")
    assert attention[3] == "NO_MATCH: the PACS holds no study/series matching this row"
    assert f"    line 2: {attention[2]}" in lines
    assert f"    line 3: {attention[3]}" in lines
    assert event["next"].startswith("correct the query values of the NO_MATCH rows; then ")  # type: ignore[union-attr]
    assert "run the same command again" in str(event["next"])
    next_lines = lines[lines.index(f"    line 3: {attention[3]}") + 1 :]
    assert [x.strip() for x in next_lines] == [
        "next           correct the query values of the NO_MATCH rows",
        "then fix what the FAILED/INCOMPLETE reasons name (a peer that was down needs no fix)",
        "then run the same command again: it redoes only what is not done ('pacsman report "
        "--run 1 --format csv --failed-only' writes these rows as a query file)",
    ]
    assert event["retrieved"] == {
        "series": {"COMPLETE": 4, "INCOMPLETE": 1},
        "instances": 34,
        "adopted": 0,
        "mb_now": event["retrieved"]["mb_now"],  # type: ignore[index]
    }
    assert again == 1
    assert "run 1 (resumed)" in out_again
    assert [a["line"] for a in _finished(err_again)["attention"]] == [3]  # type: ignore[attr-defined]
    assert "  retrieved      5 series: 5 complete; 36 instance(s) received" in out_again


def _summary(**changes: object) -> RunSummary:
    figures = StageFigures(
        retrieve=True,
        deidentify=True,
        push="xnat",
        moved_mb={"retrieve": 12.5, "deidentify": 12.0, "push": 8.25},
        elapsed_s=3725,
    )
    base: dict[str, object] = {
        "run_id": 4,
        "resumed": True,
        "rows": 30,
        "states": {"QUERIED": 30},
        "studies": 30,
        "series": 90,
        "expected_instances": 900,
        "info_csv": Path("/data/q_info.csv"),
        "worked_now": 5,
        "series_states": {"COMPLETE": 90},
        "received_instances": 900,
        "failed_lines": tuple(range(2, 27)),
        "figures": figures,
        "deidentify_states": {"ANONYMIZED": 65, "QUARANTINED": 25},
        "anonymized_instances": 640,
        "push_states": {"DONE": 5},
        "files_on_target": 50,
        "places": {"retrieved": "/data", "de-identified": "/data/anonymized"},
        "attention": tuple(Attention(n, "series 1 QUARANTINED: burned-in") for n in range(2, 27)),
        "next_step": "review the quarantined files",
    }
    base.update(changes)
    return RunSummary(**base)  # type: ignore[arg-type]


def test_the_summary_names_every_stage_and_lists_at_most_twenty_rows() -> None:
    """De-identified with the quarantined count, pushed with DONE and files on the target,
    the MB this command moved; 25 rows that need attention: 20 shown, the rest counted."""
    lines = _summary().lines()
    assert lines[0] == "run 4 (resumed) finished in 1:02:05: 30 row(s), 25 need attention"
    assert (
        "  de-identified  90 series: 65 anonymized, 25 quarantined; 640 instance(s) written "
        "(12.0 MB now)"
    ) in lines
    assert (
        "  pushed         5 of 30 session(s) DONE on xnat; 50 file(s) verified there (8.2 MB now)"
    ) in lines
    assert "                 de-identified: /data/anonymized" in lines
    assert sum(line.startswith("    line ") for line in lines) == 20
    assert "    ... and 5 more (the info CSV's 'detail' column has them all)" in lines
    event = _summary().event()
    assert event["attention_rows"] == 25
    assert event["pushed"] == {
        "target": "xnat",
        "sessions": 30,
        "states": {"DONE": 5},
        "files_on_target": 50,
        "mb_now": 8.2,
    }
    assert event["deidentified"]["series"] == {"ANONYMIZED": 65, "QUARANTINED": 25}


def test_a_run_with_nothing_left_says_so() -> None:
    """Nothing worked on now and nothing wrong: 'nothing to do' (what an unchanged rerun
    prints), and no attention lines."""
    summary = _summary(failed_lines=(), attention=(), worked_now=0, next_step="nothing to do")
    lines = summary.lines()
    assert lines[0].endswith("30 row(s), all done")
    assert not any("attention" in line for line in lines)
    assert summary.ok
    assert summary.nothing_done
