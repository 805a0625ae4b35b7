"""``pacsman dqr``'s XNAT side: the DQR and anonymization REST calls, the pre-flight, resolving
query-file rows into studies (DQR's query, or pacsman's C-FIND), and arrival checks.

Real sockets: the XNAT emulator's DQR in front of the demo Orthanc (read-only data; the
emulator's receiver is registered there as ``XNAT``), and pacsman's own C-FIND at the same
Orthanc.  Every wait polls with a deadline.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from pacsman.anonymize import MappingTable
from pacsman.config import Config, parse_config
from pacsman.config._yaml import load_yaml
from pacsman.dqr._arrival import check_arrival, labels_taken
from pacsman.dqr._model import (
    ArrivalVerdict,
    DqrStudy,
    ExpectedSeries,
    PacsEntry,
    RequestStatus,
    RowProblemKind,
)
from pacsman.dqr._preflight import Preflight, choose_pacs, preflight
from pacsman.dqr._resolve import dqr_criteria, resolve_studies
from pacsman.dqr._xapi import DqrApi, DqrRefused, open_dqr_api
from pacsman.errors import FatalError, InputError, ItemFailed, TransientError
from pacsman.models import QueryRow
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, StudySpec
from pacsman.testing.xnat_emulator import DqrPacs, XnatEmulator

BRAIN, KNEE, SPINE, CHEST = DEMO_STUDIES  # 23, 13, 27 and 13 instances
SCRIPT = 'version "6.1"\n(0010,0030) := ""\n'
WAIT = 20.0  # seconds: the bound on any wait for a DQR request
#: What identifies the demo patients: none of it may reach a log event or a message.
PHI = ("DEMO00", "Doe", "Jane", "Smith", "Müller", "19800214", "19921103")


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")


@pytest.fixture
def emulator(tmp_path: Path, demo_orthanc: OrthancServer) -> Iterator[XnatEmulator]:
    """XNAT with DQR in front of the demo Orthanc; P1 has DQR and an anonymization script,
    P2 neither."""
    pacs = DqrPacs(demo_orthanc.ae_title, "127.0.0.1", demo_orthanc.dicom_port, "Demo PACS")
    with XnatEmulator(
        tmp_path / "xnat",
        projects=["P1", "P2"],
        dqr_pacs=[pacs],
        dqr_session_idle=0.2,
        dqr_step=0.02,
        dqr_projects=["P1"],
        anonymization_scripts={"P1": SCRIPT},
    ) as running:
        demo_orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", running.dqr_receiver_port)
        yield running


def _config(
    emulator: XnatEmulator,
    orthanc: OrthancServer,
    *,
    project: str = "P1",
    dqr: dict[str, Any] | None = None,
    **xnat: Any,
) -> Config:
    data = {
        "pacs": {
            "demo": {
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "called_ae_title": orthanc.ae_title,
            }
        },
        "xnat": {"url": emulator.url, "project": project, **xnat},
        "dqr": {"receiver_port": emulator.dqr_receiver_port, **(dqr or {})},
    }
    return parse_config(load_yaml(yaml.safe_dump(data)), source="t.yaml")


@pytest.fixture
def config(emulator: XnatEmulator, demo_orthanc: OrthancServer) -> Config:
    """Project P1, DQR's own query."""
    return _config(emulator, demo_orthanc)


@pytest.fixture
def api(config: Config) -> Iterator[DqrApi]:
    """A logged-in DQR connection for P1."""
    with open_dqr_api(config) as opened:
        yield opened


@pytest.fixture
def mapping(tmp_path: Path) -> Iterator[MappingTable]:
    """The project's mapping table (the pipeline's label source)."""
    table = MappingTable(tmp_path / "mapping.sqlite")
    yield table
    table.close()


def _row(
    line: int, subject: str | None = None, session: str | None = None, **keys: str
) -> QueryRow:
    return QueryRow(line=line, keys=keys, subject=subject, session=session)


def _no_phi(events: list[dict[str, Any]], *texts: str) -> None:
    shown = repr(events) + "".join(texts)
    assert [] == [word for word in PHI if word in shown]


# -- pure: criteria and the choice of PACS ------------------------------------------------------


def test_row_keys_become_dqr_criteria() -> None:
    """Each column maps to its PacsSearchCriteria field; StudyDate becomes a start/end range."""
    row = _row(2, AccessionNumber="ACC1", PatientID="X1", StudyDate="20240101-20240131")
    assert {
        "accessionNumber": "ACC1",
        "patientId": "X1",
        "studyDateStart": "20240101",
        "studyDateEnd": "20240131",
    } == dqr_criteria(row)
    one_day = dqr_criteria(_row(2, StudyDate="20240105", Modality="MR"))
    assert {"studyDateStart": "20240105", "studyDateEnd": "20240105", "modality": "MR"} == one_day
    assert {"studyDateStart": "20240105", "studyDateEnd": ""} == dqr_criteria(
        _row(2, StudyDate="20240105-")
    )


def test_criteria_refuse_what_dqr_cannot_check_or_send() -> None:
    """StudyTime is in no DQR answer; a row of only checked-not-sent keys would ask for all."""
    with pytest.raises(ItemFailed, match=r"column StudyTime cannot be checked.*dqr.query: pacs"):
        dqr_criteria(_row(2, AccessionNumber="A", StudyTime="0800-1000"))
    with pytest.raises(ItemFailed, match="gives XNAT's DQR nothing to search by"):
        dqr_criteria(_row(2, StudyDescription="MR*"))


ENTRIES = (
    PacsEntry(1, "PACS_A", "Hospital", queryable=True),
    PacsEntry(2, "PACS_B", "Research", default_query_retrieve=True),
    PacsEntry(3, "PACS_B", "Research copy"),
)


@pytest.mark.parametrize(
    ("pacs_id", "pacs_ae", "chosen"),
    [(1, None, 1), (None, "PACS_A", 1), (2, "PACS_B", 2), (None, None, 2), (3, None, 3)],
)
def test_choose_pacs(pacs_id: int | None, pacs_ae: str | None, chosen: int) -> None:
    """By id, by AE title, both, or XNAT's default query-retrieve PACS."""
    assert chosen == choose_pacs(ENTRIES, pacs_id=pacs_id, pacs_ae=pacs_ae).id


@pytest.mark.parametrize(
    ("pacs_id", "pacs_ae", "message"),
    [
        (9, None, "XNAT knows no PACS with id 9; XNAT's PACS are: id 1 AE PACS_A 'Hospital'; "),
        (1, "PACS_B", "XNAT knows no PACS with id 1 and AE title 'PACS_B'"),
        (None, "PACS_B", "2 PACS in XNAT have AE title 'PACS_B'; choose one by id with --pacs-id"),
    ],
)
def test_choose_pacs_refuses_with_the_list(
    pacs_id: int | None, pacs_ae: str | None, message: str
) -> None:
    """No PACS, or several, fit: the message lists id, AE title and label of each."""
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        choose_pacs(ENTRIES, pacs_id=pacs_id, pacs_ae=pacs_ae)
    assert "id 2 AE PACS_B 'Research' (default)" in str(caught.value)


def test_choose_pacs_without_default_or_entries() -> None:
    """Several PACS and no default: choose one; none at all: an administrator adds one."""
    plain = [dataclasses.replace(e, default_query_retrieve=False) for e in ENTRIES]
    with pytest.raises(InputError, match="XNAT knows 3 PACS and none is its default"):
        choose_pacs(plain, pacs_id=None, pacs_ae=None)
    with pytest.raises(FatalError, match=r"knows no PACS .GET /xapi/pacs is empty.; an XNAT"):
        choose_pacs([], pacs_id=None, pacs_ae=None)
    closed = dataclasses.replace(ENTRIES[0], queryable=False)
    with pytest.raises(InputError, match=r"PACS 1 .PACS_A. is not queryable in XNAT"):
        choose_pacs([closed], pacs_id=None, pacs_ae=None)


# -- the PACS, the project, the pre-flight -------------------------------------------------------


def test_pacs_list_and_ping(
    api: DqrApi, emulator: XnatEmulator, demo_orthanc: OrthancServer
) -> None:
    """GET /xapi/pacs becomes PacsEntry; the ping is XNAT's real C-ECHO; an unknown id is
    named with the fix."""
    entry = PacsEntry(1, "DEMOPACS", "Demo PACS", "127.0.0.1", demo_orthanc.dicom_port, True, True)
    assert [entry] == api.pacs_list()
    successful, detail = api.pacs_status(1)
    assert successful
    assert detail.startswith("XNAT's C-ECHO of the PACS succeeded")
    with pytest.raises(FatalError, match=r"XNAT knows no such PACS .404.*--pacs-id"):
        api.pacs_status(2)


def test_anonymization_script_present_and_enabled(api: DqrApi, emulator: XnatEmulator) -> None:
    """Enabled means a non-empty script AND the enabled flag."""
    assert api.anonymization_enabled()
    emulator.set_anonymization_script("P1", SCRIPT, enabled=False)
    assert not api.anonymization_enabled()
    emulator.set_anonymization_script("P1", "   \n", enabled=True)
    assert not api.anonymization_enabled()


def test_preflight_passes(api: DqrApi, config: Config) -> None:
    """Project, PACS (XNAT's only one), ping and anonymization script all fine."""
    with capture_logs() as events:
        found = preflight(api, config, pacs_id=None, pacs_ae=None)
    assert Preflight(api.pacs_list()[0], found.ping_detail, identified_allowed=False) == found
    assert ["dqr_preflight_ok"] == [e["event"] for e in events]


def test_preflight_refuses_identified_data(
    emulator: XnatEmulator, demo_orthanc: OrthancServer
) -> None:
    """Without an enabled script the run does not start, unless xnat.allow_identified."""
    config = _config(emulator, demo_orthanc, project="P2")
    with open_dqr_api(config) as api, pytest.raises(InputError) as caught:
        preflight(api, config, pacs_id=None, pacs_ae=None)
    assert (
        "project 'P2' has no enabled anonymization script (XNAT reports it disabled: GET "
        "/xapi/anonymize/projects/P2/enabled answered false), so XNAT's DQR would archive the "
        "PACS's identified data; ask an XNAT administrator to set and enable the project's "
        "anonymization script (the project's Manage tab, Anonymization), or set "
        "xnat.allow_identified: true if the project is approved for identified data"
    ) == str(caught.value)
    allowed = _config(emulator, demo_orthanc, project="P2", allow_identified=True)
    with open_dqr_api(allowed) as api, capture_logs() as events:
        assert preflight(api, allowed, pacs_id=1, pacs_ae=None).identified_allowed
    assert ["dqr_identified_data", "dqr_preflight_ok"] == [e["event"] for e in events]
    assert "warning" == events[0]["log_level"]


def test_preflight_names_a_missing_project_and_pacs(
    emulator: XnatEmulator, demo_orthanc: OrthancServer, config: Config
) -> None:
    """A project XNAT does not have, and a PACS it does not know, stop the run with the fix."""
    missing = _config(emulator, demo_orthanc, project="P9")
    with open_dqr_api(missing) as api, pytest.raises(FatalError) as caught:
        preflight(api, missing, pacs_id=None, pacs_ae=None)
    assert re.match(
        r"project 'P9' does not exist on http://127\.0\.0\.1:\d+, or the XNAT", str(caught.value)
    )
    assert "fix xnat.project" in str(caught.value)
    with open_dqr_api(config) as api, pytest.raises(InputError) as wrong:
        preflight(api, config, pacs_id=None, pacs_ae="NOPE")
    assert (
        "XNAT knows no PACS with AE title 'NOPE'; XNAT's PACS are: "
        "id 1 AE DEMOPACS 'Demo PACS' (default)"
    ) == str(wrong.value)


def test_preflight_stops_when_xnat_cannot_reach_the_pacs(tmp_path: Path) -> None:
    """XNAT's C-ECHO fails: the message names the PACS entry and what to check."""
    dead = DqrPacs("GONE", "127.0.0.1", free_port(), "Gone PACS")
    with XnatEmulator(
        tmp_path / "x", projects=["P1"], dqr_pacs=[dead], anonymization_scripts={"P1": SCRIPT}
    ) as emulator:
        data = {
            "pacs": {"demo": {"host": "127.0.0.1", "port": 4242, "called_ae_title": "GONE"}},
            "xnat": {"url": emulator.url, "project": "P1"},
        }
        config = parse_config(load_yaml(yaml.safe_dump(data)), source="t.yaml")
        with open_dqr_api(config) as api, pytest.raises(FatalError) as caught:
            preflight(api, config, pacs_id=None, pacs_ae=None)
    assert f"PACS 1 (GONE at 127.0.0.1:{dead.port}) does not answer XNAT: XNAT's C-ECHO" in str(
        caught.value
    )
    assert "check the PACS entry in XNAT (host, port, AE title)" in str(caught.value)


def test_bad_login_is_fatal_with_the_fix(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password is the push's 401 message: the fix names where credentials live."""
    monkeypatch.setenv("XNAT_PASS", "wrong")
    with pytest.raises(FatalError, match=r"401.*fix XNAT_USER/XNAT_PASS"), open_dqr_api(config):
        pass


# -- resolving rows -----------------------------------------------------------------------------


def test_query_studies(api: DqrApi) -> None:
    """DQR's study query: 200 with the studies, 204 -> []."""
    found = api.query_studies(1, {"accessionNumber": "ACC0001"})
    assert [str(BRAIN.study_instance_uid)] == [a["studyInstanceUid"] for a in found]
    assert [] == api.query_studies(1, {"accessionNumber": "NOPE"})


def test_resolve_through_dqr(api: DqrApi, config: Config, mapping: MappingTable) -> None:
    """Exact matches only, first line wins, one study per named Session, series-selecting
    columns refused, mapping-table labels for rows without them; nothing identifying logged."""
    rows = [
        _row(2, "SUBJ01", "SESS01", AccessionNumber="ACC0001"),
        _row(3, PatientID="DEMO003"),
        _row(4, AccessionNumber="ACC0004"),
        _row(5, AccessionNumber="ACC9999"),
        _row(6, session="ONE", PatientID="DEMO003"),
        _row(7, StudyInstanceUID=str(KNEE.study_instance_uid), SeriesDescription="PD*"),
        _row(8, PatientName="doe^jane", StudyDate="20240101-20240131"),
    ]
    pacs = api.pacs_list()[0]
    with capture_logs() as events:
        resolved = resolve_studies(config, rows, api, pacs, mapping=mapping)
    subject = mapping.label_for("subject", "DEMO003", project="P1", template="{project}_S{n:04d}")
    sessions = {
        uid: mapping.label_for("session", uid, project="P1", template="{project}_E{n:05d}")
        for uid in (str(SPINE.study_instance_uid), str(CHEST.study_instance_uid))
    }
    assert [
        (2, str(BRAIN.study_instance_uid), "SUBJ01", "SESS01", "ACC0001", "20240105"),
        *sorted(
            (3, uid, subject, session, a.accession_number, a.study_date)
            for a in (SPINE, CHEST)
            for uid, session in sessions.items()
            if uid == str(a.study_instance_uid)
        ),
    ] == sorted(
        (s.line, s.study_instance_uid, s.subject, s.session, s.accession_number, s.study_date)
        for s in resolved.studies
    )
    assert all(not s.counts_verified and s.expected == () for s in resolved.studies)
    problems = {p.line: p.reason for p in resolved.row_problems}
    kinds = {p.line: p.kind for p in resolved.row_problems}
    assert [4, 5, 6, 7, 8] == sorted(problems)
    duplicate, no_match, refused = (
        RowProblemKind.DUPLICATE,
        RowProblemKind.NO_MATCH,
        RowProblemKind.REFUSED,
    )
    assert {4: duplicate, 5: no_match, 6: refused, 7: refused, 8: duplicate} == kinds
    assert (
        f"StudyInstanceUID {CHEST.study_instance_uid} is already selected by line 3" == problems[4]
    )
    assert (
        "no study at PACS 1 (DEMOPACS) through XNAT's DQR matches this row exactly" == problems[5]
    )
    assert problems[6].startswith("the row names Session 'ONE' but matches 2 studies")
    assert problems[7].startswith("column SeriesDescription selects series or instances")
    assert (
        f"StudyInstanceUID {BRAIN.study_instance_uid} is already selected by line 2" == problems[8]
    )
    _no_phi(events, *problems.values())


def test_resolve_keeps_only_exact_matches(
    api: DqrApi, config: Config, mapping: MappingTable
) -> None:
    """An answer that does not satisfy every key of the row (StudyDescription, checked on
    DQR's answers; Modality, against its ModalitiesInStudy) is dropped, as the pipeline
    drops it."""
    pacs = api.pacs_list()[0]
    for key, value in (("StudyDescription", "CT*"), ("Modality", "CT")):
        rows = [_row(2, PatientID="DEMO003", **{key: value})]
        resolved = resolve_studies(config, rows, api, pacs, mapping=mapping)
        assert [str(CHEST.study_instance_uid)] == [s.study_instance_uid for s in resolved.studies]


def test_resolve_by_pacsman_cfind_counts_series(
    emulator: XnatEmulator, demo_orthanc: OrthancServer, mapping: MappingTable
) -> None:
    """dqr.query: pacs: pacsman's C-FIND gives every series with its instance count
    (counts verified); Modality selects studies holding such a series, whole."""
    config = _config(emulator, demo_orthanc, dqr={"query": "pacs"})
    rows = [
        _row(2, "S1", "E1", AccessionNumber="ACC0003"),
        _row(3, PatientID="DEMO003", Modality="CT"),
    ]
    with open_dqr_api(config) as api:
        resolved = resolve_studies(config, rows, api, api.pacs_list()[0], mapping=mapping)
    assert () == resolved.row_problems
    spine, chest = resolved.studies
    assert (str(SPINE.study_instance_uid), True, 27) == (
        spine.study_instance_uid,
        spine.counts_verified,
        spine.expected_instances,
    )
    assert [("1", 3), ("2", 9), ("3", 9), ("4", 6)] == [
        (s.series_number, s.instances) for s in spine.expected
    ]
    assert (str(CHEST.study_instance_uid), 13) == (
        chest.study_instance_uid,
        chest.expected_instances,
    )
    assert {"CT"} == {s.modality for s in chest.expected}


# -- import and arrival -------------------------------------------------------------------------


def _study(spec: StudySpec, subject: str, session: str, *, verified: bool = True) -> DqrStudy:
    expected = tuple(
        ExpectedSeries(
            str(spec.series_instance_uid(s)), str(s.series_number), spec.modality, s.n_instances
        )
        for s in spec.series
    )
    return DqrStudy(
        line=2,
        study_instance_uid=str(spec.study_instance_uid),
        subject=subject,
        session=session,
        expected=expected if verified else (),
        counts_verified=verified,
    )


def _received(api: DqrApi, request_id: int) -> RequestStatus:
    """Wait (bounded) until the request left the queue and reached RECEIVED or FAILED."""
    done = (RequestStatus.RECEIVED, RequestStatus.FAILED)

    def status() -> RequestStatus | None:
        return next((r.status for r in api.history() if r.id == request_id), None)

    wait_for(lambda: status() in done, timeout=WAIT, what=f"DQR request {request_id}")
    found = status()
    assert found is not None
    return found


def test_import_then_arrival_complete(api: DqrApi, emulator: XnatEmulator, config: Config) -> None:
    """One import call queues one request; once RECEIVED the session is COMPLETE; its label
    is then taken (same study: skip; another study or subject: OTHER_STUDY); a deleted
    session is MISSING."""
    study = _study(BRAIN, "SUBJ01", "SESS01")
    receiver = (config.dqr.receiver_ae_title, config.dqr.receiver_port)
    assert [] == labels_taken(api, [study])
    assert ArrivalVerdict.MISSING == check_arrival(api, study).verdict
    queued = api.import_study(1, receiver, study)
    assert (RequestStatus.QUEUED, str(BRAIN.study_instance_uid)) == (
        queued.status,
        queued.study_instance_uid,
    )
    assert [queued.id] == [r["id"] for r in emulator.dqr_requests()]
    assert {"Subject": "SUBJ01", "Session": "SESS01"} == emulator.dqr_requests()[0]["relabelMap"]
    assert RequestStatus.RECEIVED == _received(api, queued.id)
    assert [] == api.queue()
    arrival = check_arrival(api, study)
    assert (ArrivalVerdict.COMPLETE, 23, "all 23 file(s) in 3 series") == (
        arrival.verdict,
        arrival.files,
        arrival.detail,
    )
    assert [("1", 3), ("2", 12), ("3", 8)] == sorted(arrival.scans)
    unverified = dataclasses.replace(study, expected=(), counts_verified=False)
    assert ArrivalVerdict.UNVERIFIED == check_arrival(api, unverified).verdict
    other_subject = dataclasses.replace(study, subject="SUBJ02")
    other_study = _study(KNEE, "SUBJ01", "SESS01")
    case = _study(KNEE, "subj01", "SESS02")
    taken = labels_taken(api, [study, other_subject, other_study, case])
    assert [
        (study, ArrivalVerdict.COMPLETE),
        (other_subject, ArrivalVerdict.OTHER_STUDY),
        (other_study, ArrivalVerdict.OTHER_STUDY),
        (case, ArrivalVerdict.OTHER_STUDY),
    ] == [(s, a.verdict) for s, a in taken]
    assert re.match(
        r"session 'SESS01' belongs to another subject \(XNAT experiment \w+\), not 'SUBJ02'",
        taken[1][1].detail,
    )
    assert f"holds StudyInstanceUID {BRAIN.study_instance_uid}, not" in taken[2][1].detail
    assert "differs from the project's 'SUBJ01' only in case" in taken[3][1].detail
    api.delete_session("SESS01")
    api.delete_session("SESS01")  # gone already: fine
    assert ArrivalVerdict.MISSING == check_arrival(api, study).verdict


@pytest.mark.parametrize(
    ("fault", "verdict", "detail"),
    [
        ({"dqr_partial": 1, "dqr_partial_drop": 2}, ArrivalVerdict.PARTIAL, "21 of 23 file(s): "),
        ({"dqr_zero_files": 1}, ArrivalVerdict.EMPTY, "session 'SESS01' exists with 0 files"),
    ],
)
def test_partial_and_empty_sessions(
    api: DqrApi,
    emulator: XnatEmulator,
    config: Config,
    fault: dict[str, int],
    verdict: ArrivalVerdict,
    detail: str,
) -> None:
    """A receiver that drops instances gives PARTIAL (naming the series short of files); a
    session archived without files is EMPTY."""
    for name, value in fault.items():
        setattr(emulator.faults, name, value)
    study = _study(BRAIN, "SUBJ01", "SESS01")
    queued = api.import_study(1, (config.dqr.receiver_ae_title, config.dqr.receiver_port), study)
    assert RequestStatus.RECEIVED == _received(api, queued.id)
    arrival = check_arrival(api, study)
    assert verdict == arrival.verdict
    assert arrival.detail.startswith(detail)


def test_import_refused_for_a_project_without_dqr(
    emulator: XnatEmulator, demo_orthanc: OrthancServer
) -> None:
    """403 on import is DqrRefused: the project, DQR not enabled, and the administrator's fix."""
    config = _config(emulator, demo_orthanc, project="P2")
    receiver = (config.dqr.receiver_ae_title, config.dqr.receiver_port)
    with open_dqr_api(config) as api, pytest.raises(DqrRefused) as caught:
        api.import_study(1, receiver, _study(BRAIN, "SUBJ01", "SESS01"))
    message = str(caught.value)
    assert "DQR is not enabled for project 'P2', or the XNAT user may not edit it" in message
    assert "allowAllProjectsToUseDqr, or the project's own DQR setting" in message
    assert isinstance(caught.value, FatalError)
    assert [] == emulator.dqr_requests()


def test_import_errors_are_sorted(api: DqrApi, emulator: XnatEmulator, config: Config) -> None:
    """A receiver XNAT does not have is fatal with the config keys; 500 and an answer that is
    not one QUEUED request are transient (the run asks again)."""
    study = _study(BRAIN, "SUBJ01", "SESS01")
    with pytest.raises(FatalError, match=r"XNAT refused its receiver XNAT:1 \(500: Invalid DICOM"):
        api.import_study(1, ("XNAT", 1), study)
    receiver = (config.dqr.receiver_ae_title, config.dqr.receiver_port)
    emulator.faults.dqr_import_status = 503
    with pytest.raises(
        TransientError,
        match=r"import row 2 \(session 'SESS01'\) with POST /xapi/dqr/import: XNAT answered 503",
    ):
        api.import_study(1, receiver, study)
    with pytest.raises(FatalError, match=r"XNAT knows no PACS 7 .404"):
        api.import_study(7, receiver, study)
    assert [] == emulator.dqr_requests()
