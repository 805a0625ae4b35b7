"""The whole chain: Orthanc -> pacsman (--save --push) -> XNAT emulator, via the real client."""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.errors import FatalError
from pacsman.jobstore import AnonymizeSeries, PushSeries
from pacsman.models import ItemState
from pacsman.pipeline.helper import BackgroundPasses
from pacsman.pipeline.push import _Ready, _sessions
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

QUERY = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,,\n"


def _events(stderr: str) -> list[str]:
    """The structlog event names among the JSON lines of ``stderr`` (pacsman and its child)."""
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]


def _run(tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator) -> int:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = write_config(tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
    text = config.read_text().replace("local:\n", f"local:\n  port: {port}\n", 1)
    config.write_text(text + f"xnat:\n  url: {xnat.url}\n  project: PROJ\n")
    queryfile = write_queryfile(tmp_path, QUERY)
    return main(["-q", str(queryfile), "--save", "--push", "--info", "--config", str(config)])


def test_query_to_xnat_each_session_once_and_complete(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],  # the de-identify/push process logs to fd 2
) -> None:
    """Every session lands once with every file; a rerun pushes nothing."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        status = _run(tmp_path, demo_orthanc, xnat)
        sessions = {s.label: s.file_count for s in xnat.sessions("PROJ")}
        capfd.readouterr()
        again = _run(tmp_path, demo_orthanc, xnat)
        events = _events(capfd.readouterr().err)
        imports = [r for r in xnat.request_log if "services/import" in r.path]
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert (status, again) == (0, 0)
    assert sessions == {"SESS01": 23, "PROJ_E00001": 13}
    assert len(imports) == 2
    assert {r["push"] for r in rows} == {"DONE"}
    assert all(r["xnat_uri"].startswith("/data/") for r in rows)
    assert "nothing_to_push" in events


def _task(series: str, state: ItemState, anonymization: str, files: int) -> PushSeries:
    return PushSeries(
        line=2,
        study_instance_uid="1.2.3",
        series_instance_uid=series,
        state=state,
        anonymization=ItemState(anonymization) if anonymization else None,
        xnat_subject="S1" if anonymization else "",
        xnat_session="E1" if anonymization else "",
        anonymized_instances=files if anonymization else None,
        anonymized_directory=Path("out/anonymized/S1/E1", series[-1]) if anonymization else None,
    )


def _anonymize_task(series: str) -> AnonymizeSeries:
    return AnonymizeSeries(
        pacs="p",
        line=2,
        study_instance_uid="1.2.3",
        series_instance_uid=series,
        series_number=series[-1],
        patient_id="P1",
        subject="S1",
        session="E1",
        raw_directory=Path("out/P1/P1_20240101", series[-1]),
    )


def test_a_study_is_never_pushed_in_part() -> None:
    """A study with one series still incomplete (so not yet labelled) is held back whole."""
    done = _task("1.1", ItemState.COMPLETE, "ANONYMIZED", 10)
    waiting = _task("1.2", ItemState.INCOMPLETE, "", 0)
    assert _sessions([done, waiting]) == ({}, 1)
    finished = _task("1.2", ItemState.COMPLETE, "ANONYMIZED", 5)
    ready = _Ready(Path("out/anonymized/S1/E1"), 15)
    assert _sessions([done, finished]) == ({("S1", "E1"): ready}, 0)


def test_background_push_passes_coalesce_and_end_with_a_last_pass() -> None:
    """Wake-ups during a pass make one more pass; leaving the block makes the last one."""
    started, release = threading.Event(), threading.Event()
    passes: list[int] = []

    def push() -> int:
        passes.append(len(passes))
        started.set()
        release.wait(5)
        return 2

    with BackgroundPasses(push) as pushing:
        pushing.wake()
        assert started.wait(5)
        pushing.wake()  # during the first pass: these two become one more pass
        pushing.wake()
        release.set()
    assert len(passes) in (2, 3)  # the second pass may already have taken the last wake-up
    assert 2 * len(passes) == pushing.worked


def _drive(push: Callable[[], int], action: Callable[[BackgroundPasses], None]) -> None:
    with BackgroundPasses(push) as pushing:
        action(pushing)


def _wake_for_a_while(pushing: BackgroundPasses) -> None:
    for _ in range(500):
        pushing.wake()
        time.sleep(0.01)


def _interrupted(pushing: BackgroundPasses) -> None:
    pushing.wake()
    raise KeyboardInterrupt


def test_background_push_error_is_raised_in_the_owners_thread() -> None:
    """A fatal error in a pass ends the thread and reaches the owner."""

    def push() -> int:
        raise FatalError("XNAT refused the login; check XNAT_USER")

    with pytest.raises(FatalError, match="refused the login"):
        _drive(push, _wake_for_a_while)


def test_background_push_does_not_hold_up_an_error() -> None:
    """Leaving with an exception does not wait for a pass that is under way."""
    blocked = threading.Event()

    def push() -> int:
        blocked.wait(30)
        return 0

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _drive(push, _interrupted)
    assert time.monotonic() - start < 5
    blocked.set()
