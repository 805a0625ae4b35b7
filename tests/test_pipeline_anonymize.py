"""`--save --anonymize`: every COMPLETE series de-identified once, leak-free, labelled."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from pydicom import dcmread

from pacsman.cli import main
from pacsman.config import parse_config
from pacsman.jobstore import AnonymizeSeries, JobStore, Run
from pacsman.pipeline import anonymize as _pipeline_anonymize
from pacsman.pipeline.anonymize import anonymize_complete
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from tests.helpers import write_config, write_queryfile
from tests.test_pipeline_push import _anonymize_task, _events

QUERY = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,,\n"


def _run(tmp_path: Path, orthanc: OrthancServer) -> tuple[int, list[dict[str, str]]]:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = write_config(tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
    config.write_text(config.read_text().replace("local:\n", f"local:\n  port: {port}\n", 1))
    queryfile = write_queryfile(tmp_path, QUERY)
    argv = ["-q", str(queryfile), "--save", "--anonymize", "--info", "--config", str(config)]
    status = main(argv)
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        return status, list(csv.DictReader(fh))


def test_save_then_anonymize_every_series(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],  # the de-identify/push process logs to fd 2
) -> None:
    """Labelled rows keep their labels, others get pseudonyms; no original identifier leaks."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    status, rows = _run(tmp_path, demo_orthanc)
    anonymized = tmp_path / "data" / "anonymized"
    files = sorted(anonymized.rglob("*.dcm"))
    assert status == 0
    assert {r["anonymization"] for r in rows} == {"ANONYMIZED"}
    assert sum(int(r["anonymized_instances"]) for r in rows) == len(files) == 36
    assert {p.relative_to(anonymized).parts[:2] for p in files} == {
        ("SUBJ01", "SESS01"),
        ("pacsman_S0001", "pacsman_E00001"),
    }
    for path in files:
        raw = path.read_bytes()
        assert b"DEMO00" not in raw
        assert b"Doe" not in raw
        assert "Müller".encode() not in raw
        assert dcmread(path).PatientIdentityRemoved == "YES"
    assert (tmp_path / "xdg" / "pacsman" / "pacsman.key").stat().st_mode & 0o077 == 0
    capfd.readouterr()
    status, _ = _run(tmp_path, demo_orthanc)
    events = _events(capfd.readouterr().err)
    assert status == 0
    assert "nothing_to_anonymize" in events


class _Tasks:
    """Just enough of a job store: the series to de-identify."""

    def __init__(self, tasks: list[AnonymizeSeries]) -> None:
        self.tasks = tasks

    def series_for_anonymize(self, run: Run) -> list[AnonymizeSeries]:
        return self.tasks


def test_each_study_de_identified_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook fires after the last series of each study, so its push can start at once."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    first = [_anonymize_task("1.1"), _anonymize_task("1.2")]
    second = replace(_anonymize_task("2.1"), study_instance_uid="9.9", line=3)
    events: list[str] = []

    def anonymize_series(store: object, run: object, task: AnonymizeSeries, *rest: object) -> None:
        events.append(task.series_instance_uid)

    monkeypatch.setattr(_pipeline_anonymize, "_anonymize_series", anonymize_series)
    node = {"host": "127.0.0.1", "port": 104, "called_ae_title": "PACS"}
    config = parse_config({"pacs": {"main": node}}, source="test")
    store = cast(JobStore, _Tasks([*first, second]))
    run = Run(1, "q.csv", "2026-01-01T00:00:00", resumed=False)
    worked = anonymize_complete(
        store,
        run,
        config,
        tmp_path,
        project="pacsman",
        on_study_done=lambda: events.append("study done"),
    )
    assert worked == 3
    assert events == ["1.1", "1.2", "study done", "2.1", "study done"]
