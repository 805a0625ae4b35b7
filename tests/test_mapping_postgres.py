"""The mapping table in a PostgreSQL job store (issue 14): one table for every head node.

The behaviours of the local SQLite table hold on PostgreSQL too (each is run on both);
two nodes racing on one patient get one subject label and one date shift; racing new
originals never share a template number; ``pacsman mapping export`` writes the same CSV
from either; a node with another key is refused; no PHI reaches a log, ours or the server's.
"""

from __future__ import annotations

import csv
import itertools
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from pacsman.anonymize.cli import mapping_main
from pacsman.anonymize.dates import date_shift_days
from pacsman.anonymize.locations import default_mapping_path, mapping_location
from pacsman.anonymize.mapping import MappingTable, export_mapping
from pacsman.errors import FatalError, InputError, ItemFailed, JobStoreError
from pacsman.testing.net import free_port
from pacsman.testing.postgres import PostgresServer
from tests.helpers import write_config

pytest.importorskip("psycopg", reason="psycopg is not installed; pip install -e .[test]")

TEMPLATE = "{project}_{n:04d}"
KEY = b"k" * 32
#: Every PatientID and AccessionNumber these tests write: none may reach a log.
PHI = ("MRN-ALPHA-731", "MRN-BETA-902", "ACC-GAMMA-55", "=HYPERLINK(1)")
_BARRIER_SECONDS = 30.0
_databases = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _no_phi_in_the_server_log(postgres: PostgresServer) -> Iterator[None]:
    """After the module: the PostgreSQL server's log holds none of the patient values."""
    yield
    log = postgres.log_path.read_text("utf-8", errors="replace")
    leaked = [value for value in PHI if value in log]
    assert not leaked, f"PHI in the PostgreSQL server log: {leaked}"


def _new_database(postgres: PostgresServer) -> str:
    name = f"mapping{next(_databases)}"
    postgres.create_database(name)
    return postgres.dsn(name)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh database's URL (a job store with no mapping yet)."""
    return _new_database(postgres)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The same tests on a local file and on a PostgreSQL job store's database."""
    if request.param == "sqlite":
        return tmp_path / "map" / "P.mapping.sqlite"
    return _new_database(request.getfixturevalue("postgres"))


def _record(table: MappingTable, **change: str) -> None:
    values = {
        "project": "P",
        "subject": "P_0001",
        "session": "P_0001_MR1",
        "patient_id": PHI[0],
        "study_instance_uid": "1.2.3.4.5.6.7.8",
        "accession_number": PHI[2],
    }
    values |= change
    table.record(
        date_shift_days=date_shift_days(KEY, values["project"], values["subject"]), **values
    )


def _csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open(encoding="utf-8", newline="")))


# -- the SQLite behaviours, on both ---------------------------------------------------------


def test_recording_twice_is_one_row(location: Path | str, tmp_path: Path) -> None:
    """Recording the same pair twice is one row; the export is 0600 with the originals."""
    table = MappingTable(location)
    _record(table)
    _record(table)
    out = tmp_path / "export.csv"
    assert table.export(out) == 1
    table.close()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    shift = str(date_shift_days(KEY, "P", "P_0001"))
    assert _csv(out)[1] == ["P", "P_0001", PHI[0], shift, "P_0001_MR1", "1.2.3.4.5.6.7.8", PHI[2]]


def test_label_clashes_are_refused(location: Path | str) -> None:
    """A subject label for a second patient, or a session for a second study, fails."""
    table = MappingTable(location)
    _record(table)
    with pytest.raises(ItemFailed, match=r"PatientID \(0010,0020\) differs"):
        _record(table, patient_id=PHI[1], session="P_0001_MR2")
    with pytest.raises(ItemFailed, match=r"StudyInstanceUID \(0020,000D\) differs"):
        _record(table, study_instance_uid="1.2.3.4.5.6.7.9")
    with pytest.raises(ItemFailed, match=r"is recorded for subject 'P_0001', not 'P_0002'"):
        _record(table, subject="P_0002", patient_id=PHI[1])
    _record(table, patient_id=f" {PHI[0].lower()} ")  # the same patient, written so
    table.close()


def test_template_labels_are_stable_across_reopening(location: Path | str) -> None:
    """Numbering follows first sight, per project and kind, and survives reopening."""
    table = MappingTable(location)
    first = [table.label_for("subject", o, project="P", template=TEMPLATE) for o in "ab"]
    other = table.label_for("subject", "a", project="Q", template=TEMPLATE)
    session = table.label_for("session", "a", project="P", template="{project}_E{n:05d}")
    table.close()
    table = MappingTable(location)
    again = table.label_for("subject", "b", project="P", template=TEMPLATE)
    new = table.label_for("subject", "c", project="P", template=TEMPLATE)
    with pytest.raises(InputError, match=r"is not a valid template"):
        table.label_for("session", "x", project="P", template="{nope}_{n}")
    table.close()
    assert (first, again, new) == (["P_0001", "P_0002"], "P_0002", "P_0003")
    assert (other, session) == ("Q_0001", "P_E00001")


def test_export_csv_is_the_same_from_both(postgres: PostgresServer, tmp_path: Path) -> None:
    """The same content gives byte-identical CSVs (byte order, formulas neutralized)."""
    outs = []
    for location in (tmp_path / "m.sqlite", _new_database(postgres)):
        table = MappingTable(location)
        _record(table, project="b", subject="b_S1", session="b_E1")
        _record(table, project="P", subject="a_lower", session="Z1", accession_number=PHI[3])
        _record(table, project="P", subject="B_upper", session="a1", patient_id=PHI[1])
        _record(table, project="P", subject="B_upper", session="B2", patient_id=PHI[1])
        table.close()
        outs.append(tmp_path / f"out{len(outs)}.csv")
        assert export_mapping(location, outs[-1]) == 4
    assert outs[0].read_bytes() == outs[1].read_bytes()
    rows = _csv(outs[1])
    assert [row[1] for row in rows[1:]] == ["B_upper", "B_upper", "a_lower", "b_S1"]
    assert "'=HYPERLINK(1)" in [row[6] for row in rows]


# -- several nodes at once ------------------------------------------------------------------


def _race(count: int, work: Callable[[int], object]) -> list[object]:
    """``work(i)`` in ``count`` threads released together; their results in order."""
    barrier = threading.Barrier(count, timeout=_BARRIER_SECONDS)

    def run(index: int) -> object:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_two_nodes_racing_on_one_patient_agree(pg_url: str) -> None:
    """Two nodes (own connections) labelling and recording the same new patient at the same
    moment get the same subject label and the same recorded date shift, every time."""
    tables = [MappingTable(pg_url) for _ in range(2)]
    try:
        for patient in range(20):
            original = f"{PHI[0]}-{patient}"

            def node(index: int, original: str = original, study: int = patient) -> object:
                table = tables[index]
                subject = table.label_for("subject", original, project="P", template=TEMPLATE)
                session = table.label_for("session", f"1.2.{study}", project="P", template=TEMPLATE)
                shift = date_shift_days(KEY, "P", subject)
                table.record(
                    project="P",
                    subject=subject,
                    session=session,
                    patient_id=original,
                    date_shift_days=shift,
                    study_instance_uid=f"1.2.{study}",
                    accession_number="",
                )
                return subject, shift

            first, second = _race(2, node)
            assert first == second
    finally:
        for table in tables:
            table.close()


def test_fifty_racing_originals_get_fifty_numbers(pg_url: str) -> None:
    """Fifty new originals labelled at once on fifty connections: 1..50, each once."""
    tables = [MappingTable(pg_url) for _ in range(50)]
    try:
        labels = _race(
            50,
            lambda i: tables[i].label_for("subject", f"orig{i}", project="P", template=TEMPLATE),
        )
    finally:
        for table in tables:
            table.close()
    assert sorted(labels) == [f"P_{n:04d}" for n in range(1, 51)]  # type: ignore[type-var]


# -- key, export command, location rule, errors ----------------------------------------------


def test_a_node_with_another_key_is_refused(pg_url: str) -> None:
    """The first key is recorded (as an HMAC); the same key passes, another is refused."""
    table = MappingTable(pg_url)
    table.check_key("P", KEY)
    table.check_key("P", KEY)
    table.check_key("Q", b"q" * 32)  # keys are per project
    with pytest.raises(InputError, match=r"copy the project's key file from the first node"):
        table.check_key("P", b"x" * 32)
    table.close()


def test_a_local_table_has_no_key_check(tmp_path: Path) -> None:
    """A SQLite table belongs to one node: a new key is its own affair (as before)."""
    table = MappingTable(tmp_path / "m.sqlite")
    table.check_key("P", KEY)
    table.check_key("P", b"x" * 32)
    table.close()


def test_mapping_export_command_reads_the_job_store(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pacsman mapping export --mapping URL`` writes the shared table; no PHI printed."""
    table = MappingTable(pg_url)
    _record(table)
    table.close()
    out = tmp_path / "shared.csv"
    assert mapping_main(["export", str(out), "--mapping", pg_url, "--project", "P"]) == 0
    assert _csv(out)[1][2] == PHI[0]
    printed = capsys.readouterr()
    assert "1 row(s) written" in printed.out
    assert not [value for value in PHI if value in printed.out + printed.err]


def test_export_from_a_job_store_without_mapping_says_so(pg_url: str, tmp_path: Path) -> None:
    """A job store where nothing was de-identified yet: a clear InputError, nothing created."""
    with pytest.raises(InputError, match=r"holds no mapping table; run an anonymization"):
        export_mapping(pg_url, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_one_rule_says_where_the_mapping_is(tmp_path: Path) -> None:
    """A postgresql:// job store holds the mapping; any other job store means the local file."""
    url = "postgresql://pacsman@db.example/pacsman"
    assert mapping_location("P", jobstore=url) == url
    assert mapping_location("P", jobstore="postgres://db/x") == "postgres://db/x"
    assert mapping_location("P", jobstore=tmp_path / "jobs.sqlite") == default_mapping_path("P")
    assert mapping_location("P") == default_mapping_path("P")


def test_an_unreachable_job_store_is_named_without_its_password() -> None:
    """Connection refused: a JobStoreError naming the URL without the password, and the fix."""
    url = f"postgresql://pacsman:s3cret-pw@127.0.0.1:{free_port()}/jobs"
    with pytest.raises(JobStoreError, match=r"check that PostgreSQL runs") as caught:
        MappingTable(url)
    assert "s3cret-pw" not in str(caught.value)
    assert "pacsman:***@127.0.0.1" in str(caught.value)


def test_no_phi_in_our_logs(location: Path | str, tmp_path: Path) -> None:
    """Labelling, recording, refusing a clash and exporting log no PatientID or accession."""
    with structlog.testing.capture_logs() as logs:
        table = MappingTable(location)
        table.label_for("subject", PHI[0], project="P", template=TEMPLATE)
        _record(table)
        with pytest.raises(ItemFailed) as clash:
            _record(table, patient_id=PHI[1], session="P_0001_MR2")
        table.export(tmp_path / "out.csv")
        table.close()
    text = repr(logs) + str(clash.value)
    assert not [value for value in PHI if value in text]


def test_a_refused_statement_never_quotes_the_row(pg_url: str) -> None:
    """PostgreSQL's DETAIL of a duplicate key quotes the row (a PatientID): the error pacsman
    raises says what and why without it, and does not chain the driver's exception.  (The
    server logs the DETAIL: a stand-in value, not one of :data:`PHI`, is used here.)"""
    table = MappingTable(pg_url)
    insert = "INSERT INTO {t}labels VALUES (?, ?, ?, ?, ?)"
    row = ("P", "subject", "STAND-IN-ID-4711", "P_0001", 1)
    table._store.rows(insert, row)
    with pytest.raises(FatalError, match=r"UniqueViolation, SQLSTATE 23505\); this is a bug") as e:
        table._store.rows(insert, row)
    table.close()
    assert "STAND-IN-ID-4711" not in str(e.value)
    assert e.value.__cause__ is None
    assert e.value.__suppress_context__


# -- growing from one node to several --------------------------------------------------------


def test_import_copies_a_local_table_once(pg_url: str, tmp_path: Path) -> None:
    """``pacsman mapping import``: the shared table then exports what the file did, and
    numbering carries on after the file's; a second import is refused, nothing copied."""
    local = tmp_path / "P.mapping.sqlite"
    table = MappingTable(local)
    _record(table)
    assert table.label_for("subject", PHI[0], project="P", template=TEMPLATE) == "P_0001"
    table.export(tmp_path / "local.csv")
    table.close()
    argv = ["import", str(local), "--mapping", pg_url]
    assert mapping_main(argv) == 0
    assert export_mapping(pg_url, tmp_path / "shared.csv") == 1
    assert (tmp_path / "shared.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    shared = MappingTable(pg_url)
    assert shared.label_for("subject", PHI[0], project="P", template=TEMPLATE) == "P_0001"
    assert shared.label_for("subject", PHI[1], project="P", template=TEMPLATE) == "P_0002"
    shared.close()
    with pytest.raises(InputError, match=r"already holds a mapping for it.*nothing was copied"):
        mapping_main(argv)


def test_a_local_table_left_behind_is_refused(pg_url: str, tmp_path: Path) -> None:
    """A node whose local table holds the project, with a shared table that does not: the
    shared numbering would restart at 1, so it is refused with the import command."""
    local = tmp_path / "P.mapping.sqlite"
    table = MappingTable(local)
    table.label_for("subject", PHI[0], project="P", template=TEMPLATE)
    table.close()
    shared = MappingTable(pg_url)
    shared.check_not_left_behind("Q", local)  # another project: nothing to lose
    shared.check_not_left_behind("P", tmp_path / "absent.sqlite")
    with pytest.raises(InputError, match=r"copy it first with 'pacsman mapping import"):
        shared.check_not_left_behind("P", local)
    shared.label_for("subject", PHI[1], project="P", template=TEMPLATE)
    shared.check_not_left_behind("P", local)  # the shared table holds the project now
    shared.close()


def test_export_command_follows_the_configs_job_store(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``jobstore: postgresql://...`` in the config, export reads the shared table."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    table = MappingTable(pg_url)
    _record(table)
    table.close()
    config = write_config(tmp_path, port=104, called_ae_title="PACS")
    lines = [x for x in config.read_text("utf-8").splitlines() if not x.startswith("jobstore:")]
    config.write_text("\n".join([*lines, f"jobstore: {pg_url}", "xnat:", "  project: P", ""]))
    out = tmp_path / "from-config.csv"
    assert mapping_main(["export", str(out), "--config", str(config)]) == 0
    assert _csv(out)[1][2] == PHI[0]
    assert not (tmp_path / "xdg").exists()  # no local table was made
