"""The project key file and the local mapping table: private files, stable pseudonyms."""

from __future__ import annotations

import csv
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from pacsman.anonymize import (
    Deidentifier,
    MappingTable,
    check_template,
    export_mapping,
    load_or_create_key,
    load_profile,
)
from pacsman.anonymize.uids import remap_uid
from pacsman.errors import InputError, ItemFailed


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_created_0600_once_and_reused(tmp_path: Path) -> None:
    """The key file is created with mode 0600 on first use and read back after."""
    path = tmp_path / "keys" / "PROJ.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert _mode(path) == 0o600
    assert load_or_create_key(path) == key


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A key file others can read must be fixed first."""
    path = tmp_path / "PROJ.key"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(InputError, match=r"key file .*PROJ.key: mode is -rw-r--r--.*chmod 600"):
        load_or_create_key(path)


def test_corrupt_key_is_refused(tmp_path: Path) -> None:
    """A file that is not 64 hex digits is not taken for a key."""
    path = tmp_path / "PROJ.key"
    path.write_text("secret\n", encoding="ascii")
    path.chmod(0o600)
    with pytest.raises(InputError, match=r"not a pacsman key \(64 hex digits expected\)"):
        load_or_create_key(path)


def test_uid_remap_is_keyed_and_fits() -> None:
    """Different keys or projects give different UIDs; all are 2.25 UIDs of <= 64 chars."""
    uid = "1.2.826.0.1.3680043.8.498.1"
    uids = {remap_uid(k, p, uid) for k in (b"a" * 32, b"b" * 32) for p in ("P1", "P2")}
    assert len(uids) == 4
    assert all(u.startswith("2.25.") and len(u) <= 44 for u in uids)


def _record(table: MappingTable, **change: str) -> None:
    values = {
        "project": "P",
        "subject": "P_0001",
        "session": "P_0001_MR1",
        "patient_id": "MRN1",
        "study_instance_uid": "1.2.3.4.5.6.7.8",
        "accession_number": "ACC1",
    }
    values |= change
    table.record(date_shift_days=-42, **values)


def test_mapping_file_is_private_and_idempotent(tmp_path: Path) -> None:
    """The SQLite file is 0600; recording the same pair twice is one row."""
    table = MappingTable(tmp_path / "map" / "mapping.sqlite")
    _record(table)
    _record(table)
    out = tmp_path / "export.csv"
    assert table.export(out) == 1
    table.close()
    assert _mode(tmp_path / "map" / "mapping.sqlite") == 0o600
    assert _mode(out) == 0o600
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0][:4] == ["project", "subject", "PatientID", "date_shift_days"]
    assert rows[1] == ["P", "P_0001", "MRN1", "-42", "P_0001_MR1", "1.2.3.4.5.6.7.8", "ACC1"]


def test_mapping_refuses_label_clashes(tmp_path: Path) -> None:
    """A subject label for a second patient, or a session for a second study, fails."""
    table = MappingTable(tmp_path / "mapping.sqlite")
    _record(table)
    clash = r"PatientID \(0010,0020\) differs from the one recorded for subject 'P_0001'"
    with pytest.raises(ItemFailed, match=clash):
        _record(table, patient_id="MRN2", session="P_0001_MR2")
    clash = r"StudyInstanceUID \(0020,000D\) differs from the one recorded for session 'P_0001_MR1'"
    with pytest.raises(ItemFailed, match=clash):
        _record(table, study_instance_uid="1.2.3.4.5.6.7.9")
    _record(table, patient_id=" mrn1 ", session="P_0001_MR1")  # the same patient, written so
    table.close()


def test_export_mapping_needs_a_table(tmp_path: Path) -> None:
    """Exporting from a path with no table says what to do."""
    with pytest.raises(InputError, match=r"no mapping table here; run an anonymization first"):
        export_mapping(tmp_path / "none.sqlite", tmp_path / "out.csv")


def test_template_labels_are_stable_across_runs(tmp_path: Path) -> None:
    """Numbering follows first sight and survives reopening the table."""
    path = tmp_path / "mapping.sqlite"
    table = MappingTable(path)
    first = [table.label_for("subject", o, project="P", template="{project}_{n:04d}") for o in "ab"]
    table.close()
    table = MappingTable(path)
    again = table.label_for("subject", "b", project="P", template="{project}_{n:04d}")
    new = table.label_for("subject", "c", project="P", template="{project}_{n:04d}")
    table.close()
    assert (first, again, new) == (["P_0001", "P_0002"], "P_0002", "P_0003")
    assert check_template("{project}") is not None
    with pytest.raises(InputError, match=r"is not a valid template"):
        MappingTable(path).label_for("session", "x", project="P", template="{nope}_{n}")


def test_engine_records_the_mapping(tmp_path: Path) -> None:
    """deidentify_file records subject, session, shift and the originals locally."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, "1.2.826.0.1.3680043.8.498.9"
    ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber = (
        "1.2.826.0.1.3680043.8.498.8",
        "MRN7",
        "",
    )
    ds.Modality = "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    src = tmp_path / "a.dcm"
    ds.save_as(src, enforce_file_format=True)
    table = MappingTable(tmp_path / "mapping.sqlite")
    engine = Deidentifier(load_profile(None), key=b"m" * 32, project="P", mapping=table)
    engine.deidentify_file(src, tmp_path / "out", subject="P_0001", session="P_0001_MR1")
    table.export(tmp_path / "map.csv")
    rows = list(csv.DictReader((tmp_path / "map.csv").open(encoding="utf-8")))
    assert rows == [
        {
            "project": "P",
            "subject": "P_0001",
            "PatientID": "MRN7",
            "date_shift_days": str(engine.date_shift("P_0001")),
            "session": "P_0001_MR1",
            "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.8",
            "AccessionNumber": "",
        }
    ]


def _label_many(path: str, prefix: str, count: int, start: Any, results: Any) -> None:
    table = MappingTable(Path(path))
    start.wait(timeout=60)  # both processes label at the same moment
    try:
        template = "{project}_{n:04d}"
        labels = [
            table.label_for("subject", f"{prefix}{i}", project="P", template=template)
            for i in range(count)
        ]
    finally:
        table.close()
    results.put(labels)


def test_two_processes_labelling_one_project_never_share_a_label(tmp_path: Path) -> None:
    """Two runs at once (two service instances) each take the write lock before reading the
    next number, so no generated label is given to two patients."""
    path = tmp_path / "m.sqlite"
    MappingTable(path).close()
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_label_many, args=(str(path), prefix, 150, start, results))
        for prefix in "ab"
    ]
    for worker in workers:
        worker.start()
    labels = [label for _ in workers for label in results.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=60)
    assert len(labels) == len(set(labels)) == 300
