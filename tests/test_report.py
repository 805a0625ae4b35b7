"""`pacsman report`: every row with its state per step and its reason, as CSV or xlsx, and
`--failed-only` as a query file that re-runs just the rows that need attention; the reasons
of de-identification and push in the info CSV's detail."""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import openpyxl
import pytest

from pacsman.cli import main
from pacsman.errors import EXIT_OK, EXIT_SOME_FAILED
from pacsman.jobstore import JobStore, Run
from pacsman.models import ItemState, QueryFile, QueryRow, RowResult, SeriesMatch, StudyMatch
from pacsman.pipeline.export import REPORT_COLUMNS
from pacsman.pipeline.report import write_info_csv
from pacsman.queryfile import load_queryfile
from pacsman.testing.fakepacs import FakePacs
from tests.helpers import write_config, write_queryfile

#: One row per outcome: done, no match, incomplete, quarantined, push failed, query failed.
QUERY = """\
PatientID,StudyDate,Subject,Session
P001,20240105,SUBJ01,SESS01
P002,-20231231,,
00123,,S3,E3
P004,,S4,E4
P005,,S5,E5
=P7,,,
"""
FAILED_LINES = [3, 4, 5, 6, 7]
REASONS = {
    3: "NO_MATCH: the PACS holds no study/series matching this row",
    4: "series 1 INCOMPLETE: 10 of 12 received",
    5: "series 1 QUARANTINED in de-identification: 3 of 4 written; 1 quarantined: burned-in text",
    6: "session S5/E5 push to xnat FAILED: gave up after 3 attempt(s): 403 Forbidden",
    7: 'FAILED: =HYPERLINK("http://example.invalid")',
}
OPTIONS = {"save": True, "anonymize": True, "push": "xnat", "queryfile": "", "cwd": ""}


def _query(store: JobStore, run: Run, queryfile: QueryFile, line: int, n: int) -> None:
    """Line ``line`` found one study with ``n`` series of 12 (4 for line 6) instances."""
    row = next(r for r in queryfile.rows if r.line == line)
    uid = f"1.2.{line}"
    count = 4 if line == 6 else 12
    series = tuple(
        SeriesMatch(uid, f"{uid}.{k}", series_number=str(k), expected_instances=count)
        for k in range(1, n + 1)
    )
    study = StudyMatch(uid, patient_id=row.keys["PatientID"], study_date="20240105", series=series)
    store.record_query(run, RowResult(row, "pacs", (study,)))


def _build(tmp_path: Path) -> Path:
    """A finished run of :data:`QUERY` with every outcome, as the pipeline records them."""
    queryfile = load_queryfile(write_queryfile(tmp_path, QUERY))
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        run = store.open_run(queryfile, "c" * 64)
        store.start_heartbeat(
            run, options_json=json.dumps({**OPTIONS, "queryfile": str(queryfile.path)}), interval=60
        )
        store.add_rows(run, [(row, "pacs") for row in queryfile.rows])
        for line, n in ((2, 2), (3, 0), (4, 1), (5, 1), (6, 1)):
            _query(store, run, queryfile, line, n)
        store.fail_row(run, 7, '=HYPERLINK("http://example.invalid")')
        _retrieve_and_deidentify(store, run, tmp_path)
        store.record_push(run, "xnat", ("SUBJ01", "SESS01"), ItemState.DONE, uri="/x/SESS01")
        store.record_push(
            run,
            "xnat",
            ("S5", "E5"),
            ItemState.FAILED,
            detail="gave up after 3 attempt(s): 403 Forbidden",
        )
    return path


def _retrieve_and_deidentify(store: JobStore, run: Run, tmp_path: Path) -> None:
    for series in store.series_for_retrieve(run):
        if series.line == 4:
            store.update_series(
                run, series, ItemState.INCOMPLETE, received=10, detail="10 of 12 received"
            )
        else:
            received = series.expected_instances
            store.update_series(run, series, ItemState.COMPLETE, received=received)
    labels = {2: ("SUBJ01", "SESS01"), 5: ("S4", "E4"), 6: ("S5", "E5")}
    for series in store.series_for_anonymize(run):
        quarantined = series.line == 5
        store.record_anonymization(
            run,
            series,
            ItemState.QUARANTINED if quarantined else ItemState.ANONYMIZED,
            written=3 if quarantined else 12,
            detail="3 of 4 written; 1 quarantined: burned-in text" if quarantined else "",
            experiment=labels[series.line],
            directory=tmp_path / "anonymized" / series.series_number,
        )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return _build(tmp_path)


def _report(store: Path, out: Path, *extra: str) -> int:
    return main(["report", "--jobstore", str(store), "--run", "1", "--out", str(out), *extra])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_csv_has_every_row_its_values_states_and_reasons(
    store: Path, tmp_path: Path
) -> None:
    """One line per row, failures included: its line, its own query values (formula signs
    quoted), its state per step and the reason; mode 0600."""
    out = tmp_path / "report.csv"
    assert _report(store, out, "--format", "csv") == EXIT_OK
    rows = _read_csv(out)
    with out.open(encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["row", "PatientID", "StudyDate", "Subject", "Session", *REPORT_COLUMNS]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    by_line = {int(r["row"]): r for r in rows}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert {n: r["reason"] for n, r in by_line.items() if r["attention"]} == {
        n: (f"'{text}" if text.startswith("=") else text) for n, text in REASONS.items()
    }
    done = by_line[2]
    assert (done["retrieve"], done["deidentify"], done["push"], done["xnat_uri"]) == (
        "COMPLETE",
        "ANONYMIZED",
        "DONE",
        "/x/SESS01",
    )
    assert (done["series"], done["expected_instances"], done["received_instances"]) == (
        "2",
        "24",
        "24",
    )
    assert (by_line[3]["query"], by_line[3]["StudyDate"]) == ("NO_MATCH", "'-20231231")
    assert (by_line[4]["retrieve"], by_line[4]["PatientID"]) == ("INCOMPLETE", "00123")
    assert (by_line[5]["deidentify"], by_line[6]["push"]) == ("QUARANTINED", "FAILED")
    assert by_line[7]["PatientID"] == "'=P7"


def test_failed_only_csv_is_a_query_file_of_exactly_the_failed_rows(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same columns as the original, the failed rows' own values (raw: it is pacsman's
    input), and `pacsman validate` accepts it."""
    out = tmp_path / "failed.csv"
    assert _report(store, out, "--format", "csv", "--failed-only") == EXIT_OK
    printed = capsys.readouterr().out
    assert f"run 1: 5 row(s) written to {out}" in printed
    assert "--save --push xnat" in printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text(encoding="utf-8").splitlines()[0] == QUERY.splitlines()[0]
    assert main(["validate", str(out)]) == EXIT_OK
    original = load_queryfile(tmp_path / "q.csv").rows
    wanted = [r for r in original if r.line in FAILED_LINES]
    again = load_queryfile(out).rows

    def values(rows: Sequence[QueryRow]) -> list[tuple[object, ...]]:
        return [(dict(r.keys), r.subject, r.session) for r in rows]

    assert values(again) == values(wanted)


def test_xlsx_report_cells_are_all_text(store: Path, tmp_path: Path) -> None:
    """Every cell, counts and IDs with leading zeros included, is a string cell formatted as
    text; nothing is a formula; formula signs are quoted as in CSV."""
    out = tmp_path / "report.xlsx"
    assert _report(store, out, "--format", "xlsx") == EXIT_OK
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    cells = [cell for line in sheet.iter_rows() for cell in line]
    assert {(c.data_type, c.number_format) for c in cells if c.value is not None} == {("s", "@")}
    values = [[c.value for c in line] for line in sheet.iter_rows()]
    header = values[0]
    lines = {int(str(v[0])): dict(zip(header, v, strict=True)) for v in values[1:]}
    assert (lines[4]["PatientID"], lines[7]["PatientID"]) == ("00123", "'=P7")
    assert (lines[3]["StudyDate"], lines[2]["expected_instances"]) == ("'-20231231", "24")
    assert lines[6]["reason"] == REASONS[6]


def test_failed_only_xlsx_holds_the_failed_rows(store: Path, tmp_path: Path) -> None:
    """--failed-only with xlsx: the report's columns, the failed rows only."""
    out = tmp_path / "failed.xlsx"
    assert _report(store, out, "--format", "xlsx", "--failed-only") == EXIT_OK
    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    assert [int(str(line[0].value)) for line in sheet.iter_rows(min_row=2)] == FAILED_LINES


def test_info_csv_detail_has_the_de_identification_and_push_reasons(
    store: Path, tmp_path: Path
) -> None:
    """The info CSV says why a series was quarantined and why its push failed."""
    with JobStore(store, read_only=True) as opened:
        records = opened.info_records(opened.run_record(1))
    info = write_info_csv(tmp_path / "q_info.csv", records)
    detail = {r["row"]: r["detail"] for r in _read_csv(info)}
    assert detail["5"] == "de-identification: 3 of 4 written; 1 quarantined: burned-in text"
    assert detail["6"] == "push to xnat: gave up after 3 attempt(s): 403 Forbidden"
    assert detail["4"] == "10 of 12 received"


def test_failed_only_re_runs_just_the_failed_rows(
    tmp_path: Path,
    fake_pacs: Callable[..., FakePacs],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against a PACS: the failed rows' query file starts a run of those rows alone, and
    sends one C-FIND per failed row."""
    pacs = fake_pacs()
    config = write_config(tmp_path, port=pacs.port, called_ae_title=pacs.ae_title, node="fake")
    queryfile = write_queryfile(tmp_path, "PatientID,Subject\nDEMO001,S1\nNOPE1,S2\nNOPE2,\n")
    assert main(["-q", str(queryfile), "--info", "--config", str(config)]) == EXIT_SOME_FAILED
    out = tmp_path / "failed.csv"
    argv = ["report", str(queryfile), "--failed-only", "--out", str(out)]
    assert main([*argv, "--config", str(config)]) == EXIT_OK
    assert out.read_text(encoding="utf-8") == "PatientID,Subject\nNOPE1,S2\nNOPE2,\n"
    pacs.clear_calls()
    assert main(["-q", str(out), "--info", "--config", str(config)]) == EXIT_SOME_FAILED
    assert pacs.calls.count("C-FIND STUDY") == 2
    capsys.readouterr()
    assert main(["status", str(out), "--config", str(config), "--json"]) == EXIT_SOME_FAILED
    found = json.loads(capsys.readouterr().out)
    assert (found["run"], found["counts"]["rows"]) == (2, {"total": 2, "NO_MATCH": 2})


def test_without_the_original_file_the_columns_are_those_the_rows_use(
    store: Path, tmp_path: Path
) -> None:
    """The query file moved away: the columns the rows use, in pacsman's column order."""
    (tmp_path / "q.csv").rename(tmp_path / "moved.csv")
    out = tmp_path / "failed.csv"
    assert _report(store, out, "--failed-only") == EXIT_OK
    assert out.read_text(encoding="utf-8").splitlines()[0] == "StudyDate,PatientID,Subject,Session"
    assert main(["validate", str(out)]) == EXIT_OK
