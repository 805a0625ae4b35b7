"""``pacsman --queryfile q.csv --save --push``, killed with SIGKILL in the middle of the push,
then run again: every session ends on XNAT exactly once, under its subject, with every file.

The command runs as a user runs it: a subprocess whose de-identify/push helper process shares
its process group, so one ``killpg`` takes both down.  The PACS is a real Orthanc; XNAT is the
emulator, served from this test process, so the kill cannot touch it.  The emulator answers
imports slowly, which leaves a window in which one session has landed and the next one is
being imported: that is when pacsman is killed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pacsman.testing.net import free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import kill_process_group, write_config, write_queryfile

PROJECT = "PROJ"
#: Seconds the emulator waits before applying each import: the window for the kill.
IMPORT_SECONDS = 0.4
#: The labels pacsman's mapping table gives the first study of a row without labels.
PSEUDONYMS = (f"{PROJECT}_S0001", f"{PROJECT}_E00001")


def _study(patient: str, accession: str, date: str, sizes: tuple[int, ...]) -> StudySpec:
    """A small MR study: one series per entry of ``sizes`` (instances), 16x16 pixels."""
    series = tuple(
        SeriesSpec(
            series_number=n, series_description=f"S{n}", n_instances=size, rows=16, columns=16
        )
        for n, size in enumerate(sizes, start=1)
    )
    return StudySpec(
        patient_id=patient,
        patient_name=f"Resume^{patient}",
        study_date=date,
        accession_number=accession,
        study_description="push resume",
        series=series,
    )


#: (Subject, Session, study): two sessions of one subject, and one row left to the pseudonyms.
COHORT: tuple[tuple[str, str, StudySpec], ...] = (
    ("SUBJ01", "SESS01A", _study("RESUME01", "RA1", "20240101", (3, 2))),
    ("SUBJ01", "SESS01B", _study("RESUME01", "RA2", "20240202", (2, 4, 2))),
    ("SUBJ02", "SESS02", _study("RESUME02", "RB1", "20240303", (4, 3))),
    ("SUBJ03", "SESS03", _study("RESUME03", "RC1", "20240404", (2, 2, 3))),
    ("", "", _study("RESUME04", "RD1", "20240505", (3, 3))),
)


def _queryfile(directory: Path) -> Path:
    lines = ["PatientID,StudyInstanceUID,Subject,Session"]
    lines += [f"{s.patient_id},{s.study_instance_uid},{sub},{ses}" for sub, ses, s in COHORT]
    return write_queryfile(directory, "\n".join(lines) + "\n")


def _command(tmp_path: Path, orthanc: OrthancServer, xnat_url: str) -> list[str]:
    """The user's command line, with a config for this Orthanc and this emulator."""
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    extra = f"""\
    xnat: {{url: "{xnat_url}", project: {PROJECT}}}
    push: {{backoff_max: 0.5}}
    """
    config = write_config(
        tmp_path,
        port=orthanc.dicom_port,
        called_ae_title=orthanc.ae_title,
        local_port=port,
        extra=extra,
    )
    queryfile = _queryfile(tmp_path)
    command = [sys.executable, "-m", "pacsman", "--queryfile", str(queryfile)]
    return [*command, "--save", "--push", "--config", str(config)]


def _environment(tmp_path: Path) -> dict[str, str]:
    """Credentials; key, mapping table, home and temporary zips all under ``tmp_path``."""
    for name in ("xdg", "home", "tmp"):
        (tmp_path / name).mkdir()
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
    }


def _imports_started(log: Path) -> set[str]:
    """Session labels whose import pacsman has started (its ``xnat_import`` log events)."""
    started = set()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line still being written, or not a log line
            continue
        if isinstance(event, dict) and event.get("event") == "xnat_import":
            started.add(str(event["session"]).rsplit("/", 1)[-1])
    return started


def _await_mid_push(victim: subprocess.Popen[bytes], xnat: XnatEmulator, log: Path) -> set[str]:
    """Wait until XNAT holds at least one session while another one's import is under way;
    return the sessions XNAT holds then.
    """
    held: set[str] = set()

    def mid_push() -> bool:
        if victim.poll() is not None:
            pytest.fail(f"pacsman ended (exit {victim.returncode}) before it could be killed")
        held.clear()
        held.update(s.label for s in xnat.sessions(PROJECT))
        if len(held) == len(COHORT):
            pytest.fail(f"every session landed before the kill; raise IMPORT_SECONDS ({held})")
        return bool(held) and bool(_imports_started(log) - held)

    wait_for(mid_push, timeout=90, what="a session on XNAT and another one's import under way")
    return held


def _kill_mid_push(
    command: list[str], env: dict[str, str], xnat: XnatEmulator, log: Path
) -> set[str]:
    """Run ``command``, SIGKILL its whole process group mid-push; return what XNAT held then."""
    with log.open("wb") as sink:
        victim = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return _await_mid_push(victim, xnat, log)
    finally:
        kill_process_group(victim)


def _expected(orthanc: OrthancServer) -> dict[str, tuple[str, str, dict[str, int]]]:
    """StudyInstanceUID -> (subject, session, files per scan), the file counts from Orthanc."""
    held = orthanc.series_instance_counts()
    expected = {}
    for subject, session, spec in COHORT:
        scans = {str(s.series_number): held[spec.series_instance_uid(s)] for s in spec.series}
        labels = (subject, session) if subject else PSEUDONYMS
        expected[spec.study_instance_uid] = (*labels, scans)
    return expected


def _info_rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_kill_9_during_push_then_resume_pushes_each_session_once_and_complete(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    """kill -9 of pacsman and its helper while one session is on XNAT and the next is being
    imported; the same command run again exits 0, and XNAT holds every session exactly once,
    under the right subject, with every file Orthanc holds; sessions already there at the kill
    are never imported again; the summary does not claim there was nothing to do, and the info
    CSV says DONE with the session's URI for every series.
    """
    for _, _, spec in COHORT:
        orthanc.upload_datasets(iter_datasets(spec))
    with XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)) as xnat:
        xnat.faults.route_latency = {"/data/services/import": IMPORT_SECONDS}
        command, env = _command(tmp_path, orthanc, xnat.url), _environment(tmp_path)
        held_at_kill = _kill_mid_push(command, env, xnat, tmp_path / "killed.log")
        resumed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        sessions = xnat.sessions(PROJECT)
        imports = Counter(
            r.query.partition("session=")[2].partition("&")[0]
            for r in xnat.request_log
            if r.path == "/data/services/import"
        )
        prearchive = xnat.prearchive()
    expected = _expected(orthanc)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout
    assert "nothing to do" not in resumed.stdout  # it pushed the sessions the kill left
    assert sorted(ses for _, ses, _ in expected.values()) == sorted(s.label for s in sessions)
    assert {ses: (sub, scans) for sub, ses, scans in expected.values()} == {
        s.label: (s.subject, dict(s.scan_file_counts)) for s in sessions
    }
    assert {label: 1 for label in held_at_kill} == {label: imports[label] for label in held_at_kill}
    assert prearchive == []
    _assert_info_says_done(tmp_path, expected)


def _assert_info_says_done(
    tmp_path: Path, expected: dict[str, tuple[str, str, dict[str, int]]]
) -> None:
    """Every series row of the info CSV: COMPLETE, ANONYMIZED, DONE, with its session's URI."""
    rows = _info_rows(tmp_path)
    assert len(rows) == sum(len(scans) for _, _, scans in expected.values())
    for row in rows:
        subject, session, _ = expected[row["StudyInstanceUID"]]
        uri = f"/data/projects/{PROJECT}/subjects/{subject}/experiments/{session}"
        assert (row["state"], row["anonymization"], row["push"], row["xnat_uri"]) == (
            "COMPLETE",
            "ANONYMIZED",
            "DONE",
            uri,
        )
