"""The PS3.15 data file, action resolution, and project-profile validation."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from pacsman.anonymize import Action, ConfigError, DateMode, Option, load_profile
from pacsman.anonymize.profile import resolve

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _data() -> dict[str, Any]:
    text = resources.files("pacsman.data").joinpath("ps315_profile.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_data_file_records_revision_and_attribution() -> None:
    """The package data names the revisions, credits Innolitics and carries the licence."""
    data = _data()
    assert (data["revision"], data["additions_revision"]) == ("2024b", "2026c")
    assert "Innolitics" in data["attribution"]
    assert "Permission is hereby granted" in data["license"]
    sources = {row["source"] for row in data["attributes"].values()}
    assert sources == {"2024b", "2026c", "pacsman"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not beside the repository")
def test_data_file_is_up_to_date_with_the_shared_table() -> None:
    """Regenerating from shared/data gives the committed file byte for byte."""
    script = REPO / "scripts" / "build_ps315_profile.py"
    output = REPO / "pacsman" / "data" / "ps315_profile.json"
    run = subprocess.run(
        [sys.executable, str(script), "--shared", str(SHARED), "--output", str(output), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("basic", "expected"),
    [
        ("X/Z", Action.EMPTY),
        ("X/D", Action.DUMMY),
        ("Z/D", Action.DUMMY),
        ("X/Z/D", Action.DUMMY),
        ("X/Z/U*", Action.REMAP),
        ("U", Action.REMAP),
    ],
)
def test_compound_actions_resolve_conservatively(basic: str, expected: Action) -> None:
    """Never keep the original; stay present (empty or dummy) for Type 2 / Type 1."""
    assert resolve({"basic": basic}, frozenset()) == expected


def test_options_override_the_basic_action() -> None:
    """A selected option's action wins; between K and C the less retentive C wins."""
    row = _data()["attributes"]["0018700C"]  # DateOfLastDetectorCalibration
    assert resolve(row, frozenset()) == Action.DUMMY
    assert resolve(row, frozenset({Option.RETAIN_DEVICE_IDENTITY})) == Action.KEEP
    both = frozenset({Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})
    assert resolve(row, both) == Action.CLEAN


def test_built_in_default_profile() -> None:
    """Basic profile + modified dates, SeriesDescription cleaned, nothing private kept."""
    profile = load_profile(None)
    assert profile.options == {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
    assert profile.date_mode is DateMode.SHIFT
    assert profile.rule_for(0x0008103E).action is Action.CLEAN  # type: ignore[union-attr]
    assert profile.rule_for(0x00081030).action is Action.REMOVE  # type: ignore[union-attr]
    assert profile.rule_for(0x601E3000).action is Action.REMOVE  # type: ignore[union-attr]
    assert profile.private_tags == frozenset()
    assert profile.revision == "2024b+2026c"


def test_example_profile_loads_and_digest_tracks_content(tmp_path: Path) -> None:
    """config/anonymization.example.yaml is valid; another profile has another digest."""
    example = load_profile(REPO / "config" / "anonymization.example.yaml")
    assert Option.RETAIN_PATIENT_CHARACTERISTICS in example.options
    assert example.rule_for(0x00080080).value == "RESEARCH SITE"  # type: ignore[union-attr]
    other = load_profile(_write(tmp_path, "name: other\n"))
    assert other.digest != example.digest
    assert len(other.digest) == 12


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """One ConfigError lists each bad key with its path and the fix."""
    path = _write(
        tmp_path,
        "colour: blue\n"
        "options: [retain_uid, clean_pixel_data, retain_longitudinal_full_dates,"
        " retain_longitudinal_modified_dates]\n"
        "overrides: {SeriesDescriptin: keep, PatientName: keep, StudyDate: {replace: '2023-01-01'},"
        " ImageComments: blank, '(0029,1010)': keep, StudyInstanceUID: keep}\n"
        "private_tags: [{group: 29, creator: ACME, element: '10'}]\n"
        "relabel: {StudyID: label}\n"
        "burned_in: {accept: [us]}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    text = str(caught.value)
    assert text.startswith("14 problem(s) in the config:")
    for expected in (
        "key 'colour': unknown key; use one of: version, name, options",
        "key 'options[0]': 'retain_uid' is not a PS3.15 option; use one of:",
        "key 'options[1]': 'clean_pixel_data' is not supported: pacsman never alters pixel",
        "key 'options': both date options are selected; choose one of",
        "key 'overrides.SeriesDescriptin': 'SeriesDescriptin' is not a DICOM attribute;",
        "key 'overrides.PatientName': cannot be overridden: it always becomes the subject",
        "key 'overrides.StudyDate': '2023-01-01' is not a valid DA",
        "key 'overrides.ImageComments': 'blank' is not an action; use keep, remove, clean",
        "key 'overrides.(0029,1010)': private tags cannot be overridden; list private",
        "key 'overrides.StudyInstanceUID': cannot be overridden: UIDs are all remapped",
        "key 'private_tags[0].group': 29: quote 4 hex digits, e.g. '0029'",
        "key 'private_tags': listed without the option; add retain_safe_private",
        "key 'relabel.StudyID': 'label': use 'session' or 'remove'",
        "key 'burned_in.accept[0]': 'us': use a modality code such as US",
    ):
        assert f"{path}: {expected}" in text


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported with its line."""
    path = _write(tmp_path, "options:\n  - a\n b: [\n")
    with pytest.raises(ConfigError, match=r"profile.yaml:3: not valid YAML"):
        load_profile(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A profile path that does not exist says so."""
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the profile"):
        load_profile(tmp_path / "nope.yaml")
