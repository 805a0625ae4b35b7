"""``pacsman init [PATH]``: the commented example config, shipped as package data (issue 12,
item 10).

The package's copy (pacsman/data/pacsman.example.yaml) is the file ``init`` writes; it must
stay identical to config/pacsman.example.yaml, the one the README and config/README.md name.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import fnmatch
import os
import stat
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "pacsman.example.yaml"
SHIPPED = ROOT / "pacsman" / "data" / "pacsman.example.yaml"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave files world-readable: init must set 0600 itself."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_shipped_example_is_the_documented_one() -> None:
    """The package data is byte for byte config/pacsman.example.yaml."""
    assert EXAMPLE.read_bytes() == SHIPPED.read_bytes(), (
        "config/pacsman.example.yaml changed: copy it to the package with "
        "'cp config/pacsman.example.yaml pacsman/data/pacsman.example.yaml'"
    )


def test_example_is_package_data() -> None:
    """pyproject.toml ships the file in wheels, and the installed package can read it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["pacsman"]
    assert any(fnmatch.fnmatch("data/pacsman.example.yaml", p) for p in patterns)
    shipped = resources.files("pacsman").joinpath("data", "pacsman.example.yaml")
    assert SHIPPED.read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8")


def test_init_writes_the_example_0600_and_says_what_next(
    tmp_path: Path, loose_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """PATH gets the example, mode 0600, in a folder made 0700; the next step is printed;
    the file is a valid config as it stands."""
    path = tmp_path / "etc" / "pacsman.yaml"
    assert 0 == main(["init", str(path)])
    assert EXAMPLE.read_bytes() == path.read_bytes()
    assert 0o600 == _mode(path)
    assert 0o700 == _mode(path.parent)
    out = capsys.readouterr().out
    assert f"wrote {path} (mode 0600)" in out
    assert f"then run: pacsman check --config {path}\n" in out
    assert "orthanc" == load_config(path).default_pacs


def test_init_default_path_is_where_pacsman_looks_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without PATH: ./config/pacsman.yaml, so the next command needs no --config."""
    monkeypatch.chdir(tmp_path)
    assert 0 == main(["init"])
    assert EXAMPLE.read_bytes() == (tmp_path / "config" / "pacsman.yaml").read_bytes()
    assert capsys.readouterr().out.endswith("then run: pacsman check\n")


def test_init_never_overwrites_without_force(
    tmp_path: Path, loose_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file is kept (exit 2, the fix named); --force replaces it, still 0600."""
    path = tmp_path / "pacsman.yaml"
    path.write_text("pacs: {mine: {host: h, port: 104, called_ae_title: X}}\n")
    path.chmod(0o644)
    assert 2 == main(["init", str(path)])
    assert "pacs: {mine" in path.read_text()
    err = capsys.readouterr().err
    assert f"pacsman: init: {path} already exists" in err
    assert "add --force to replace it" in err
    assert 0 == main(["init", "--force", str(path)])
    assert EXAMPLE.read_bytes() == path.read_bytes()
    assert 0o600 == _mode(path)
    assert [path.name] == [p.name for p in tmp_path.iterdir()]  # no temporary file left


def test_init_refuses_a_folder_and_a_dangling_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder is no config file; a link pointing nowhere is not followed to create one."""
    assert 2 == main(["init", str(tmp_path)])
    assert "is a folder; give a file" in capsys.readouterr().err
    link = tmp_path / "link.yaml"
    link.symlink_to(tmp_path / "elsewhere.yaml")
    assert 2 == main(["init", str(link)])
    assert not (tmp_path / "elsewhere.yaml").exists()


def test_init_config_option_is_path(tmp_path: Path) -> None:
    """``--config PATH`` names the same file as PATH (every command has --config)."""
    path = tmp_path / "c.yaml"
    assert 0 == main(["init", "--config", str(path)])
    assert path.is_file()
    assert 2 == main(["init", str(tmp_path / "a.yaml"), "--config", str(path)])
