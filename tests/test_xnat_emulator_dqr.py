"""The XNAT emulator's DQR plugin and project anonymization scripts (contract §14, issue 16 A10),
in front of a real Orthanc, driven through the real ``xnat`` client's session.

Every wait polls with a deadline; "stays stuck" is judged after a later request has gone all
the way to RECEIVED (which takes at least the receiver's idle time, many worker steps).
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import xnat
from xnat.session import XNATSession

from pacsman.testing.net import accepts_tcp, free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, StudySpec
from pacsman.testing.xnat_emulator import DqrPacs, Faults, XnatEmulator
from pacsman.testing.xnat_emulator.__main__ import main as standalone

USER, PASSWORD = "admin", "secret"
IDLE, STEP = 0.2, 0.02
WAIT = 20.0  # seconds: the bound on any wait for a request status
DONE = ("RECEIVED", "FAILED")
BRAIN, KNEE, SPINE, CHEST = DEMO_STUDIES  # 23, 13, 27 and 13 instances
SCRIPT = 'version "6.1"\n(0010,0030) := ""\n'


def _emulator(data: Path, orthanc: OrthancServer, **kwargs: Any) -> XnatEmulator:
    pacs = DqrPacs(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "Demo PACS")
    settings: dict[str, Any] = {"dqr_pacs": [pacs], "dqr_session_idle": IDLE, "dqr_step": STEP}
    settings |= {"projects": ["P1", "P2"]} | kwargs
    return XnatEmulator(data, **settings)


@pytest.fixture
def emulator(tmp_path: Path, demo_orthanc: OrthancServer) -> Iterator[XnatEmulator]:
    """A running emulator whose DQR knows the demo Orthanc, its receiver registered there."""
    with _emulator(tmp_path / "xnat", demo_orthanc) as running:
        demo_orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", running.dqr_receiver_port)
        yield running


@pytest.fixture
def session(emulator: XnatEmulator) -> Iterator[XNATSession]:
    """A real client connection."""
    with xnat.connect(
        emulator.url, user=USER, password=PASSWORD, extension_types=False, loglevel="ERROR"
    ) as connection:
        yield connection


def _body(emulator: XnatEmulator, *studies: dict[str, Any], **over: Any) -> dict[str, Any]:
    body = {"pacsId": 1, "aeTitle": "XNAT", "port": emulator.dqr_receiver_port}
    return body | {"projectId": "P1", "forceImport": False, "studies": list(studies)} | over


def _study(spec: StudySpec | str, subject: str = "", label: str = "") -> dict[str, Any]:
    uid = spec if isinstance(spec, str) else str(spec.study_instance_uid)
    relabel = {"Subject": subject, "Session": label} if subject else {}
    return {"studyInstanceUid": uid, "seriesInstanceUids": [], "seriesDescriptions": []} | {
        "relabelMap": relabel
    }


def _import(
    session: XNATSession, emulator: XnatEmulator, spec: StudySpec | str, subject: str, label: str
) -> dict[str, Any]:
    answer = session.post("/xapi/dqr/import", json=_body(emulator, _study(spec, subject, label)))
    queued = answer.json()
    assert 1 == len(queued)
    assert "QUEUED" == queued[0]["status"]
    return dict(queued[0])


def _record(emulator: XnatEmulator, request_id: int) -> dict[str, Any]:
    return next(r for r in emulator.dqr_requests() if r["id"] == request_id)


def _wait(emulator: XnatEmulator, request_id: int, statuses: tuple[str, ...] = DONE) -> Any:
    wait_for(
        lambda: _record(emulator, request_id)["status"] in statuses,
        timeout=WAIT,
        what=f"DQR request {request_id} to reach {statuses}",
    )
    return _record(emulator, request_id)


def _ids(rows: Any) -> list[int]:
    return [row["id"] for row in rows]


# -- the PACS ---------------------------------------------------------------------------------


def test_pacs_list_entry_and_ping(session: XNATSession, demo_orthanc: OrthancServer) -> None:
    """/xapi/pacs lists the configured PACS from id 1; /status really C-ECHOes it."""
    listed = session.get_json("/xapi/pacs")
    assert 1 == len(listed)
    entry = listed[0]
    assert {"id": 1, "aeTitle": "DEMOPACS", "queryRetrievePort": demo_orthanc.dicom_port} == {
        k: entry[k] for k in ("id", "aeTitle", "queryRetrievePort")
    }
    assert "Demo PACS" == entry["label"]
    assert entry["defaultQueryRetrievePacs"]
    assert entry["queryable"]
    assert "dicomOrmStrategy" == entry["ormStrategySpringBeanId"]
    assert entry == session.get_json("/xapi/pacs/1")
    assert 404 == session.get("/xapi/pacs/2", accepted_status=[404]).status_code
    status = session.get_json("/xapi/pacs/1/status")
    assert {"pacsId": 1, "successful": True, "enabled": True} == {
        k: status[k] for k in ("pacsId", "successful", "enabled")
    }
    assert isinstance(status["pingTime"], int)


def test_ping_of_an_unreachable_pacs_is_unsuccessful(tmp_path: Path) -> None:
    """Nobody listens on the PACS port: the status answers successful false (no receiver needed)."""
    pacs = DqrPacs("NOBODY", "127.0.0.1", free_port())
    with XnatEmulator(tmp_path / "xnat", dqr_pacs=[pacs], dqr_step=STEP) as emulator:
        status = requests.get(
            f"{emulator.url}/xapi/pacs/1/status", auth=(USER, PASSWORD), timeout=30
        ).json()
    assert {"pacsId": 1, "successful": False, "enabled": True} == status


# -- the query --------------------------------------------------------------------------------


def _query(session: XNATSession, **criteria: str) -> requests.Response:
    answer: requests.Response = session.post(
        "/xapi/dqr/query/studies", json={"pacsId": 1, **criteria}, accepted_status=[200, 204]
    )
    return answer


def test_query_studies_answers_study_json_from_a_real_c_find(session: XNATSession) -> None:
    """Criteria become C-FIND keys at the PACS; the answer is DQR's Study JSON."""
    answer = _query(session, accessionNumber="ACC0001", patientName="", studyDateStart="")
    assert 200 == answer.status_code
    (study,) = answer.json()
    assert {
        "studyInstanceUid": str(BRAIN.study_instance_uid),
        "studyDate": "20240105",
        "studyId": "1",
        "accessionNumber": "ACC0001",
        "studyDescription": "MR Brain",
        "modalitiesInStudy": ["MR"],
        "patient": {"id": "DEMO001", "name": "Doe^Jane", "birthDate": "19800214", "sex": "F"},
        "referringPhysicianName": "Referrer^Rita",
    } == study
    both = _query(session, patientId="DEMO003").json()
    assert {"ACC0003", "ACC0004"} == {s["accessionNumber"] for s in both}
    assert ["ACC0004"] == [s["accessionNumber"] for s in _query(session, modality="CT").json()]
    dated = _query(session, studyDateStart="20240201", studyDateEnd="20240319").json()
    assert {"ACC0002", "ACC0003"} == {s["accessionNumber"] for s in dated}


def test_query_without_a_match_answers_204_and_unknown_pacs_404(session: XNATSession) -> None:
    """Nothing matches: 204 with no body; an unknown pacsId: 404; a bad body: 400."""
    nothing = _query(session, accessionNumber="NO-SUCH-ACC")
    assert (204, b"") == (nothing.status_code, nothing.content)
    unknown = session.post(
        "/xapi/dqr/query/studies", json={"pacsId": 7}, accepted_status=[404]
    ).status_code
    assert 404 == unknown
    bad = session.post("/xapi/dqr/query/studies", json={"pacsId": "1"}, accepted_status=[400])
    assert "pacsId" in bad.text


# -- the import, the queue and the history ----------------------------------------------------


def test_import_moves_the_study_and_archives_the_relabelled_session(
    emulator: XnatEmulator, session: XNATSession, demo_orthanc: OrthancServer
) -> None:
    """QUEUED -> PROCESSING -> ISSUED -> RECEIVED; the session is under the relabelled subject
    and label, with the scans of an imported session and every instance Orthanc holds."""
    queued = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    assert {
        "pacsId": 1,
        "xnatProject": "P1",
        "studyInstanceUid": str(BRAIN.study_instance_uid),
        "destinationAeTitle": f"XNAT:{emulator.dqr_receiver_port}",
        "priority": 10,
        "username": USER,
        "accessionNumber": "ACC0001",
        "studyDate": "20240105",
    }.items() <= queued.items()
    assert '(0010,0010) := "SUBJ01"' in queued["remappingScript"]
    assert queued["queuedTime"] == queued["created"]
    done = _wait(emulator, queued["id"])
    assert ["QUEUED", "PROCESSING", "ISSUED", "RECEIVED"] == done["statuses"]
    experiment = session.projects["P1"].subjects["SUBJ01"].experiments["SESS01"]
    assert str(BRAIN.study_instance_uid) == experiment.uid
    expected = demo_orthanc.series_instance_counts()
    scans = {scan.id: scan for scan in experiment.scans.values()}
    assert ["1", "2", "3"] == sorted(scans)
    for scan in scans.values():
        assert expected[scan.uid] == len(scan.resources["DICOM"].files)
    assert BRAIN.n_instances == emulator.file_count("P1", "SESS01")
    for path in emulator.dicom_files("P1", "SESS01"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert ("SUBJ01", "SUBJ01") == (str(header.PatientName), header.PatientID)
        assert ("SESS01", "SESS01") == (header.StudyID, header.AccessionNumber)
        assert 0o600 == path.stat().st_mode & 0o777
    assert [] == session.get_json("/xapi/dqr/import/queue", query={"all": "false"})
    (history,) = session.get_json("/xapi/dqr/query/history/user")
    assert ("RECEIVED", queued["id"]) == (history["status"], history["id"])
    assert history["executedTime"] >= history["queuedTime"]


def test_series_instance_uids_limit_the_move_to_those_series(
    emulator: XnatEmulator, session: XNATSession
) -> None:
    """seriesInstanceUids given: only those series are C-MOVEd (one SERIES-level move each)."""
    wanted = [str(BRAIN.series_instance_uid(s)) for s in BRAIN.series[1:]]
    study = _study(BRAIN, "SUBJ01", "SESS01") | {"seriesInstanceUids": wanted}
    (queued,) = session.post("/xapi/dqr/import", json=_body(emulator, study)).json()
    assert wanted == queued["seriesIds"]
    assert "RECEIVED" == _wait(emulator, queued["id"])["status"]
    assert {"2": 12, "3": 8} == emulator.scan_file_counts("P1", "SESS01")


def test_queue_lists_waiting_requests_and_the_history_the_rest(
    emulator: XnatEmulator, session: XNATSession
) -> None:
    """A request is in exactly one of queue / history; all=true shows everyone's requests."""
    emulator.faults.dqr_queue_stops_after = 0  # hold everything in the queue
    first = _import(session, emulator, KNEE, "SUBJ02", "SESS02")
    assert [first["id"]] == _ids(session.get_json("/xapi/dqr/import/queue"))
    assert [] == session.get_json("/xapi/dqr/query/history/user")
    emulator.add_user("other", "pw")
    with xnat.connect(
        emulator.url, user="other", password="pw", extension_types=False, loglevel="ERROR"
    ) as other:
        assert [] == other.get_json("/xapi/dqr/import/queue", query={"all": "false"})
        assert [first["id"]] == _ids(
            other.get_json("/xapi/dqr/import/queue", query={"all": "true"})
        )
    emulator.faults.dqr_queue_stops_after = None
    _wait(emulator, first["id"])
    assert [] == session.get_json("/xapi/dqr/import/queue")
    assert [first["id"]] == _ids(session.get_json("/xapi/dqr/query/history/user"))


def test_a_study_the_pacs_does_not_know_ends_failed(
    emulator: XnatEmulator, session: XNATSession
) -> None:
    """Orthanc answers the C-MOVE with a failure status (0xC000): the request FAILS."""
    queued = _import(session, emulator, "1.2.826.0.1.3680043.99.1", "SUBJ09", "SESS09")
    failed = _wait(emulator, queued["id"])
    assert ["QUEUED", "PROCESSING", "FAILED"] == failed["statuses"]
    assert "C-MOVE" in failed["detail"]
    assert "" == queued["accessionNumber"]  # the PACS knew nothing to fill in
    assert [] == emulator.sessions()


def test_a_study_already_in_the_archive_queues_then_fails(
    emulator: XnatEmulator, session: XNATSession
) -> None:
    """§14.1: a second import of an archived session still queues, then FAILS inside XNAT."""
    first = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    assert "RECEIVED" == _wait(emulator, first["id"])["status"]
    again = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    failed = _wait(emulator, again["id"])
    assert "FAILED" == failed["status"]
    assert "already exists" in failed["detail"]
    assert BRAIN.n_instances == emulator.file_count("P1", "SESS01")
    assert ["FAILED", "RECEIVED"] == sorted(
        h["status"] for h in session.get_json("/xapi/dqr/query/history/user")
    )


def test_import_refusals(emulator: XnatEmulator, session: XNATSession) -> None:
    """400 names the field; 403 for a project DQR may not use; 404 unknown pacsId; 500 for a
    receiver that is not the emulator's. Nothing is queued by any of them."""
    study = _study(BRAIN, "SUBJ01", "SESS01")
    cases: list[tuple[dict[str, Any], int, str]] = [
        (_body(emulator, study, studies=[]), 400, "studies"),
        (_body(emulator, {"studyInstanceUid": ""}), 400, "studies[0].studyInstanceUid"),
        (_body(emulator, study, pacsId="one"), 400, "pacsId"),
        (_body(emulator, study, projectId="NOPE"), 403, "NOPE"),
        (_body(emulator, study, pacsId=5), 404, "5"),
        (_body(emulator, study, port=emulator.dqr_receiver_port + 1), 500, ""),
        (_body(emulator, study, aeTitle="OTHER"), 500, ""),
    ]
    for body, status, named in cases:
        answer = session.post("/xapi/dqr/import", json=body, accepted_status=[status])
        assert named in answer.text
    answer = session.post(
        "/xapi/dqr/import", json=_body(emulator, study, port=1), accepted_status=[500]
    )
    assert "Invalid DICOM SCP Receiver ID." == answer.text
    assert [] == emulator.dqr_requests()


def test_dqr_projects_limits_the_projects_dqr_may_import_into(tmp_path: Path) -> None:
    """dqr_projects=["P1"]: P2 answers 403 before the PACS or receiver is looked at."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1", "P2"], dqr_projects=["P1"]) as emulator:
        body = {"pacsId": 1, "aeTitle": "XNAT", "port": 1, "projectId": "P2"}
        body["studies"] = [{"studyInstanceUid": "1.2.3"}]
        answer = requests.post(
            f"{emulator.url}/xapi/dqr/import", json=body, auth=(USER, PASSWORD), timeout=10
        )
        assert 403 == answer.status_code
        answer = requests.post(
            f"{emulator.url}/xapi/dqr/import",
            json=body | {"projectId": "P1"},
            auth=(USER, PASSWORD),
            timeout=10,
        )
        assert 404 == answer.status_code  # P1 may: then the unknown pacsId counts
        assert (
            []
            == requests.get(f"{emulator.url}/xapi/pacs", auth=(USER, PASSWORD), timeout=10).json()
        )


# -- fault switches ---------------------------------------------------------------------------


def _then_one_more(
    session: XNATSession, emulator: XnatEmulator, held: dict[str, Any]
) -> dict[str, Any]:
    """Import another study and wait until it is RECEIVED: the worker went on past ``held``."""
    later = _import(session, emulator, CHEST, "SUBJ04", "SESS04")
    assert "RECEIVED" == _wait(emulator, later["id"])["status"]
    return _record(emulator, held["id"])


def test_fault_stuck_processing(emulator: XnatEmulator, session: XNATSession) -> None:
    """The request stays PROCESSING (in the queue) for ever; the next one goes through."""
    emulator.faults.dqr_stuck_processing = 1
    held = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    _wait(emulator, held["id"], ("PROCESSING",))
    record = _then_one_more(session, emulator, held)
    assert (["QUEUED", "PROCESSING"], "stuck_processing") == (record["statuses"], record["fault"])
    assert [held["id"]] == _ids(session.get_json("/xapi/dqr/import/queue"))
    assert None is emulator.session("P1", "SESS01")
    assert 0 == emulator.faults.dqr_stuck_processing


def test_fault_stuck_issued(emulator: XnatEmulator, session: XNATSession) -> None:
    """The request is ISSUED (in the history) and never RECEIVED; no session is built."""
    emulator.faults.dqr_stuck_issued = 1
    held = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    _wait(emulator, held["id"], ("ISSUED",))
    record = _then_one_more(session, emulator, held)
    assert ["QUEUED", "PROCESSING", "ISSUED"] == record["statuses"]
    history = {h["id"]: h["status"] for h in session.get_json("/xapi/dqr/query/history/user")}
    assert "ISSUED" == history[held["id"]]
    assert None is emulator.session("P1", "SESS01")


def test_fault_failed(emulator: XnatEmulator, session: XNATSession) -> None:
    """The request ends FAILED without moving anything."""
    emulator.faults.dqr_failed = 1
    failed = _wait(emulator, _import(session, emulator, BRAIN, "SUBJ01", "SESS01")["id"])
    assert ["QUEUED", "PROCESSING", "FAILED"] == failed["statuses"]
    assert "dqr_failed" in failed["detail"]
    assert [] == emulator.sessions()


def test_fault_partial_drops_instances(emulator: XnatEmulator, session: XNATSession) -> None:
    """The receiver drops dqr_partial_drop instances: RECEIVED, but the session is short."""
    emulator.faults.update({"dqr_partial": 1, "dqr_partial_drop": 3})
    done = _wait(emulator, _import(session, emulator, SPINE, "SUBJ03", "SESS03")["id"])
    assert ("RECEIVED", "partial") == (done["status"], done["fault"])
    assert SPINE.n_instances - 3 == emulator.file_count("P1", "SESS03")
    whole = _wait(emulator, _import(session, emulator, KNEE, "SUBJ02", "SESS02")["id"])
    assert "none" == whole["fault"]
    assert KNEE.n_instances == emulator.file_count("P1", "SESS02")


def test_fault_zero_files(emulator: XnatEmulator, session: XNATSession) -> None:
    """The session is archived with every scan but 0 files."""
    emulator.faults.dqr_zero_files = 1
    done = _wait(emulator, _import(session, emulator, SPINE, "SUBJ03", "SESS03")["id"])
    assert "RECEIVED" == done["status"]
    assert {"1": 0, "2": 0, "3": 0, "4": 0} == emulator.scan_file_counts("P1", "SESS03")


def test_fault_queue_stops_after_n(emulator: XnatEmulator, session: XNATSession) -> None:
    """After N requests left the queue, later ones stay QUEUED (the 843-of-1,910 jam)."""
    emulator.faults.dqr_queue_stops_after = 1
    first = _import(session, emulator, BRAIN, "SUBJ01", "SESS01")
    second = _import(session, emulator, KNEE, "SUBJ02", "SESS02")
    assert "RECEIVED" == _wait(emulator, first["id"])["status"]
    assert ["QUEUED"] == _record(emulator, second["id"])["statuses"]
    assert [second["id"]] == _ids(session.get_json("/xapi/dqr/import/queue"))
    assert 0 == emulator.faults.dqr_queue_stops_after
    emulator.faults.dqr_queue_stops_after = None
    assert "RECEIVED" == _wait(emulator, second["id"])["status"]


def test_fault_import_status(emulator: XnatEmulator, session: XNATSession) -> None:
    """The next N imports answer the status and queue nothing; then imports work again."""
    emulator.faults.update({"dqr_import_status": 500, "dqr_import_status_count": 2})
    body = _body(emulator, _study(BRAIN, "SUBJ01", "SESS01"))
    for _ in range(2):
        session.post("/xapi/dqr/import", json=body, accepted_status=[500])
    assert [] == emulator.dqr_requests()
    assert None is emulator.faults.dqr_import_status
    _import(session, emulator, BRAIN, "SUBJ01", "SESS01")


def test_fault_disabled_project_answers_403(emulator: XnatEmulator, session: XNATSession) -> None:
    """dqr_disabled_projects: 403 for those projects, set through the admin endpoint."""
    session.put("/data/_emulator/faults", json={"dqr_disabled_projects": ["P1"]})
    assert ("P1",) == emulator.faults.dqr_disabled_projects
    body = _body(emulator, _study(BRAIN, "SUBJ01", "SESS01"))
    answer = session.post("/xapi/dqr/import", json=body, accepted_status=[403])
    assert "P1" in answer.text
    session.post("/xapi/dqr/import", json=body | {"projectId": "P2"})
    assert ["P2"] == [r["xnatProject"] for r in emulator.dqr_requests()]


def test_dqr_faults_are_validated_and_settable_over_http(emulator: XnatEmulator) -> None:
    """The admin endpoint takes the DQR switches; bad values are 400s naming the switch."""
    admin = f"{emulator.url}/data/_emulator/faults"
    auth = (USER, PASSWORD)
    settings = {"dqr_stuck_issued": 2, "dqr_queue_stops_after": 5, "dqr_partial_drop": 4}
    shown = requests.put(admin, json=settings, auth=auth, timeout=10).json()
    assert settings.items() <= shown.items()
    for bad in (
        {"dqr_failed": -1},
        {"dqr_import_status": 200},
        {"dqr_disabled_projects": "P1"},
        {"dqr_queue_stops_after": True},
    ):
        answer = requests.put(admin, json=bad, auth=auth, timeout=10)
        assert 400 == answer.status_code
        assert next(iter(bad)) in answer.text
    requests.delete(admin, auth=auth, timeout=10)
    assert Faults().as_dict() == emulator.faults.as_dict()


# -- project anonymization scripts ------------------------------------------------------------


def test_anonymization_script_endpoints(emulator: XnatEmulator, session: XNATSession) -> None:
    """204 without a script; PUT sets it (200 text); enabled true/false; disabled -> 204."""
    script_path, enabled_path = "/xapi/anonymize/projects/P1", "/xapi/anonymize/projects/P1/enabled"
    assert 204 == session.get(script_path, accepted_status=[204]).status_code
    assert False is session.get_json(enabled_path)
    session.put(script_path, data=SCRIPT, headers={"Content-Type": "text/plain"})
    answer = session.get(script_path)
    assert (SCRIPT, "text/plain") == (answer.text, answer.headers["Content-Type"].split(";")[0])
    assert True is session.get_json(enabled_path)
    session.put(enabled_path, query={"enable": "false"}, json=False)
    assert False is session.get_json(enabled_path)
    assert 204 == session.get(script_path, accepted_status=[204]).status_code
    session.put(enabled_path, query={"enable": "true"}, json=True)
    assert SCRIPT == session.get(script_path).text
    emulator.set_anonymization_script("P2", SCRIPT, enabled=False)
    assert False is session.get_json("/xapi/anonymize/projects/P2/enabled")


def test_anonymization_of_an_unknown_project_is_a_500(tmp_path: Path) -> None:
    """XNAT answers 500 "There was an error in the request : null" for an unknown project;
    scripts given to the constructor are there, enabled."""
    with XnatEmulator(
        tmp_path / "xnat", projects=["P1"], anonymization_scripts={"P1": SCRIPT}
    ) as emulator:
        base = f"{emulator.url}/xapi/anonymize/projects"
        auth = (USER, PASSWORD)
        for path in ("NOPE", "NOPE/enabled"):
            answer = requests.get(f"{base}/{path}", auth=auth, timeout=10)
            assert 500 == answer.status_code
            assert "There was an error in the request : null" in answer.text
        assert SCRIPT == requests.get(f"{base}/P1", auth=auth, timeout=10).text
        assert True is requests.get(f"{base}/P1/enabled", auth=auth, timeout=10).json()


# -- lifecycle and the standalone command -----------------------------------------------------


def test_stop_ends_the_worker_and_the_receiver(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """stop() joins the queue worker and closes the receiver's port."""
    emulator = _emulator(tmp_path / "xnat", demo_orthanc).start()
    port = emulator.dqr_receiver_port
    assert accepts_tcp("127.0.0.1", port)
    emulator.stop()
    assert not accepts_tcp("127.0.0.1", port)
    assert "xnat-emulator-dqr" not in [t.name for t in threading.enumerate()]
    with pytest.raises(RuntimeError, match="DQR receiver is not running"):
        _ = emulator.dqr_receiver_port


def test_standalone_command_with_a_dqr_pacs(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """--dqr-pacs and --anonymization-script: the URL, then the receiver, are printed."""
    script = tmp_path / "anon.das"
    script.write_text(SCRIPT, encoding="utf-8")
    command = [sys.executable, "-m", "pacsman.testing.xnat_emulator", "--data", str(tmp_path)]
    command += ["--project", "P1", "--dqr-pacs", f"DEMOPACS@127.0.0.1:{demo_orthanc.dicom_port}"]
    command += ["--dqr-receiver-ae", "XNATDQR", "--anonymization-script", f"P1={script}"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        receiver = process.stdout.readline().strip()
        auth = (USER, PASSWORD)
        pacs = requests.get(f"{url}/xapi/pacs", auth=auth, timeout=10).json()
        anon = requests.get(f"{url}/xapi/anonymize/projects/P1", auth=auth, timeout=10).text
        process.terminate()
        assert 0 == process.wait(timeout=20)
    assert receiver.startswith("dqr-receiver XNATDQR@127.0.0.1:")
    assert [demo_orthanc.dicom_port] == [p["queryRetrievePort"] for p in pacs]
    assert SCRIPT == anon


def test_standalone_command_refuses_a_malformed_dqr_pacs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --dqr-pacs that is not AE@HOST:PORT is a usage error (exit 2) naming the form."""
    with pytest.raises(SystemExit) as stopped:
        standalone(["--data", str(tmp_path), "--dqr-pacs", "ORTHANC:4242"])
    assert 2 == stopped.value.code
    assert "AE@HOST:PORT" in capsys.readouterr().err
