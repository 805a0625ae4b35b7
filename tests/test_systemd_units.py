"""Every systemd unit pacsman ships passes ``systemd-analyze verify`` and ``security``.

``verify`` runs against a scratch root holding the system's own units, the unit under test
and a stub at each absolute path its Exec lines name (the venv pacsman is installed into
does not exist on a test machine).  ``security --offline=true`` must rate the unit 2.0 or
better while the network stays open: no ``PrivateNetwork=``, and AF_INET, AF_INET6 and
AF_UNIX allowed.  The one-shot unit's restart policy is pinned too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted(
    p for suffix in ("service", "socket", "timer", "path") for p in ROOT.glob(f"config/*.{suffix}")
)
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    ANALYZE is None or SYSTEM_UNITS is None,
    reason="systemd-analyze or the system's units are missing (scripts/install.sh installs "
    "Debian's systemd package)",
)


def _settings(unit: Path) -> dict[str, list[str]]:
    """``Key -> [values]`` over all sections (systemd allows a key to repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _executables(unit: Path) -> list[str]:
    """The absolute program paths of the unit's Exec*= lines (prefixes like ``-`` dropped)."""
    programs = []
    for key, values in _settings(unit).items():
        if key.startswith("Exec"):
            programs += [v.lstrip("-@:+!").split()[0] for v in values if v]
    return programs


def _scratch_root(tmp_path: Path, unit: Path) -> Path:
    assert SYSTEM_UNITS is not None
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for program in _executables(unit):
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def test_units_are_shipped() -> None:
    """pacsman ships its one-shot unit, so the checks below have something to check."""
    assert ROOT / "config" / "pacsman@.service" in UNITS


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_verify(unit: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit without a single warning."""
    assert ANALYZE is not None
    root = _scratch_root(tmp_path, unit)
    done = subprocess.run(
        [ANALYZE, "verify", "--man=no", f"--root={root}", f"/etc/systemd/system/{unit.name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"], ids=lambda p: p.name)
def test_security_exposure(unit: Path) -> None:
    """``systemd-analyze security --offline=true`` rates the unit 2.0 or better."""
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"], ids=lambda p: p.name)
def test_network_stays_open(unit: Path) -> None:
    """PACS nodes, XNAT and the Storage SCP are anywhere: IPv4, IPv6 and local sockets."""
    settings = _settings(unit)
    assert "PrivateNetwork" not in settings
    assert "IPAddressDeny" not in settings
    families = " ".join(settings["RestrictAddressFamilies"]).split()
    assert not any(f.startswith("~") for f in families)
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"], ids=lambda p: p.name)
def test_runs_as_its_own_user_from_an_absolute_path(unit: Path) -> None:
    """A dedicated user, state under StateDirectory=pacsman, an absolute ExecStart."""
    settings = _settings(unit)
    assert settings["User"] == ["pacsman"]
    assert settings["StateDirectory"] == ["pacsman"]
    assert settings["StateDirectoryMode"] == ["0700"]
    assert settings["UMask"] == ["0077"]
    assert all(p.startswith("/") and not p.endswith("/env") for p in _executables(unit))


def test_one_shot_restart_policy() -> None:
    """Exit 3 is retried after a minute; exits 1 and 2 (a person must look) never are."""
    settings = _settings(ROOT / "config" / "pacsman@.service")
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartSec"] == ["60"]
    assert set(" ".join(settings["RestartPreventExitStatus"]).split()) == {"1", "2"}
    success = " ".join(settings.get("SuccessExitStatus", [])).split()
    assert "1" not in success
    assert set(success) <= {"130"}
