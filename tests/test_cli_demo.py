"""``scripts/demo.py`` writes only into its ``--workdir`` (issue 12, item 12).

The full demo is the README's first command: a throw-away Orthanc, the XNAT emulator and
``pacsman --queryfile queryfiles/example.csv --save --push --info``.  It is run once here
from a scratch folder, and the checkout must hold no new file afterwards.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pacsman.testing.orthanc import ORTHANC_BINARY, orthanc_available
from tests.conftest import require_peer

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
_CACHES = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _checkout_files() -> set[Path]:
    """Every file in the checkout, leaving out git's and the tools' caches."""
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in _CACHES]
        found.update(Path(folder) / name for name in files)
    return found


def _demo(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_refuses_a_workdir_it_did_not_write(tmp_path: Path) -> None:
    """A folder holding someone's files is never emptied: the demo stops before starting."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    done = _demo(tmp_path, "--workdir", str(mine))
    assert 1 == done.returncode
    assert "holds files an earlier demo did not write" in done.stderr
    assert "mine" == (mine / "keep.txt").read_text()


@pytest.mark.orthanc
def test_demo_runs_end_to_end_inside_its_workdir(tmp_path: Path) -> None:
    """Every row DONE on XNAT, exit 0; all output under ./demo-work of the folder it runs
    in; the checkout gains no file."""
    require_peer(orthanc_available(), f"Orthanc ({ORTHANC_BINARY})", "apt install orthanc")
    before = _checkout_files()
    first = _demo(tmp_path)
    assert 0 == first.returncode, first.stdout[-2000:] + first.stderr[-2000:]
    with (tmp_path / "demo-work" / "data" / "example_info.csv").open(encoding="utf-8") as info:
        series = list(csv.DictReader(info))
    assert {"2", "3", "4"} == {s["row"] for s in series}
    assert {"DONE"} == {s["push"] for s in series}
    # Source files (.py, .md) are left out: people may be editing the checkout meanwhile,
    # and the demo writes none.
    new = {p for p in _checkout_files() - before if p.suffix not in (".py", ".md")}
    assert set() == new


def test_demo_empties_only_its_own_workdir(tmp_path: Path) -> None:
    """An earlier demo's workdir (it holds the marker) is emptied; a new one is made 0700."""
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    work = demo._prepare(tmp_path / "w")
    assert 0o700 == stat.S_IMODE(work.stat().st_mode)
    (work / "stale.txt").write_text("from the first run")
    assert work == demo._prepare(tmp_path / "w")
    assert [demo.MARKER] == [p.name for p in work.iterdir()]
