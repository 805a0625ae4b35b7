"""pacsman.dicom.hooks: on a pynetdicom other than the checked one, the fast paths stand down.

The version check is forced to fail; C-FIND, a C-MOVE into pacsman's Storage SCP and a C-GET
then run on plain pynetdicom against a real Orthanc, and must give what the fast paths give,
byte for byte, after exactly one warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID
from structlog.testing import capture_logs

from pacsman.config import PacsNode
from pacsman.dicom import hooks
from pacsman.dicom._dimse_fast import DimseChannel
from pacsman.dicom.client import DicomPeer, StorageRole
from pacsman.dicom.scp import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    InstanceWriter,
    StorageSCP,
    accelerate,
)
from pacsman.models import QueryRow, StudyMatch
from pacsman.query import FindAssociation, query_row
from pacsman.retrieve import RetrieveAssociation, SeriesRequest
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES
from pacsman.throttle import Courtesy, RetryPolicy

FAST = RetryPolicy(max_attempts=2, initial=0.01, cap=0.05, jitter=0.01)
WARNING = "pynetdicom_version_unchecked"
UNCHECKED = "0.0.0"


@pytest.fixture
def fast_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``fast_paths(False)`` makes the installed pynetdicom look unchecked; True undoes it."""
    real = hooks.installed_pynetdicom

    def choose(enabled: bool) -> None:
        monkeypatch.setattr(hooks, "installed_pynetdicom", real if enabled else lambda: UNCHECKED)
        hooks.fast_paths_enabled.cache_clear()

    hooks.fast_paths_enabled.cache_clear()
    yield choose
    hooks.fast_paths_enabled.cache_clear()  # monkeypatch restores the real check next


class Spy:
    """Counts the calls of a callable attribute, passing them through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


def _peer(
    orthanc: OrthancServer, *, local_port: int = 0, method: Literal["move", "get"] = "move"
) -> DicomPeer:
    node = PacsNode(
        "orthanc", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title, retrieve_method=method
    )
    return DicomPeer(node, "PACSMAN", local_port)


def _query_all(orthanc: OrthancServer) -> list[StudyMatch]:
    """Every demo study, by PatientID and by a wildcard name, on one association."""
    studies: list[StudyMatch] = []
    with FindAssociation(_peer(orthanc), retry=FAST) as association:
        for spec in DEMO_STUDIES:
            studies += query_row(association, QueryRow(line=2, keys={"PatientID": spec.patient_id}))
        studies += query_row(association, QueryRow(line=3, keys={"PatientName": "*"}))
    return studies


def _requests(root: Path) -> list[SeriesRequest]:
    """Every series of every demo study, each to ``root/<SeriesInstanceUID>``."""
    return [
        SeriesRequest(
            spec.study_instance_uid,
            spec.series_instance_uid(series),
            root / spec.series_instance_uid(series),
        )
        for spec in DEMO_STUDIES
        for series in spec.series
    ]


def _files(root: Path) -> dict[str, bytes]:
    """Every ``*.dcm`` under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


def _move_all(orthanc: OrthancServer, root: Path) -> dict[str, int]:
    """C-MOVE every demo series from Orthanc into a Storage SCP writing under ``root``."""
    writer = InstanceWriter(unrouted_directory=root / "unrouted")
    scp = StorageSCP(
        writer,
        ae_title="PACSMAN",
        bind_host="127.0.0.1",
        port=0,
        allowed_calling_ae_titles=[orthanc.ae_title],
    )
    received: dict[str, int] = {}
    with scp:
        orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", scp.port)
        with RetrieveAssociation(
            _peer(orthanc, local_port=scp.port),
            receiver=writer,
            retry=FAST,
            courtesy=Courtesy(),
            move_destination="PACSMAN",
        ) as association:
            for request in _requests(root):
                received |= association.fetch([request]).received
    return received


def _get_all(orthanc: OrthancServer, root: Path) -> dict[str, int]:
    """C-GET every demo series from Orthanc, received on pacsman's C-GET association."""
    writer = InstanceWriter(unrouted_directory=root / "unrouted")
    storage = StorageRole(
        STORAGE_SOP_CLASSES,
        TRANSFER_SYNTAXES,
        writer.handle_store,
        on_established=lambda assoc: accelerate(assoc, writer),
    )
    received: dict[str, int] = {}
    with RetrieveAssociation(
        _peer(orthanc, method="get"),
        receiver=writer,
        retry=FAST,
        courtesy=Courtesy(),
        move_destination=None,
        storage=storage,
    ) as association:
        for request in _requests(root):
            received |= association.fetch([request]).received
    return received


def test_unchecked_pynetdicom_warns_once_with_the_fix(fast_paths: Callable[[bool], None]) -> None:
    """Asked many times, the check says no every time and warns once, naming the fix."""
    fast_paths(False)
    with capture_logs() as logs:
        answers = [hooks.fast_paths_enabled() for _ in range(5)]
    warnings = [e for e in logs if e["event"] == WARNING]
    assert answers == [False] * 5
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning["log_level"] == "warning"
    assert (warning["installed_pynetdicom"], warning["checked_pynetdicom"]) == (
        UNCHECKED,
        hooks.CHECKED_PYNETDICOM,
    )
    assert f"pynetdicom=={hooks.CHECKED_PYNETDICOM}" in warning["fix"]


def test_checked_pynetdicom_is_the_installed_one(fast_paths: Callable[[bool], None]) -> None:
    """pyproject.toml pins the checked versions: the fast paths run, with no warning."""
    fast_paths(True)
    with capture_logs() as logs:
        assert hooks.fast_paths_enabled()
    assert [e for e in logs if e["event"] == WARNING] == []


def test_unvalidated_values_leave_pydicom_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """C-FIND ranges and wildcards go in under RAISE, and no process-wide mode is flipped."""
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.RAISE)
    ds = Dataset()
    for keyword, value in [("StudyDate", "2024*"), ("StudyTime", "08*"), ("Modality", "m?")]:
        hooks.set_unvalidated(ds, keyword, "")  # a return key first, then matched
        hooks.set_unvalidated(ds, keyword, value)
    hooks.set_unvalidated(ds, "StudyInstanceUID", ["1.2.3", "1.2.4"])
    assert (ds.StudyDate, ds.StudyTime, ds.Modality, list(ds.StudyInstanceUID)) == (
        "2024*",
        "08*",
        "m?",
        ["1.2.3", "1.2.4"],
    )
    settings = pydicom_config.settings
    assert (settings.reading_validation_mode, settings.writing_validation_mode) == (
        pydicom_config.RAISE,
        pydicom_config.RAISE,
    )
    with pytest.raises(ValueError, match="VR DA"):  # the mode this test set still holds
        Dataset().StudyDate = "2024*"


def test_c_find_falls_back_to_pynetdicom(
    demo_orthanc: OrthancServer,
    fast_paths: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C-FINDs on plain pynetdicom find what the fast channel finds; one warning in all."""
    fast_paths(True)
    fast = _query_all(demo_orthanc)
    fast_paths(False)
    channel = Spy(monkeypatch, DimseChannel, "c_find")
    with capture_logs() as logs:
        plain = _query_all(demo_orthanc)
    assert channel.calls == 0
    assert {s.study_instance_uid for s in fast} == demo_orthanc.study_uids()
    assert plain == fast
    assert [e["event"] for e in logs].count(WARNING) == 1


def test_c_move_receipt_falls_back_to_pynetdicom(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    fast_paths: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C-MOVE by pynetdicom's ``send_c_move``, Orthanc's C-STOREs through pynetdicom's
    handler: the same files; one warning."""
    fast_paths(True)
    moves = Spy(monkeypatch, DimseChannel, "c_move")
    fast = _move_all(demo_orthanc, tmp_path / "fast")
    assert moves.calls > 0  # the C-MOVE-RSPs were read by the fast channel
    fast_paths(False)
    moves.calls = 0
    handler = Spy(monkeypatch, InstanceWriter, "handle_store")
    with capture_logs() as logs:
        plain = _move_all(demo_orthanc, tmp_path / "plain")
    truth = demo_orthanc.series_instance_counts()
    assert moves.calls == 0
    assert plain == fast == {uid: truth[uid] for uid in fast}
    assert handler.calls == sum(plain.values())
    assert _files(tmp_path / "plain") == _files(tmp_path / "fast")
    assert [e["event"] for e in logs].count(WARNING) == 1


def test_c_get_receipt_falls_back_to_pynetdicom(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    fast_paths: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A C-GET's sub-operations land through pynetdicom's handler, as the same files."""
    fast_paths(True)
    fast = _get_all(demo_orthanc, tmp_path / "fast")
    fast_paths(False)
    handler = Spy(monkeypatch, InstanceWriter, "handle_store")
    with capture_logs() as logs:
        plain = _get_all(demo_orthanc, tmp_path / "plain")
    truth = demo_orthanc.series_instance_counts()
    assert plain == fast == {uid: truth[uid] for uid in fast}
    assert handler.calls == sum(plain.values())
    assert _files(tmp_path / "plain") == _files(tmp_path / "fast")
    assert [e["event"] for e in logs].count(WARNING) == 1


def test_the_character_set_table_is_pydicoms() -> None:
    """pacsman.dicom.charsets keeps pydicom's table so light commands need no pydicom."""
    from pydicom.charset import python_encoding

    from pacsman.dicom.charsets import PYTHON_ENCODINGS

    assert dict(python_encoding) == dict(PYTHON_ENCODINGS)


def test_pynetdicoms_standard_log_handlers_are_not_bound() -> None:
    """Formatting every PDU and DIMSE message for a log kept at WARNING only cost time."""
    from pynetdicom import AE, evt
    from pynetdicom.association import Association

    association = Association(AE(), "requestor")
    for event in (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT):
        assert association.get_handlers(event) == []


def test_remembered_uid_verdicts_are_the_validators_own() -> None:
    """A remembered verdict is what pydicom and pynetdicom decide, refusals included."""
    from pydicom import valuerep
    from pynetdicom import _config as pynetdicom_config

    for uid in ("1.2.840.10008.1.2.1", "1.2.3." + "9" * 70, "1.2.3.abc", ""):
        assert valuerep.VALIDATORS["UI"]("UI", uid) == valuerep.validate_length_and_type_and_regex(
            "UI", uid
        )
        assert valuerep.VALIDATORS["UI"]("UI", uid) == valuerep.VALIDATORS["UI"]("UI", uid)
    assert pynetdicom_config.VALIDATORS["UI"]("1.2." + "3" * 70)[0] is False
    assert hooks.remembered(lambda *v: (len(v) == 2, ""))("UI", ["1.2", "1.3"]) == (True, "")
    assert [UID(u).is_valid for u in ("1.2.3", "1.2.abc", "1." + "2" * 70, "1.02")] == [
        True,
        False,
        False,
        False,
    ]
