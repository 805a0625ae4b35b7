"""pacsman.nifti.convert_series: synthetic MR series, de-identified by pacsman, through the real
dcm2niix of the pinned wheel; geometry, slice count, SOP-class skips and the PHI checks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import nibabel
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import BasicTextSRStorage, EnhancedMRImageStorage
from structlog.testing import capture_logs

from pacsman.anonymize import Deidentifier, Originals, load_profile
from pacsman.errors import FatalError
from pacsman.layout import anonymized_series_directory, private_directory
from pacsman.nifti import (
    PROVENANCE_FILE,
    NiftiOutcome,
    NiftiResult,
    _dcm2niix,
    convert_series,
    convertible,
    dcm2niix_version,
    nifti_directory,
)
from pacsman.nifti._check import allowed_values, sidecar_findings
from pacsman.nifti._series import folder_instances, read_instance, series_headers
from pacsman.testing.synthetic import SeriesSpec, StudySpec, document_series, iter_datasets

SUBJECT, SESSION = "NIFTI_S01", "NIFTI_S01_MR1"
PATIENT_NAME = "Quagmire^Winifred"
#: Series 3's geometry, different from the synthetic default on every axis.
SPACING, THICKNESS = (0.5, 0.75), 2.5

SPEC = StudySpec(
    patient_id="NIFTI-PID-774411",
    patient_name=PATIENT_NAME,
    study_date="20240105",
    accession_number="NIFACC99",
    study_description="MR Brain",
    series=(
        SeriesSpec(
            series_number=2, series_description="T1 SAG", n_instances=6, rows=32, columns=48
        ),
        SeriesSpec(series_number=3, series_description="T2 AX", n_instances=5, rows=40, columns=24),
    ),
)


def _geometry(ds: Dataset) -> Dataset:
    """Series 3 gets pixel spacing 0.5 x 0.75 mm and slices 2.5 mm apart."""
    if ds.SeriesNumber == 3:
        ds.PixelSpacing = list(SPACING)
        ds.SliceThickness = THICKNESS
        ds.ImagePositionPatient = [0.0, 0.0, THICKNESS * (ds.InstanceNumber - 1)]
        ds.SliceLocation = ds.ImagePositionPatient[2]
    return ds


def write_raw(directory: Path) -> list[Path]:
    """The study (and a Basic Text SR series 9) as identified DICOM files, one folder each."""
    datasets = [_geometry(ds) for ds in iter_datasets(SPEC)]
    datasets += document_series(SPEC, series_number=9, sop_class_uid=BasicTextSRStorage)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SeriesNumber:03d}" / f"{ds.InstanceNumber:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def deidentify(raw: list[Path], destination: Callable[[int], Path]) -> None:
    """De-identify ``raw`` with pacsman's engine (built-in profile) into
    ``destination(SeriesNumber)``."""
    engine = Deidentifier(load_profile(None), key=b"n" * 32, project="NIFTI")
    for path in raw:
        number = int(dcmread(path, stop_before_pixels=True).SeriesNumber)
        result = engine.deidentify_file(path, destination(number), subject=SUBJECT, session=SESSION)
        assert not result.quarantined, result.reason


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw folder, de-identified root): ``<root>/anonymized/<subject>/<session>/<N>/``."""
    base = tmp_path_factory.mktemp("nifti")
    raw = write_raw(base / "raw")
    root = base / "out"
    deidentify(
        raw,
        lambda n: anonymized_series_directory(
            root, subject=SUBJECT, session=SESSION, series_number=str(n)
        ),
    )
    return base / "raw", root


def series_dir(root: Path, number: int) -> Path:
    return anonymized_series_directory(
        root, subject=SUBJECT, session=SESSION, series_number=str(number)
    )


def convert(source: Path, out: Path, number: int, **options: object) -> NiftiResult:
    return convert_series(
        source,
        out,
        subject=SUBJECT,
        session=SESSION,
        series_number=str(number),
        **options,  # type: ignore[arg-type]
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("number", [2, 3])
def test_geometry_matches_the_dicom(study: tuple[Path, Path], tmp_path: Path, number: int) -> None:
    """Dimensions (Columns x Rows x slices) and voxel sizes (PixelSpacing, slice spacing) of
    the NIfTI are the DICOM's; files 0600, folders 0700, provenance beside them."""
    _, root = study
    first = dcmread(sorted(series_dir(root, number).iterdir())[0], stop_before_pixels=True)
    count = len(list(series_dir(root, number).iterdir()))
    result = convert(series_dir(root, number), tmp_path, number)
    assert result.outcome == NiftiOutcome.CONVERTED, result.reason
    assert result.reason == ""
    expected_dir = tmp_path / "nifti" / SUBJECT / SESSION / str(number)
    assert (
        expected_dir == result.directory == nifti_directory(tmp_path, SUBJECT, SESSION, str(number))
    )
    assert [f"series-{number}.json", f"series-{number}.nii.gz"] == [f.name for f in result.files]
    assert (count, count) == (result.instances, result.slices)
    image = nibabel.load(result.directory / f"series-{number}.nii.gz")
    assert (first.Columns, first.Rows, count) == image.shape
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    slice_spacing = float(first.SliceThickness)  # positions are SliceThickness apart
    assert (column_spacing, row_spacing, slice_spacing) == pytest.approx(image.header.get_zooms())
    for path in result.files:
        assert _mode(path) == 0o600, path
    for folder in (result.directory, result.directory.parent, tmp_path / "nifti"):
        assert _mode(folder) == 0o700, folder
    provenance = json.loads((result.directory / PROVENANCE_FILE).read_text())
    assert "v1.0.20260724" == provenance["version"] == dcm2niix_version()
    assert provenance["wheel"] == "dcm2niix==1.0.20260724"
    assert count == provenance["instances"]
    assert {"-z", "-b", "-ba"} <= set(provenance["options"])
    assert [p.name for p in (tmp_path / "nifti").iterdir() if p.name.startswith(".")] == []


def test_a_missing_slice_fails_though_dcm2niix_exits_0(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    """One instance removed from the middle: dcm2niix only warns (its exit is 0: the reason
    quotes its warning, not an exit code) and writes an extra volume; pacsman fails it."""
    _, root = study
    gap = tmp_path / "gap"
    gap.mkdir()
    files = sorted(
        series_dir(root, 3).iterdir(),
        key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber),
    )
    for path in files[:2] + files[3:]:
        shutil.copy(path, gap)
    direct = _dcm2niix.run(gap, private_directory(tmp_path / "direct"), "x", timeout=60)
    assert direct.returncode == 0  # dcm2niix itself takes the gap for a success
    assert "Missing images?" in direct.output
    result = convert(gap, tmp_path, 3)
    assert result.outcome == NiftiOutcome.FAILED
    assert result.instances == 4
    assert result.slices is not None
    assert result.slices != 4
    assert f"series 3: the NIfTI holds {result.slices} slice(s)" in result.reason
    assert "the series has 4 image instance(s)/frame(s)" in result.reason
    assert "dcm2niix said: Warning:" in result.reason
    assert "exited with" not in result.reason
    assert str(tmp_path) not in result.reason  # dcm2niix's paths are scrubbed
    assert result.files == ()
    assert not result.directory.exists()


def test_an_sr_series_is_skipped_before_dcm2niix(
    study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Basic Text SR series: SKIPPED, naming the SOP class; dcm2niix is never run."""
    _, root = study

    def refuse(*args: object, **kwargs: object) -> _dcm2niix.Run:
        raise AssertionError("dcm2niix must not run on an SR series")

    monkeypatch.setattr(_dcm2niix, "run", refuse)
    result = convert(series_dir(root, 9), tmp_path, 9)
    assert result.outcome == NiftiOutcome.SKIPPED
    assert result.reason == (
        "series 9: SOP class Basic Text SR Storage (1.2.840.10008.5.1.4.1.1.88.11) is a "
        "structured report; dcm2niix converts images only (1 instance(s))"
    )
    assert (result.instances, result.slices, result.files) == (1, None, ())


@pytest.mark.parametrize(
    ("uid", "kind"),
    [
        (
            "1.2.840.10008.5.1.4.1.1.88.22",
            "Enhanced SR Storage (1.2.840.10008.5.1.4.1.1.88.22) is a structured report",
        ),
        ("1.2.840.10008.5.1.4.1.1.88.59", "is a key object selection"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.7",
            "Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7) is a secondary capture",
        ),
        ("1.2.840.10008.5.1.4.1.1.7.4", "is a secondary capture"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.3", "is an encapsulated document"),
        ("1.2.840.10008.5.1.4.1.1.66", "Raw Data Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "is a waveform"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "RT Structure Set Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.5", "is an RT plan"),
    ],
)
def test_non_image_sop_classes_are_skipped(uid: str, kind: str) -> None:
    """Every non-image family has a reason naming the SOP class."""
    reason = convertible(uid)
    assert reason is not None
    assert kind in reason
    assert reason.startswith("SOP class ")


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.128",
        "1.2.840.10008.5.1.4.1.1.481.2",
    ],
)
def test_image_sop_classes_are_converted(uid: str) -> None:
    """MR, Enhanced MR, CT, PET, RT Dose go to dcm2niix."""
    assert convertible(uid) is None


def _planting(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    """dcm2niix as usual, then ``key: value`` written into its sidecar."""
    real = _dcm2niix.run

    def planted(series: Path, out: Path, name: str, *, timeout: float) -> _dcm2niix.Run:
        done = real(series, out, name, timeout=timeout)
        sidecar = out / f"{name}.json"
        data = json.loads(sidecar.read_text())
        data[key] = value
        sidecar.write_text(json.dumps(data))
        return done

    monkeypatch.setattr(_dcm2niix, "run", planted)


def test_a_planted_phi_key_quarantines_the_series(
    study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar PatientName that is not the pseudonym: QUARANTINED, the reason names the
    key and the kind, never the value; the outputs are in the 0700 quarantine folder."""
    _, root = study
    convert(series_dir(root, 2), tmp_path, 2)  # an earlier good conversion
    _planting(monkeypatch, "PatientName", PATIENT_NAME)
    result = convert(series_dir(root, 2), tmp_path, 2)
    held = tmp_path / "nifti-quarantine" / SUBJECT / SESSION / "2"
    assert result.outcome == NiftiOutcome.QUARANTINED
    assert held == result.directory
    assert result.reason.startswith(
        "series 2: PHI check: series-2.json key PatientName: its patient name is neither "
        "pacsman's pseudonym nor the de-identified DICOM's value; outputs quarantined in "
    )
    assert "Quagmire" not in result.reason
    assert "Winifred" not in result.reason
    assert result.files == ()
    assert not (tmp_path / "nifti" / SUBJECT / SESSION / "2").exists()  # the earlier one too
    assert {"series-2.json", "series-2.nii.gz", "reason.txt"} == {p.name for p in held.iterdir()}
    assert _mode(held) == 0o700
    assert _mode(held / "series-2.json") == 0o600
    assert "Winifred" not in (held / "reason.txt").read_text()


def test_the_pseudonym_and_the_dicom_values_pass_the_key_check(
    study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PatientName = the subject label passes (the sidecar's InstitutionName and
    DeviceSerialNumber hold pacsman's ANONYMIZED, as the de-identified DICOM does)."""
    _, root = study
    _planting(monkeypatch, "PatientName", SUBJECT)
    assert convert(series_dir(root, 2), tmp_path, 2).outcome == NiftiOutcome.CONVERTED


def test_a_value_the_profile_kept_passes_even_with_originals(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    """A profile that retains the institution: the sidecar repeats the de-identified DICOM's
    InstitutionName, which the anonymizer's own leak check already judged: it passes, also
    with the originals (where the institution counts as identifying)."""
    raw, root = study
    kept = tmp_path / "kept"
    kept.mkdir()
    for path in series_dir(root, 2).iterdir():
        ds = dcmread(path)
        ds.InstitutionName = SPEC.institution_name
        ds.save_as(kept / path.name)
    originals = Originals.from_dataset(dcmread(next((raw / "002").iterdir())))
    assert originals.institutions  # it would be a hit anywhere else
    result = convert(kept, tmp_path, 2, originals=originals)
    assert result.outcome == NiftiOutcome.CONVERTED, result.reason


def test_image_comments_with_the_name_are_caught_with_the_originals(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    """De-identified DICOM whose ImageComments carries the patient's name (dcm2niix copies
    ImageComments into the sidecar and the NIfTI header's aux_file even with -ba y): the
    leak check against the raw originals quarantines it; without originals only the PHI
    keys are checked, and free text passes."""
    raw, root = study
    planted = tmp_path / "planted"
    planted.mkdir()
    for path in series_dir(root, 2).iterdir():
        ds = dcmread(path)
        ds.ImageComments = "seen by WINIFRED QUAGMIRE"
        ds.save_as(planted / path.name)
    originals = Originals.from_dataset(dcmread(next((raw / "002").iterdir())))
    result = convert(planted, tmp_path, 2, originals=originals)
    assert result.outcome == NiftiOutcome.QUARANTINED
    assert "series-2.json ImageComments: the leak check found an original patient name" in (
        result.reason
    )
    assert "(and 1 more)" in result.reason  # the NIfTI header's aux_file
    assert "WINIFRED" not in result.reason.upper()
    assert convert(planted, tmp_path / "plain", 2).outcome == NiftiOutcome.CONVERTED


def test_identified_input_fails_with_the_fix(study: tuple[Path, Path], tmp_path: Path) -> None:
    """Raw DICOM (PatientIdentityRemoved absent): FAILED, never converted."""
    raw, _ = study
    result = convert(raw / "002", tmp_path, 2)
    assert result.outcome == NiftiOutcome.FAILED
    assert result.reason == (
        "series 2: 6 of 6 instance(s) are not de-identified (PatientIdentityRemoved is not "
        "YES); run pacsman anonymize first"
    )


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (
            _dcm2niix.Run(8, "Error: Unable to convert /x/y/z.dcm\n"),
            "series 2: dcm2niix exited with 8 (partial conversion: some images were converted, "
            "some were not): Error: Unable to convert <path>",
        ),
        (
            _dcm2niix.Run(None, ""),
            "series 2: dcm2niix ran longer than 5 s and was stopped; raise the timeout or check "
            "the series",
        ),
        (
            _dcm2niix.Run(0, "Found 6 DICOM file(s)\n"),
            "series 2: dcm2niix exited 0 but wrote no NIfTI: Found 6 DICOM file(s)",
        ),
    ],
)
def test_dcm2niix_failures_fail_the_series(
    study: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run: _dcm2niix.Run,
    reason: str,
) -> None:
    """A non-zero exit (8 = partial), a timeout, no output: FAILED with the reason."""
    _, root = study
    monkeypatch.setattr(_dcm2niix, "run", lambda *a, **k: run)
    result = convert(series_dir(root, 2), tmp_path, 2, timeout=5)
    assert (NiftiOutcome.FAILED, reason) == (result.outcome, result.reason)


def test_a_missing_wheel_is_fatal_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """No dcm2niix package: FatalError naming the pip command."""
    monkeypatch.setattr(_dcm2niix.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FatalError, match=r"pip install dcm2niix==1\.0\.20260724"):
        _dcm2niix.binary()


def test_output_name_carries_no_description() -> None:
    """dcm2niix's -f name is fixed: series-<SeriesNumber>, letters and digits only."""
    assert _dcm2niix.output_name("12") == "series-12"
    assert _dcm2niix.output_name("../") == "series-0"


def test_the_log_names_no_one(study: tuple[Path, Path], tmp_path: Path) -> None:
    """One nifti_series_done event per series: number, outcome, counts; no labels, no paths."""
    _, root = study
    with capture_logs() as logs:
        convert(series_dir(root, 2), tmp_path, 2)
    done = [e for e in logs if e["event"] == "nifti_series_done"]
    assert len(done) == 1
    assert {k: done[0][k] for k in ("series_number", "outcome", "instances", "slices")} == {
        "series_number": "2",
        "outcome": "converted",
        "instances": 6,
        "slices": 6,
    }
    assert SUBJECT not in str(logs)


def test_a_multi_frame_instance_counts_its_frames(tmp_path: Path) -> None:
    """An enhanced MR instance of 7 frames is 7 slices to find in the NIfTI."""
    ds = next(iter_datasets(SPEC))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = 7
    ds.PatientIdentityRemoved = "YES"
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    headers = series_headers(folder_instances(tmp_path))
    assert (headers.instances, headers.frames) == (1, 7)


def test_a_defined_term_is_no_leak_in_a_code_value(tmp_path: Path) -> None:
    """A patient named Head: the sidecar's BodyPart HEAD is a code, not her name; her name
    in free text (SeriesDescription) is a leak; numbers are never matched."""
    source = next(iter_datasets(SPEC))
    source.PatientName = "Head^Annabel"
    source.PatientID = "7744119"
    originals = Originals.from_dataset(source)
    sidecar = tmp_path / "s.json"
    sidecar.write_text(
        json.dumps({"BodyPart": "HEAD", "SeriesDescription": "annabel knee", "X": 7744119})
    )
    found = sidecar_findings(sidecar, allowed=allowed_values((), ()), originals=originals)
    assert [(f.key, f.kind) for f in found] == [("SeriesDescription", "patient name part")]


def test_a_phi_key_holding_a_list_is_still_checked(tmp_path: Path) -> None:
    """``"OperatorsName": ["Tech^Tom", ...]`` counts as the key OperatorsName."""
    sidecar = tmp_path / "s.json"
    sidecar.write_text(json.dumps({"OperatorsName": ["Tech^Tom"], "ImageType": ["M"]}))
    found = sidecar_findings(sidecar, allowed=allowed_values(("S1",), ()), originals=None)
    assert [str(f) for f in found] == [
        "s.json key OperatorsName: its operator name is neither pacsman's pseudonym nor the "
        "de-identified DICOM's value"
    ]


def test_headers_in_another_script_are_decoded(tmp_path: Path) -> None:
    """The fast header walk gives way to pydicom for a value that is not ASCII."""
    ds = next(iter_datasets(SPEC))
    ds.SeriesDescription = "Knie längs 膝"
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    instance = read_instance(tmp_path / "one.dcm")
    assert instance is not None
    assert (instance.series_description, instance.series_number) == ("Knie längs 膝", "2")
    assert read_instance(Path(__file__)) is None  # not DICOM


def test_dcm2niix_output_with_an_original_is_withheld(
    study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason quotes dcm2niix only when its lines hold none of the originals."""
    raw, root = study
    said = _dcm2niix.Run(1, "Error: unable to read QUAGMIRE_scan\n")
    monkeypatch.setattr(_dcm2niix, "run", lambda *a, **k: said)
    originals = Originals.from_dataset(dcmread(next((raw / "002").iterdir())))
    result = convert(series_dir(root, 2), tmp_path, 2, originals=originals)
    assert result.reason == (
        "series 2: dcm2niix exited with 1 (unspecified error): (its output is withheld: the "
        "leak check found an original patient name part in it)"
    )


def test_old_scratch_folders_of_a_killed_process_are_swept(tmp_path: Path) -> None:
    """A kill -9 mid-conversion leaves a hidden 0700 folder in <out>/nifti; the first
    conversion of a later process removes those older than SCRATCH_AGE, and only those."""
    from pacsman.nifti import _place

    parent = private_directory(tmp_path / "nifti")
    old = [private_directory(parent / f"{prefix}left") for prefix in (".convert-", ".stage-")]
    (old[0] / "s.nii.gz").write_bytes(b"x")
    fresh = private_directory(parent / ".convert-running")
    subject = private_directory(parent / "SUBJ01")
    long_ago = time.time() - _place.SCRATCH_AGE - 60
    for folder in [*old, subject]:
        os.utime(folder, (long_ago, long_ago))
    _place._swept.discard(parent)
    made = _place.scratch(tmp_path)
    assert not any(folder.exists() for folder in old)
    assert fresh.is_dir()
    assert subject.is_dir()  # outputs are never swept, however old
    assert made.parent == parent
