"""``pacsman check`` (issue 12, item 7) against real peers: Orthanc, the fake PACS (which
counts the C-MOVEs it gets) and the XNAT emulator driven by ``requests``.

Each line is ``<verdict> <check> <message>``; the exit code is the worst line's.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.errors import EXIT_BAD_INPUT, EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED
from pacsman.testing.fakepacs import FakePacs
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

CHECKS = ["config", "C-ECHO", "C-FIND", "move", "XNAT", "state", "disk"]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """The XNAT emulator with project P1."""
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as running:
        yield running


@pytest.fixture(autouse=True)
def xnat_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """XNAT credentials in the environment; key and mapping table under tmp_path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def configure(
    tmp_path: Path, *, port: int, called: str, local_port: int, xnat: str = "http://127.0.0.1:9"
) -> Path:
    """A config for one PACS node, pacsman's SCP on ``local_port``, and XNAT at ``xnat``."""
    return write_config(
        tmp_path,
        port=port,
        called_ae_title=called,
        local_port=local_port,
        extra=f"xnat:\n  url: {xnat}\n  project: P1\n",
    )


def query_first(config: Path, tmp_path: Path) -> None:
    """``pacsman -q q.csv --info``: the job store then knows DEMO001's series."""
    queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n")
    assert EXIT_OK == main(["-q", str(queryfile), "--info", "--config", str(config)])


def check(
    capsys: pytest.CaptureFixture[str], config: Path, *options: str
) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run ``pacsman check``; return its exit code and {check: (verdict, message)}."""
    capsys.readouterr()
    status = main(["check", "--config", str(config), *options])
    lines = capsys.readouterr().out.splitlines()
    found = {}
    for line in lines[:-1]:
        verdict, name, message = line.split(maxsplit=2)
        found[name] = (verdict, message)
    assert lines[-1] == (
        "every check ok" if status == EXIT_OK else f"some checks need attention (exit {status})"
    )
    return status, found


def test_check_passes_against_orthanc_and_the_emulator(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    emulator: XnatEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every line ok, in order; the move line proves the AE title, address and port."""
    port = free_port()
    demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = configure(
        tmp_path,
        port=demo_orthanc.dicom_port,
        called="DEMOPACS",
        local_port=port,
        xnat=emulator.url,
    )
    query_first(config, tmp_path)
    status, lines = check(capsys, config, "--push", "xnat")
    assert EXIT_OK == status
    assert CHECKS == list(lines)
    assert {"ok"} == {verdict for verdict, _ in lines.values()}
    assert "arrived by C-MOVE to 'PACSMAN'" in lines["move"][1]
    assert f"at this host and port {port}" in lines["move"][1]
    assert "project 'P1' is there" in lines["XNAT"][1]
    assert not (tmp_path / "data" / "DEMO001").exists()  # the one instance went to a temp dir


def test_orthanc_without_a_known_study_proves_nothing(
    tmp_path: Path, demo_orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Orthanc answers 0xC000 to a C-MOVE of an unknown study, known destination or not: a
    warning that says to run --info first (exit 1)."""
    port = free_port()
    demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = configure(tmp_path, port=demo_orthanc.dicom_port, called="DEMOPACS", local_port=port)
    status, lines = check(capsys, config)
    assert EXIT_SOME_FAILED == status
    verdict, message = lines["move"]
    assert "warning" == verdict
    assert "not proved" in message
    assert "0xC000" in message
    assert "pacsman --queryfile Q --info" in message
    assert ("skipped", "not checked: add --push xnat to check it") == lines["XNAT"]


def test_orthanc_that_does_not_know_pacsman_fails_with_the_fix(
    tmp_path: Path, demo_orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A known instance that Orthanc will not send to 'STRANGER' (an AE it does not know):
    the move line fails (exit 3) and says what the PACS and pacsman must know."""
    port = free_port()
    config = write_config(
        tmp_path,
        port=demo_orthanc.dicom_port,
        called_ae_title="DEMOPACS",
        local_ae_title="STRANGER",
        local_port=port,
    )
    query_first(config, tmp_path)
    status, lines = check(capsys, config)
    verdict, message = lines["move"]
    assert (EXIT_FATAL, "FAILED") == (status, verdict)
    assert "answered the C-MOVE with 0xC000" in message
    assert f"The PACS must know AE 'STRANGER' at this host's address and port {port}" in message


def test_one_instance_is_moved_and_counted(
    tmp_path: Path, fake_pacs: Callable[..., FakePacs], capsys: pytest.CaptureFixture[str]
) -> None:
    """With a known series, the move pre-flight is ONE image-level C-MOVE of one instance."""
    port = free_port()
    pacs = fake_pacs(move_destinations={"PACSMAN": ("127.0.0.1", port)})
    config = configure(tmp_path, port=pacs.port, called=pacs.ae_title, local_port=port)
    query_first(config, tmp_path)
    pacs.clear_calls()
    status, lines = check(capsys, config)
    moves = [call for call in pacs.calls if call.startswith("C-MOVE")]
    assert EXIT_OK == status
    assert "ok" == lines["move"][0]
    assert 1 == len(moves)
    assert moves[0].startswith("C-MOVE IMAGE ")
    assert "\\" not in moves[0]  # one SOPInstanceUID


def test_a_pacs_that_does_not_know_pacsman(
    tmp_path: Path, fake_pacs: Callable[..., FakePacs], capsys: pytest.CaptureFixture[str]
) -> None:
    """0xA801 (move destination unknown) is proof: the line fails with the fix (exit 3)."""
    pacs = fake_pacs(move_destinations={})
    config = configure(tmp_path, port=pacs.port, called=pacs.ae_title, local_port=free_port())
    status, lines = check(capsys, config)
    verdict, message = lines["move"]
    assert (EXIT_FATAL, "FAILED") == (status, verdict)
    assert "does not know move destination 'PACSMAN'" in message
    assert "ask its administrator to add AE 'PACSMAN'" in message


def test_a_pacs_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: C-ECHO fails with the fix, C-FIND and the move are skipped, and the
    other checks still run."""
    config = configure(tmp_path, port=free_port(), called="NOBODY", local_port=free_port())
    status, lines = check(capsys, config)
    assert EXIT_FATAL == status
    assert CHECKS == list(lines)
    assert "FAILED" == lines["C-ECHO"][0]
    assert "check that the PACS is running and that pacs.orthanc.host/port" in lines["C-ECHO"][1]
    assert ("skipped", "not tried: the C-ECHO failed") == lines["C-FIND"]
    assert ("ok", "ok") == (lines["state"][0], lines["disk"][0])


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        ("wrong password", EXIT_FATAL, "XNAT answered 401"),
        ("no password", EXIT_BAD_INPUT, "XNAT_PASS is not set"),
        ("no such project", EXIT_FATAL, "project 'P1' does not exist on"),
    ],
)
def test_xnat_faults_are_reported(
    tmp_path: Path,
    fake_pacs: Callable[..., FakePacs],
    emulator: XnatEmulator,
    xnat_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    code: int,
    words: str,
) -> None:
    """Each XNAT fault fails the XNAT line with its fix; the PACS lines are not affected."""
    if fault == "wrong password":
        xnat_env.setenv("XNAT_PASS", "hunter2")
    elif fault == "no password":
        xnat_env.delenv("XNAT_PASS")
    else:
        emulator.faults.route_status = {"/data/projects/P1": 404}
    port = free_port()
    pacs = fake_pacs(move_destinations={"PACSMAN": ("127.0.0.1", port)})
    config = configure(
        tmp_path, port=pacs.port, called=pacs.ae_title, local_port=port, xnat=emulator.url
    )
    status, lines = check(capsys, config, "--push", "xnat")
    verdict, message = lines["XNAT"]
    assert (code, "FAILED") == (status, verdict)
    assert words in message
    assert "hunter2" not in message
    assert "ok" == lines["C-ECHO"][0]


def test_a_mapping_table_that_is_not_a_database(
    tmp_path: Path, fake_pacs: Callable[..., FakePacs], capsys: pytest.CaptureFixture[str]
) -> None:
    """The project's mapping table is damaged: the state line says which file (exit 2)."""
    mapping = tmp_path / "xdg" / "pacsman" / "P1.mapping.sqlite"
    mapping.parent.mkdir(parents=True)
    mapping.write_bytes(b"not a database, just bytes" * 100)
    port = free_port()
    pacs = fake_pacs(move_destinations={"PACSMAN": ("127.0.0.1", port)})
    config = configure(tmp_path, port=pacs.port, called=pacs.ae_title, local_port=port)
    status, lines = check(capsys, config)
    verdict, message = lines["state"]
    assert (EXIT_BAD_INPUT, "FAILED") == (status, verdict)
    assert f"mapping table {mapping}: not a database" in message


def test_a_config_that_does_not_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No config: one line, exit 2; nothing else can be checked."""
    status, lines = check(capsys, tmp_path / "missing.yaml")
    assert EXIT_BAD_INPUT == status
    assert ["config"] == list(lines)
    assert "FAILED" == lines["config"][0]
    assert "missing.yaml" in lines["config"][1]


def test_echo_help_says_only_what_it_proves(capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsman echo --help`` no longer claims the move destination is known."""
    with pytest.raises(SystemExit):
        main(["echo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "both AE titles are known" not in text
    assert "does not prove that the PACS can send to pacsman" in text
    assert "'pacsman check' tests that" in text
