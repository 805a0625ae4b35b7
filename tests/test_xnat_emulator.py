"""The XNAT emulator, driven by the real, unmodified ``xnat`` 0.8.1 client over real sockets."""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import xnat
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from xnat.exceptions import XNATLoginFailedError, XNATResponseError, XNATUploadError

from pacsman.testing.xnat_emulator import XnatEmulator

USER, PASSWORD = "admin", "secret"
MakeZip = Callable[..., Path]


def _instance(study: str, series: str, number: int, instance: int, patient: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SeriesNumber, ds.InstanceNumber, ds.Modality = number, instance, "MR"
    ds.SeriesDescription, ds.StudyDate, ds.StudyTime = f"T{number}", "20200101", "101500"
    ds.PatientName, ds.PatientID, ds.PatientComments = patient, "SESSX", ""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def make_zip(tmp_path: Path) -> MakeZip:
    """Build a zip of small MR instances: ``series`` numbers x ``instances`` each."""
    count = iter(range(1000))

    def build(
        study: str, series: tuple[int, ...] = (1, 2), instances: int = 3, patient: str = "SUBJX"
    ) -> Path:
        path = tmp_path / f"upload{next(count)}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for number in series:
                series_uid = generate_uid(entropy_srcs=[study, str(number)])
                for index in range(instances):
                    data = _instance(study, series_uid, number, index + 1, patient)
                    archive.writestr(f"s{number}/i{index}.dcm", data)
        return path

    return build


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """A running emulator with project P1."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as running:
        yield running


@pytest.fixture
def session(emulator: XnatEmulator) -> Iterator[xnat.session.XNATSession]:
    """A real client connection (the lighter ``extension_types=False`` form)."""
    with xnat.connect(
        emulator.url, user=USER, password=PASSWORD, extension_types=False, loglevel="ERROR"
    ) as connection:
        yield connection


def _import(session: xnat.session.XNATSession, path: Path, **options: str) -> Any:
    settings = {"project": "P1", "subject": "SUBJ01", "experiment": "SESS01"}
    settings |= {"import_handler": "DICOM-zip", "destination": "/archive"} | options
    return session.services.import_(path, **settings)


# -- login, connect, disconnect -------------------------------------------------------------


def test_connect_with_extension_types_fetches_every_listed_schema(emulator: XnatEmulator) -> None:
    """The default connect reads /xapi/schemas, then each schema, then the search elements."""
    with xnat.connect(emulator.url, user=USER, password=PASSWORD, loglevel="ERROR") as connection:
        assert ["P1"] == list(connection.projects.keys())
    paths = [r.path for r in emulator.request_log]
    for expected in ("/xapi/schemas", "/xapi/schemas/xnat", "/xapi/schemas/xdat"):
        assert expected in paths
    assert ("GET", "/data/version", 404) in [
        (r.method, r.path, r.status) for r in emulator.request_log
    ]


def test_connect_without_extension_types_and_disconnect(emulator: XnatEmulator) -> None:
    """extension_types=False skips the schema list; disconnect's DELETE /data/JSESSION is 200
    and ends the session server-side."""
    connection = xnat.connect(
        emulator.url, user=USER, password=PASSWORD, extension_types=False, loglevel="ERROR"
    )
    token = connection.jsession
    connection.disconnect()
    log = [(r.method, r.path, r.status) for r in emulator.request_log]
    assert ("GET", "/xapi/schemas", 200) not in log
    assert ("DELETE", "/data/JSESSION", 200) == log[-1]
    answer = requests.get(f"{emulator.url}/data/auth", cookies={"JSESSIONID": token}, timeout=10)
    assert 401 == answer.status_code


def test_bad_login_is_refused_with_the_status_page(emulator: XnatEmulator) -> None:
    """A wrong password gets 401 and xnatpy reports XNAT's <h3> message."""
    with pytest.raises(XNATLoginFailedError, match="Authentication failed"):
        xnat.connect(emulator.url, user=USER, password="wrong", loglevel="ERROR")


def test_basic_auth_works_and_no_auth_is_401(emulator: XnatEmulator) -> None:
    """Every /data route takes Basic auth; without credentials it is 401."""
    url = f"{emulator.url}/data/archive/projects?format=json"
    assert 401 == requests.get(url, timeout=10).status_code
    rows = requests.get(url, auth=(USER, PASSWORD), timeout=10).json()["ResultSet"]["Result"]
    assert ["P1"] == [r["ID"] for r in rows]


# -- import ---------------------------------------------------------------------------------


def test_import_to_archive_builds_scans_resources_and_files(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """2 series x 3 instances become scans 1 and 2, each with a 3-file DICOM resource, on disk
    under <data>/<project>/<subject>/<session>/scans/<id>/resources/DICOM/files."""
    study = generate_uid()
    experiment = _import(session, make_zip(study))
    assert ("SESS01", study) == (experiment.label, experiment.uid)
    counts = {s.id: s.resources["DICOM"].file_count for s in experiment.scans.values()}
    assert {"1": 3, "2": 3} == counts
    assert {"1": 3, "2": 3} == emulator.scan_file_counts("P1", "SESS01")
    files = emulator.dicom_files("P1", "SESS01")
    assert emulator.data_dir / "P1/SUBJ01/SESS01/scans/1/resources/DICOM/files" == files[0].parent
    assert {study} == {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}


@pytest.mark.parametrize(
    ("handler", "status", "message"),
    [
        ("DICOM-zip", 400, "Failed to archive 1 of 1 session"),
        ("SI", 409, "Session already exists, retry with overwrite enabled"),
    ],
)
def test_duplicate_import_clashes(
    emulator: XnatEmulator,
    session: xnat.session.XNATSession,
    make_zip: MakeZip,
    handler: str,
    status: int,
    message: str,
) -> None:
    """Re-sending an archived study without overwrite fails; DICOM-zip wraps the 409 as 400 and
    leaves the rebuilt session in the prearchive as CONFLICT."""
    upload = make_zip(generate_uid())
    _import(session, upload, import_handler=handler)
    with pytest.raises(XNATUploadError, match=rf"(?s)Status code {status}.*{message}"):
        _import(session, upload, import_handler=handler)
    assert 1 == len(emulator.sessions())
    assert ["CONFLICT"] == [e.status for e in emulator.prearchive()]


def test_overwrite_append_merges_new_series_and_refuses_matching_files(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """overwrite=append adds a new series; re-sending files already there is a 409."""
    study = generate_uid()
    _import(session, make_zip(study))
    third = make_zip(study, series=(3,))
    _import(session, third, overwrite="append")
    assert {"1": 3, "2": 3, "3": 3} == emulator.scan_file_counts("P1", "SESS01")
    with pytest.raises(XNATUploadError, match=r"(?s)409.*matching files"):
        _import(session, third, overwrite="append", import_handler="SI")


def test_overwrite_delete_replaces_a_scan(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """overwrite=delete replaces same-numbered scans, keeping the others."""
    study = generate_uid()
    _import(session, make_zip(study))
    _import(session, make_zip(study, series=(2,), instances=5), overwrite="delete")
    assert {"1": 3, "2": 5} == emulator.scan_file_counts("P1", "SESS01")


def test_session_label_under_another_subject_is_refused(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """A session label already used by another subject of the project is XNAT's 409."""
    _import(session, make_zip(generate_uid()))
    with pytest.raises(XNATUploadError, match=r"(?s)409.*Already Exists for another Subject"):
        _import(session, make_zip(generate_uid()), subject="SUBJ02", import_handler="SI")


def test_strict_labels_are_417_and_lenient_labels_are_cleaned(
    tmp_path: Path, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """Strict mode answers 417 for 'A.B'; lenient mode stores XNAT's cleaned 'A_B'."""
    with pytest.raises(XNATUploadError, match=r"(?s)417.*Invalid character in subject label"):
        _import(session, make_zip(generate_uid()), subject="A.B")
    with XnatEmulator(tmp_path / "lenient", projects=["P1"], strict_labels=False) as lenient:
        client = xnat.connect(lenient.url, user=USER, password=PASSWORD, extension_types=False)
        with client:
            _import(client, make_zip(generate_uid()), subject="A.B", experiment="S.1")
        assert [("A_B", "S_1")] == [(s.subject, s.label) for s in lenient.sessions()]


def test_bad_uploads_are_rejected(session: xnat.session.XNATSession, make_zip: MakeZip) -> None:
    """Two studies in one zip, or no DICOM at all, get XNAT's 400 messages."""
    mixed = make_zip(generate_uid())
    with zipfile.ZipFile(mixed, "a") as archive, zipfile.ZipFile(make_zip(generate_uid())) as other:
        archive.writestr("other.dcm", other.read(other.namelist()[0]))
    with pytest.raises(XNATUploadError, match=r"(?s)400.*multiple imaging sessions"):
        _import(session, mixed)
    text = mixed.with_name("text.zip")
    with zipfile.ZipFile(text, "w") as archive:
        archive.writestr("notes.txt", "not DICOM")
    with pytest.raises(XNATUploadError, match=r"(?s)400.*did not include parseable files"):
        _import(session, text)


def test_labels_come_from_dicom_when_not_given(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """Without subject/session parameters, PatientName and PatientID name them."""
    experiment = session.services.import_(
        make_zip(generate_uid()), project="P1", import_handler="DICOM-zip", destination="/archive"
    )
    assert "SESSX" == experiment.label
    assert [("SUBJX", "SESSX")] == [(s.subject, s.label) for s in emulator.sessions()]


def test_prearchive_import_then_archive(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """dest=/prearchive gives a READY prearchive session; archive() moves it into the archive."""
    study = generate_uid()
    pending = _import(session, make_zip(study), destination="/prearchive", experiment="SESS03")
    listed = session.prearchive.sessions()
    assert [("READY", study)] == [(p.status, p.tag) for p in listed]
    assert {"1", "2"} == set(listed[0].scans.keys())
    experiment = pending.archive(subject="SUBJ03", experiment="SESS03")
    assert ("SESS03", []) == (experiment.label, session.prearchive.sessions())
    assert 6 == emulator.file_count("P1", "SESS03")


def test_unknown_project_lands_in_unassigned(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """An unknown project sends the upload to the prearchive's Unassigned project."""
    pending = _import(session, make_zip(generate_uid()), project="NOPE")
    assert pending.uri.startswith("/data/prearchive/projects/Unassigned/")
    assert [] == emulator.sessions()


# -- the archive tree -----------------------------------------------------------------------


def test_create_upload_download_and_delete(
    session: xnat.session.XNATSession, tmp_path: Path
) -> None:
    """Subject, experiment, scan and resource PUTs; upload keeps old content unless
    overwrite=true; single-file and zip downloads; DELETE of a file."""
    project = session.projects["P1"]
    subject = session.classes.SubjectData(parent=project, label="SUBJ09")
    experiment = session.classes.MrSessionData(parent=subject, label="SESS09")
    scan = session.classes.MrScanData(parent=experiment, id="5", type="T2")
    resource = scan.create_resource("NIFTI", format="NIFTI")
    resource.upload_data(b"first", "seg.nii.gz")
    resource.upload_data(b"second", "seg.nii.gz")
    target = tmp_path / "seg.nii.gz"
    resource.files["seg.nii.gz"].download(target, verbose=False)
    assert b"first" == target.read_bytes()
    resource.upload_data(b"third", "seg.nii.gz", overwrite=True)
    resource.files.clearcache()
    resource.files["seg.nii.gz"].download(target, verbose=False)
    assert b"third" == target.read_bytes()
    experiment.download(tmp_path / "all.zip", verbose=False)
    names = zipfile.ZipFile(tmp_path / "all.zip").namelist()
    assert ["SESS09/scans/5-T2/resources/NIFTI/files/seg.nii.gz"] == names
    resource.files["seg.nii.gz"].delete()
    resource.files.clearcache()
    assert [] == list(resource.files)
    with pytest.raises(XNATResponseError, match="409"):
        scan.create_resource("NIFTI")


def test_experiment_zip_holds_every_imported_file(
    session: xnat.session.XNATSession, make_zip: MakeZip, tmp_path: Path
) -> None:
    """scans/ALL/files?format=zip names entries <label>/scans/<id>-<type>/resources/..."""
    experiment = _import(session, make_zip(generate_uid()))
    experiment.download(tmp_path / "s.zip", verbose=False)
    names = zipfile.ZipFile(tmp_path / "s.zip").namelist()
    assert 6 == len(names)
    assert all(
        n.startswith(("SESS01/scans/1-T1/resources/DICOM/files/", "SESS01/scans/2-T2/"))
        for n in names
    )


def test_extract_upload_file_size_and_experiment_delete(
    emulator: XnatEmulator, session: xnat.session.XNATSession, tmp_path: Path
) -> None:
    """extract=true unpacks a zip into the resource; HEAD gives the size; DELETE of the
    experiment removes it and its files."""
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("a/one.csv", "1,2")
        archive.writestr("two.csv", "3,4,5")
    subject = session.classes.SubjectData(parent=session.projects["P1"], label="SUBJ05")
    experiment = session.classes.CtSessionData(parent=subject, label="SESS05")
    resource = experiment.create_resource("TABLES")
    resource.upload(bundle, "bundle.zip", extract=True)
    assert ["a/one.csv", "two.csv"] == sorted(resource.files.keys())
    assert "5" == resource.files["two.csv"].size
    session.delete(f"/data/experiments/{experiment.id}", query={"removeFiles": "true"})
    assert [] == emulator.sessions()
    assert not (emulator.data_dir / "P1/SUBJ05/SESS05").exists()


def test_state_survives_a_restart(tmp_path: Path, make_zip: MakeZip) -> None:
    """A new emulator on the same data dir still holds the archived session."""
    first = XnatEmulator(tmp_path / "x", projects=["P1"])
    with first, xnat.connect(first.url, user=USER, password=PASSWORD) as client:
        _import(client, make_zip(generate_uid()))
    with XnatEmulator(tmp_path / "x") as second:
        with xnat.connect(second.url, user=USER, password=PASSWORD, extension_types=False) as c:
            assert ["SESS01"] == [e.label for e in c.projects["P1"].experiments.values()]
        assert 6 == second.file_count("P1", "SESS01")


def test_listing_filters_and_aliases(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """/data and /data/archive are aliases; listings honour columns, wildcards and date ranges."""
    _import(session, make_zip(generate_uid()))
    auth = (USER, PASSWORD)

    def rows(path: str) -> list[dict[str, str]]:
        answer = requests.get(f"{emulator.url}{path}", auth=auth, timeout=10)
        result: list[dict[str, str]] = answer.json()["ResultSet"]["Result"]
        return result

    base = "/projects/P1/experiments?format=json&columns=ID,label"
    assert rows(f"/data{base}") == rows(f"/data/archive{base}")
    assert [
        {"ID": "XNAT_E00001", "label": "SESS01", "URI": "/data/experiments/XNAT_E00001"}
    ] == rows(f"/data{base}&label=SESS*")
    assert [] == rows("/data/experiments?format=json&date=01/01/2021-12/31/2021")
    assert 1 == len(rows("/data/experiments?format=json&date=12/01/2019-01/31/2020"))


# -- fault switches -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 413])
def test_status_on_import_fails_the_next_n_imports(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip, status: int
) -> None:
    """status_on_import with count 2 fails two imports without storing; the third works."""
    emulator.faults.update({"status_on_import": status, "status_on_import_count": 2})
    upload = make_zip(generate_uid())
    for _ in range(2):
        with pytest.raises(XNATUploadError, match=f"Status code {status}"):
            _import(session, upload)
        assert [] == emulator.sessions()
    _import(session, upload)
    assert 6 == emulator.file_count("P1", "SESS01")


def test_accept_then_fail_leaves_the_session_present(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """The server finished but answered 502: the client fails, the session is complete."""
    emulator.faults.accept_then_fail, emulator.faults.accept_then_fail_status = 1, 502
    with pytest.raises(XNATUploadError, match="Status code 502"):
        _import(session, make_zip(generate_uid()))
    assert ["SESS01"] == [e.label for e in session.projects["P1"].experiments.values()]
    assert 6 == emulator.file_count("P1", "SESS01")


def test_reset_after_import_drops_the_connection(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """The import is applied, then the socket is reset without an answer."""
    emulator.faults.reset_after_import = 1
    with pytest.raises(requests.exceptions.ConnectionError):
        _import(session, make_zip(generate_uid()))
    assert 6 == emulator.file_count("P1", "SESS01")
    assert 0 == emulator.request_log[-1].status


def test_zero_file_success(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """XNAT's 'success with 0 files': 200 and the session URI, but no files stored."""
    emulator.faults.zero_file_success = 1
    experiment = _import(session, make_zip(generate_uid()))
    assert [0, 0] == [s.resources["DICOM"].file_count for s in experiment.scans.values()]
    assert 0 == emulator.file_count("P1", "SESS01")


def test_latency_is_added_server_side(
    emulator: XnatEmulator, session: xnat.session.XNATSession
) -> None:
    """latency and route_latency delay matching requests by at least that long."""
    emulator.faults.latency = 0.2
    emulator.faults.route_latency = {"/data/projects": 0.1}
    started = time.monotonic()
    session.get("/data/projects/P1", format="json")
    assert time.monotonic() - started >= 0.3


def test_request_budget_then_503(emulator: XnatEmulator, session: xnat.session.XNATSession) -> None:
    """After request_budget requests a client gets 503; another user still gets through."""
    emulator.add_user("other", "pw")
    emulator.faults.request_budget = 2
    session.get("/data/projects", format="json")
    session.get("/data/projects", format="json")
    with pytest.raises(XNATResponseError, match="status 503"):
        session.get("/data/projects", format="json")
    answer = requests.get(f"{emulator.url}/data/projects", auth=("other", "pw"), timeout=10)
    assert 200 == answer.status_code
    emulator.faults.request_budget = None  # let the fixture disconnect


def test_prearchive_receiving_until_polled(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """With prearchive_receiving_polls=2 an entry is RECEIVING for two listings, then READY.
    (xnatpy caches prearchive sessions with their first status: clear the cache to re-poll.)"""
    emulator.faults.prearchive_receiving_polls = 2
    _import(session, make_zip(generate_uid()), destination="/prearchive")
    statuses = []
    for _ in range(3):
        session.prearchive.clearcache()
        statuses += [p.status for p in session.prearchive.sessions(allow_receiving=True)]
    assert ["RECEIVING", "READY", "READY"] == statuses
    assert 1 == len(session.prearchive.sessions())


def test_prearchive_receiving_for_some_seconds(
    emulator: XnatEmulator, session: xnat.session.XNATSession, make_zip: MakeZip
) -> None:
    """With prearchive_receiving_seconds the entry turns READY once the time has passed."""
    emulator.faults.prearchive_receiving_seconds = 0.3
    _import(session, make_zip(generate_uid()), destination="/prearchive")
    assert [] == session.prearchive.sessions()
    deadline = time.monotonic() + 10
    while not session.prearchive.sessions() and time.monotonic() < deadline:
        session.prearchive.clearcache()
        time.sleep(0.05)
    assert ["READY"] == [p.status for p in session.prearchive.sessions()]


def test_upload_conflict_409_switch(
    emulator: XnatEmulator, session: xnat.session.XNATSession
) -> None:
    """upload_conflict_409 makes a duplicate file PUT fail like older XNATs."""
    emulator.faults.upload_conflict_409 = True
    project = session.projects["P1"]
    resource = project.create_resource("CSV")
    resource.upload_data(b"a,b", "t.csv")
    with pytest.raises(XNATUploadError, match="409"):
        resource.upload_data(b"a,b", "t.csv")


def test_admin_endpoint_and_validation(emulator: XnatEmulator) -> None:
    """Faults are set over HTTP (PUT JSON) or from Python; bad values name the switch."""
    url, auth = f"{emulator.url}/data/_emulator/faults", (USER, PASSWORD)
    answer = requests.put(url, data=json.dumps({"latency": 0.05}), auth=auth, timeout=10)
    assert (200, 0.05) == (answer.status_code, emulator.faults.latency)
    answer = requests.put(url, data=json.dumps({"latency": -1}), auth=auth, timeout=10)
    assert 400 == answer.status_code
    assert "latency" in answer.text
    with pytest.raises(ValueError, match="unknown fault 'lag'"):
        emulator.faults.update({"lag": 1})
    requests.delete(url, auth=auth, timeout=10)
    assert 0.0 == emulator.faults.latency


def test_standalone_command_prints_its_url(tmp_path: Path) -> None:
    """python -m pacsman.testing.xnat_emulator prints the URL and serves until SIGTERM."""
    command = [sys.executable, "-m", "pacsman.testing.xnat_emulator", "--data", str(tmp_path)]
    command += ["--project", "DEMO", "--user", "u", "--password", "p"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        answer = requests.get(f"{url}/data/projects?format=json", auth=("u", "p"), timeout=10)
        process.terminate()
        assert 0 == process.wait(timeout=20)
    assert ["DEMO"] == [r["ID"] for r in answer.json()["ResultSet"]["Result"]]
