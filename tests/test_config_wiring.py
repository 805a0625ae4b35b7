"""Config warnings and per-node character sets reach `validate` and the run (items 5 and 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.testing.fakepacs import FakePacs
from tests.helpers import write_queryfile

CONFIG = """\
local: {{ae_title: PACSMAN, bind_host: 0.0.0.0, port: {local_port}}}
pacs:
  latin: {{host: 127.0.0.1, port: {port}, called_ae_title: {ae}, character_set: ISO_IR 100}}
xnat: {{url: 'http://xnat.example.org'}}
store_root: {directory}/data
jobstore: {directory}/jobs.sqlite
"""


def _config(tmp_path: Path, port: int = 4242, ae: str = "X") -> Path:
    path = tmp_path / "pacsman.yaml"
    text = CONFIG.format(port=port, ae=ae, local_port=port + 1, directory=tmp_path)
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_config_warnings_and_checks_character_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pacsman validate` names bind_host and the http URL, and refuses what 'latin' can't send."""
    config = _config(tmp_path)
    good = write_queryfile(tmp_path, "PatientName\nMüller\n", name="good.csv")
    assert main(["validate", str(good), "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"{config}:1: warning: local.bind_host: '0.0.0.0' makes the Storage SCP" in err
    assert f"{config}:4: warning: xnat.url: 'http://xnat.example.org' is plain http" in err
    bad = write_queryfile(tmp_path, "PatientName\n王\n", name="bad.csv")
    assert main(["validate", str(bad), "--config", str(config)]) == 2
    assert f"{bad}:2:1: column 'PatientName': character 1 cannot be sent to PACS node 'latin'" in (
        capsys.readouterr().err
    )


def test_run_logs_config_warnings(
    fake_pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """A run logs each config warning as a `config_warning` event (the console is JSON here)."""
    pacs: FakePacs = fake_pacs()
    config = _config(tmp_path, pacs.port, pacs.ae_title)
    queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n")
    assert main(["--queryfile", str(queryfile), "--info", "--config", str(config)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warned = [json.dumps(e) for e in events if e["event"] == "config_warning"]
    assert len(warned) == 2
    assert "local.bind_host" in warned[0]
    assert "xnat.url" in warned[1]
