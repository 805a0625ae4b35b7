"""A command line that explains itself (issue 12, item 9).

``pacsman --help`` lists every command with one line; an unknown command names the closest
one; every command has a description, ``--config``, ``--log-level`` and ``--version``;
``--session`` is the one name for a session (``--experiment`` still works); ``--push``
implies ``--save`` and ``--anonymize``; the info CSV is documented as always written.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pacsman import __version__
from pacsman.cli import COMMANDS, main
from pacsman.errors import InputError
from pacsman.pipeline import RunOptions
from pacsman.push.cli import xnat_main
from pacsman.testing.xnat_emulator import XnatEmulator

#: Every command issue 12 asks ``pacsman --help`` to list.
EVERY_COMMAND = (
    "validate",
    "echo",
    "check",
    "status",
    "runs",
    "report",
    "anonymize",
    "nifti",
    "mapping",
    "upload",
    "xnat",
    "init",
    "serve",
    "submit",
    "jobs",
    "cancel",
    "pause",
    "resume",
    "retry-failed",
    "jobstore",
    "dqr",
)
#: The argv that reaches each command's own parser (commands with subcommands: each one).
LEAVES = [
    *([name] for name in EVERY_COMMAND if name not in ("xnat", "mapping", "jobstore")),
    ["xnat", "upload-resource"],
    ["xnat", "download"],
    ["mapping", "export"],
    ["mapping", "import"],
    ["jobstore", "migrate"],
]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert 0 == stopped.value.code
    return capsys.readouterr().out


def test_help_lists_every_command_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsman --help`` ends with one line per command: its name and what it does."""
    text = _help([], capsys)
    for name in EVERY_COMMAND:
        line = re.search(rf"^  {name} +(\S.*)$", text, re.MULTILINE)
        assert line is not None, f"{name} missing from pacsman --help"
        assert COMMANDS[name] == line.group(1)
    assert set(EVERY_COMMAND) == set(COMMANDS)


def test_help_gives_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """Every exit code, 4 and 130 included, is explained at the end of ``pacsman --help``."""
    text = " ".join(_help([], capsys).split())
    for code in ("0 every row done", "1 some rows", "2 bad input", "3 fatal", "4 ", "130 "):
        assert code in text


@pytest.mark.parametrize("argv", LEAVES, ids=" ".join)
def test_every_command_has_description_config_log_level_version(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command's help has a description and the three common options."""
    text = _help(argv, capsys)
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: pacsman {' '.join(argv)}")
    description = rest.split("\n\n")[0]
    assert not description.startswith(("positional arguments", "options")), text
    for option in ("--config", "--log-level", "--version"):
        assert option in text


@pytest.mark.parametrize("argv", [[], *LEAVES, ["xnat"], ["mapping"]], ids=" ".join)
def test_every_command_says_its_version(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--version`` works wherever it is given."""
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--version"])
    assert 0 == stopped.value.code
    assert f"pacsman {__version__}\n" == capsys.readouterr().out


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("valdate", "validate"), ("anonymise", "anonymize"), ("stauts", "status"), ("inti", "init")],
)
def test_unknown_command_names_the_closest(
    typed: str, meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo is not taken for the pipeline (no '--queryfile required'): exit 2, a hint."""
    assert 2 == main([typed, "q.csv"])
    err = capsys.readouterr().err
    assert f"pacsman: unknown command '{typed}'; did you mean '{meant}'?\n" == err


def test_unknown_command_without_a_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing close: the commands are listed; a bare query file gets the --queryfile hint."""
    assert 2 == main(["frobnicate"])
    assert "the commands are validate, echo, " in capsys.readouterr().err
    assert 2 == main(["cohort.csv"])
    assert "pacsman --queryfile cohort.csv --info" in capsys.readouterr().err


def test_no_arguments_print_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsman`` alone shows what it can do (on stderr, exit 2)."""
    assert 2 == main([])
    assert "commands ('pacsman COMMAND --help' for each):" in capsys.readouterr().err


def test_help_gives_formats_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Dates say their format; options with defaults say them; --out_directory names the
    images, --push what it implies, --info that the info CSV is always written."""
    download = " ".join(_help(["xnat", "download"], capsys).split())
    assert "first session date, YYYYMMDD or YYYY-MM-DD, included (default: no limit)" in download
    run = " ".join(_help([], capsys).split())
    assert "the retrieved series (DIR/<subject>/<session>/<series>/)" in run
    assert "(default: store_root from the config, whose default is ./data)" in run
    assert "Implies --save and --anonymize" in run
    assert "Every run writes the info CSV" in run
    assert "1-64 (default: 1)" in run
    assert "(default: log.level from the config, else info)" in run


def _example_config(tmp_path: Path) -> Path:
    path = tmp_path / "pacsman.yaml"
    assert 0 == main(["init", str(path)])
    return path


def _options_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> RunOptions:
    """The RunOptions the pipeline would get for ``argv`` (nothing is sent)."""
    seen: list[RunOptions] = []

    def capture(options: RunOptions, *_: object) -> None:
        seen.append(options)
        raise InputError("stopped by the test")

    monkeypatch.setattr("pacsman.pipeline.run_queryfile", capture)
    assert 2 == main(argv)
    return seen[0]


def test_push_implies_save_and_anonymize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--push`` alone retrieves and de-identifies; --adopt-existing is accepted with it."""
    config = str(_example_config(tmp_path))
    argv = ["--queryfile", "q.csv", "--push", "--config", config, "--adopt-existing"]
    options = _options_of(argv, monkeypatch)
    assert (True, True, "xnat") == (options.save, options.deidentify, options.push)
    only_info = _options_of(["-q", "q.csv", "--info", "--config", config], monkeypatch)
    assert (False, False, None) == (only_info.save, only_info.deidentify, only_info.push)
    capsys.readouterr()
    assert 2 == main(["-q", "q.csv", "--info", "--new-run", "--config", config])
    assert "use it with --save or --push" in capsys.readouterr().err


def test_session_and_its_alias_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``xnat upload-resource --session`` names the session; ``--experiment`` is the same
    option (the emulator holds no session, so XNAT's answer names the label it was asked)."""
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    config = tmp_path / "pacsman.yaml"
    with XnatEmulator(tmp_path / "xnat", projects=["P1"]) as emulator:
        config.write_text(
            textwrap.dedent(f"""\
            pacs:
              main: {{host: 127.0.0.1, port: 104, called_ae_title: PACS}}
            xnat: {{url: {emulator.url}, project: P1}}
            push: {{max_attempts: 2, backoff_max: 0.05}}
            """),
            encoding="utf-8",
        )
        (tmp_path / "notes.txt").write_text("derived")
        for spelling, session in (("--session", "SESS1"), ("--experiment", "SESS2")):
            argv = ["upload-resource", "--subject", "SUBJ1", spelling, session, "--resource"]
            argv += ["NOTES", "--base", str(tmp_path), "--config", str(config)]
            with pytest.raises(InputError, match=f"no experiment '{session}' under subject"):
                xnat_main([*argv, str(tmp_path / "notes.txt")])
