"""Generated from the package's PS3.15 Table E.1-1 data: one case per basic-profile row.

Each case plants a value of the attribute's VR at the top level of a minimal instance,
de-identifies it with the basic profile only (no option), and checks the resolved action.
The expected actions are derived here from the table's letters, independently of the engine:
pacsman's own rows add K (the keep-list) and C (Type 1 attributes, cleaned), and the
``required`` rows read the table's X as Z or D (Type 1 or 2 in an IOD).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pacsman.anonymize import Deidentifier, Profile, load_profile

TABLE: dict[str, Any] = json.loads(
    resources.files("pacsman.data").joinpath("ps315_profile.json").read_text("utf-8")
)
ROWS = sorted(TABLE["attributes"].items())
#: Conservative, IOD-valid resolution of the compound actions (see profile.py).
EXPECTED = {"X": "X", "Z": "Z", "D": "D", "U": "U", "X/Z": "Z", "X/D": "D", "Z/D": "D"}
EXPECTED |= {"X/Z/D": "D", "X/Z/U*": "U", "K": "K", "C": "C"}
REQUIRED = {tag: row["action"] for tag, row in TABLE["required"].items()}
PLANTED_UID = "1.2.826.0.1.3680043.8.498.77"
SAMPLES: dict[str, Any] = {
    "AE": "PLANTAE",
    "AS": "045Y",
    "CS": "PLANTED",
    "DA": "20200115",
    "DS": "12.5",
    "DT": "20200115101010",
    "FD": 1.5,
    "FL": 1.5,
    "IS": "42",
    "LO": "Planted Lo",
    "LT": "planted text",
    "OB": b"\x01\x02",
    "OW": b"\x01\x02",
    "PN": "Planted^Person",
    "SH": "PLANTSH",
    "SL": 7,
    "SS": 7,
    "ST": "planted text",
    "TM": "101010",
    "UC": "planted",
    "UI": PLANTED_UID,
    "UL": 7,
    "UN": b"planted!",
    "UR": "http://planted.example",
    "US": 7,
    "UT": "planted text",
}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _planted(tag: int, vr: str) -> Any:
    if vr == "SQ":
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", "planted"
        return Sequence([item])
    return SAMPLES[vr]


def _instance(tag: int, vr: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if tag >> 16 == 0x0002:
        ds.file_meta.add_new(tag, vr, _planted(tag, vr))
    else:
        ds.add_new(tag, vr, _planted(tag, vr))
    return ds


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Deidentifier:
    """An engine with the basic profile only: no option, no override."""
    path = tmp_path_factory.mktemp("profile") / "basic.yaml"
    path.write_text("name: basic\n", encoding="utf-8")
    profile: Profile = load_profile(path)
    return Deidentifier(profile, key=b"k" * 32, project="TABLE")


def _empty(value: Any) -> bool:
    if value is None:
        return True
    return hasattr(value, "__len__") and len(value) == 0


def _check(ds: Dataset, tag: int, vr: str, expected: str) -> None:
    holder = ds.file_meta if tag >> 16 == 0x0002 else ds
    if expected == "X":
        assert tag not in holder
        return
    assert tag in holder
    value = holder[tag].value
    if expected == "Z":
        assert _empty(value)
    elif expected in ("K", "C"):  # kept, or cleaned of PHI (the planted values have none)
        assert value == _planted(tag, vr)
    elif vr == "SQ":
        assert len(value) == 1  # D / U on a sequence: items kept, walked by the profile
    elif expected == "U":
        assert str(value).startswith("2.25.")
    else:
        assert not _empty(value)
        assert value != _planted(tag, vr)


_RELABELLED = {0x00100010: "S01", 0x00100020: "S01", 0x00200010: "E01", 0x00080050: ""}
#: Command-group elements have no place in a data set: the engine always removes them.
_COMMAND_GROUP = 0x0000


@pytest.mark.parametrize(("tag_id", "row"), ROWS, ids=[tag for tag, _ in ROWS])
def test_basic_profile_row(basic: Deidentifier, tag_id: str, row: dict[str, Any]) -> None:
    """The row's basic-profile action (compounds resolved conservatively) is applied."""
    tag = int(tag_id, 16)
    vr = _vr(tag)
    ds = _instance(tag, vr)
    basic.deidentify_dataset(ds, subject="S01", session="E01")
    if tag in _RELABELLED:
        assert _RELABELLED[tag] == ds[tag].value
    elif tag >> 16 == _COMMAND_GROUP:
        assert tag not in ds
    else:
        _check(ds, tag, vr, REQUIRED.get(tag_id, EXPECTED[row["basic"]]))


def test_every_basic_action_is_covered() -> None:
    """The table uses only the actions the generated cases know how to check."""
    used = {row["basic"] for _, row in ROWS}
    assert used <= set(EXPECTED)
    assert len(ROWS) >= 650
