"""Deterministic synthetic DICOM studies for tests, demos and benchmarks.

A :class:`StudySpec` describes a study; every UID is derived from the spec, so building the
same spec twice gives byte-identical instances (a re-pull must not look like a new study).
The images are small valid MR (or CT) Image Storage instances, 16-bit MONOCHROME2, with a
file meta header in Explicit VR Little Endian.  :func:`document_series` adds a series of
structured reports, key objects, waveforms (or a bare instance of any other SOP class).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

__all__ = [
    "DEMO_STUDIES",
    "SeriesSpec",
    "StudySpec",
    "benchmark_cohort",
    "document_series",
    "iter_datasets",
    "synthetic_uid",
    "write_study",
]

_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{6}")
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pacsman:testing:synthetic:v1")


def synthetic_uid(*parts: object) -> UID:
    """Return a deterministic ``2.25.`` UID (a name-based UUID, X.667) derived from ``parts``.

    The parts are joined with ``|`` before hashing, so ``("x", 1, 11)`` and ``("x", 11, 1)``
    differ.  :func:`pydicom.uid.generate_uid` is no help here: with ``prefix=None`` it ignores
    ``entropy_srcs`` and returns a random UUID, and with a prefix it joins the sources with no
    separator.
    """
    key = "|".join(str(part) for part in parts)
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, key).int}")


@dataclass(frozen=True, kw_only=True)
class SeriesSpec:
    """One series: ``n_instances`` single-frame images of ``rows`` x ``columns`` pixels.

    Raises:
        ValueError: if a number is out of range or ``acquisition_date`` is not YYYYMMDD.
    """

    series_number: int
    series_description: str
    n_instances: int
    rows: int = 64
    columns: int = 64
    protocol_name: str | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    sequence_name: str | None = None
    device_serial_number: str | None = None
    acquisition_date: str | None = None

    def __post_init__(self) -> None:
        if self.series_number < 1:
            raise ValueError(f"series_number {self.series_number} must be >= 1")
        if not 1 <= self.n_instances <= 65535:
            raise ValueError(f"n_instances {self.n_instances} must be within 1..65535")
        if not (1 <= self.rows <= 4096 and 1 <= self.columns <= 4096):
            raise ValueError(f"rows x columns {self.rows}x{self.columns} must be within 1..4096")
        if self.acquisition_date is not None and not _DATE.fullmatch(self.acquisition_date):
            raise ValueError(f"acquisition_date {self.acquisition_date!r} is not YYYYMMDD")


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """One study of one patient; all UIDs are derived from the identifying fields.

    ``uid_seed`` adds entropy to the UIDs, to make a distinct copy of an otherwise equal study.

    Raises:
        ValueError: naming the field, if a date/time is malformed, the modality is not MR or
            CT, there are no series, or two series share a number.
    """

    patient_id: str
    patient_name: str
    study_date: str
    study_time: str = "101500"
    accession_number: str
    study_description: str
    modality: str = "MR"
    series: tuple[SeriesSpec, ...]
    patient_birth_date: str = "19700101"
    patient_sex: str = "O"
    institution_name: str = "Pacsman Synthetic Hospital"
    referring_physician_name: str = "Referrer^Rita"
    study_id: str = "1"
    specific_character_set: str = "ISO_IR 192"
    manufacturer: str = "pacsman"
    body_part_examined: str = "HEAD"
    uid_seed: str = ""

    def __post_init__(self) -> None:
        for name in ("study_date", "patient_birth_date"):
            if not _DATE.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not YYYYMMDD")
        if not _TIME.fullmatch(self.study_time):
            raise ValueError(f"study_time {self.study_time!r} is not HHMMSS")
        if self.modality not in _SOP_CLASS:
            raise ValueError(f"modality {self.modality!r} is not one of {sorted(_SOP_CLASS)}")
        numbers = [s.series_number for s in self.series]
        if not numbers or len(set(numbers)) != len(numbers):
            raise ValueError(f"series numbers {numbers} must be non-empty and unique")

    @property
    def study_instance_uid(self) -> UID:
        """The StudyInstanceUID, derived from patient, accession, date and time."""
        return synthetic_uid(
            "study",
            self.patient_id,
            self.accession_number,
            self.study_date,
            self.study_time,
            self.uid_seed,
        )

    @property
    def frame_of_reference_uid(self) -> UID:
        """One FrameOfReferenceUID for the whole study."""
        return synthetic_uid(self.study_instance_uid, "frame-of-reference")

    @property
    def n_instances(self) -> int:
        """Total number of instances in the study."""
        return sum(s.n_instances for s in self.series)

    def series_instance_uid(self, series: SeriesSpec) -> UID:
        """The SeriesInstanceUID of ``series`` within this study."""
        return synthetic_uid(self.study_instance_uid, "series", series.series_number)

    def sop_instance_uid(self, series: SeriesSpec, instance_number: int) -> UID:
        """The SOPInstanceUID of image ``instance_number`` (1-based) of ``series``."""
        return synthetic_uid(self.series_instance_uid(series), "instance", instance_number)


def iter_datasets(spec: StudySpec) -> Iterator[Dataset]:
    """Yield every instance of ``spec`` as a dataset with file meta, series by series."""
    for series in spec.series:
        for instance_number in range(1, series.n_instances + 1):
            yield _build_instance(spec, series, instance_number)


def write_study(spec: StudySpec, directory: Path) -> list[Path]:
    """Write ``spec`` as DICOM Part 10 files under ``directory`` and return their paths.

    Layout: ``<directory>/<StudyInstanceUID>/<SeriesNumber:03d>/<InstanceNumber:05d>.dcm``.
    """
    paths: list[Path] = []
    for ds in iter_datasets(spec):
        path = directory / ds.StudyInstanceUID / f"{ds.SeriesNumber:03d}"
        path = path / f"{ds.InstanceNumber:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _build_instance(spec: StudySpec, series: SeriesSpec, instance_number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = spec.specific_character_set
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = _SOP_CLASS[spec.modality]
    ds.SOPInstanceUID = spec.sop_instance_uid(series, instance_number)
    _add_patient_study(ds, spec)
    _add_series(ds, spec, series)
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.ContentDate = series.acquisition_date or spec.study_date
    ds.ContentTime = spec.study_time
    _add_geometry(ds, series, instance_number)
    _add_modality_specific(ds, spec.modality, series)
    _add_pixels(ds, series, instance_number)
    ds.file_meta = _file_meta(ds)
    return ds


def _add_patient_study(ds: Dataset, spec: StudySpec) -> None:
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.StudyDescription = spec.study_description
    ds.StudyID = spec.study_id
    ds.ReferringPhysicianName = spec.referring_physician_name
    ds.InstitutionName = spec.institution_name
    ds.Manufacturer = spec.manufacturer


def _add_series(ds: Dataset, spec: StudySpec, series: SeriesSpec) -> None:
    ds.Modality = spec.modality
    ds.SeriesInstanceUID = spec.series_instance_uid(series)
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.SeriesDate = spec.study_date
    ds.SeriesTime = spec.study_time
    ds.AcquisitionDate = series.acquisition_date or spec.study_date
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = spec.body_part_examined
    ds.PatientPosition = "HFS"
    if series.protocol_name is not None:
        ds.ProtocolName = series.protocol_name
    if series.device_serial_number is not None:
        ds.DeviceSerialNumber = series.device_serial_number


def _add_geometry(ds: Dataset, series: SeriesSpec, instance_number: int) -> None:
    thickness = 3.0
    ds.SliceThickness = thickness
    ds.PixelSpacing = [1.0, 1.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, round(thickness * (instance_number - 1), 3)]
    ds.SliceLocation = ds.ImagePositionPatient[2]


def _add_modality_specific(ds: Dataset, modality: str, series: SeriesSpec) -> None:
    if modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 15.0
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3.0
        if series.sequence_name is not None:
            ds.SequenceName = series.sequence_name
    else:
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"


def _add_pixels(ds: Dataset, series: SeriesSpec, instance_number: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ramp = np.add.outer(np.arange(series.rows), np.arange(series.columns))
    pixels = (ramp * 7 + instance_number * 131 + series.series_number * 17) % 4096
    ds.add_new(0x7FE00010, "OW", pixels.astype("<u2").tobytes())


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSMAN_SYNTH"
    return meta


def _demo_series(*specs: tuple[int, str, int, str]) -> tuple[SeriesSpec, ...]:
    return tuple(
        SeriesSpec(
            series_number=number,
            series_description=description,
            n_instances=count,
            protocol_name=description,
            sequence_name=sequence,
            device_serial_number="SN-4711",
        )
        for number, description, count, sequence in specs
    )


DEMO_STUDIES: tuple[StudySpec, ...] = (
    StudySpec(
        patient_id="DEMO001",
        patient_name="Doe^Jane",
        patient_birth_date="19800214",
        patient_sex="F",
        study_date="20240105",
        accession_number="ACC0001",
        study_description="MR Brain",
        series=_demo_series(
            (1, "Localizer", 3, "*fl2d1"), (2, "T1 SAG", 12, "*tfl3d1"), (3, "T2 AX", 8, "*tse2d1")
        ),
    ),
    StudySpec(
        patient_id="DEMO002",
        patient_name="Müller^Jürgen",
        patient_birth_date="19650730",
        patient_sex="M",
        study_date="20240212",
        study_time="083000",
        accession_number="ACC0002",
        study_description="MR Knie links",
        body_part_examined="KNEE",
        series=_demo_series((1, "Localizer", 3, "*fl2d1"), (2, "PD FS COR", 10, "*tse2d1")),
    ),
    StudySpec(
        patient_id="DEMO003",
        patient_name="Smith^John",
        patient_birth_date="19921103",
        patient_sex="M",
        study_date="20240318",
        study_time="141000",
        accession_number="ACC0003",
        study_description="MR Spine",
        body_part_examined="SPINE",
        series=_demo_series(
            (1, "Localizer", 3, "*fl2d1"),
            (2, "T2 SAG", 9, "*tse2d1"),
            (3, "T1 SAG", 9, "*tse2d1"),
            (4, "STIR SAG", 6, "*tir2d1"),
        ),
    ),
    StudySpec(
        patient_id="DEMO003",
        patient_name="Smith^John",
        patient_birth_date="19921103",
        patient_sex="M",
        study_date="20240320",
        study_time="091500",
        accession_number="ACC0004",
        study_description="CT Chest",
        modality="CT",
        body_part_examined="CHEST",
        series=(
            SeriesSpec(series_number=1, series_description="Topogram", n_instances=3),
            SeriesSpec(series_number=2, series_description="Chest 5mm", n_instances=10),
        ),
    ),
)
"""The demo cohort: three patients, four studies, 2-4 series of 3-12 small images each."""


def benchmark_cohort(
    n_instances: int = 3000,
    *,
    n_studies: int = 1,
    series_per_study: int = 10,
    rows: int = 256,
    columns: int = 256,
) -> tuple[StudySpec, ...]:
    """Return MR studies holding ``n_instances`` images in total, spread as evenly as possible.

    The default, 3000 images of 256x256 16-bit pixels (128 KiB each), is about 400 MB in one
    study; ``n_studies=300, series_per_study=2`` gives many small studies instead.

    Raises:
        ValueError: if there are fewer images than series to hold them.
    """
    n_series = n_studies * series_per_study
    if n_studies < 1 or series_per_study < 1 or n_instances < n_series:
        raise ValueError(
            f"n_instances={n_instances} must be >= n_studies*series_per_study={n_series} >= 1"
        )
    sizes = [n_instances // n_series + (i < n_instances % n_series) for i in range(n_series)]
    return tuple(
        _benchmark_study(i, sizes[i * series_per_study : (i + 1) * series_per_study], rows, columns)
        for i in range(n_studies)
    )


def _benchmark_study(index: int, sizes: list[int], rows: int, columns: int) -> StudySpec:
    series = tuple(
        SeriesSpec(
            series_number=i + 1,
            series_description=f"Bench series {i + 1}",
            n_instances=size,
            rows=rows,
            columns=columns,
        )
        for i, size in enumerate(sizes)
    )
    return StudySpec(
        patient_id=f"BENCH{index + 1:05d}",
        patient_name=f"Bench^Patient{index + 1:05d}",
        study_date=f"2023{1 + index % 12:02d}{1 + index % 28:02d}",
        accession_number=f"BENCHACC{index + 1:05d}",
        study_description="Benchmark MR",
        series=series,
    )


def document_series(
    spec: StudySpec,
    *,
    series_number: int,
    sop_class_uid: str,
    n_instances: int = 1,
    series_description: str = "",
) -> list[Dataset]:
    """Non-image instances of one more series of ``spec``'s study, Explicit VR Little Endian.

    Structured reports for the SR classes (X-Ray Radiation Dose SR, Key Object Selection,
    Basic/Enhanced/Comprehensive SR: a container with one text item), a two-channel waveform
    for the waveform classes (12-lead ECG...), and a bare instance of any other class (e.g. a
    private one).  UIDs are derived from the spec and ``series_number``, as for images.

    Raises:
        ValueError: as :class:`SeriesSpec`, e.g. for ``n_instances`` out of range.
    """
    name = UID(sop_class_uid).name
    series = SeriesSpec(
        series_number=series_number,
        series_description=series_description or (name if name != sop_class_uid else "Other"),
        n_instances=n_instances,
    )
    return [_document(spec, series, sop_class_uid, n) for n in range(1, n_instances + 1)]


_SR_FAMILY = "1.2.840.10008.5.1.4.1.1.88."
_WAVEFORM_FAMILY = "1.2.840.10008.5.1.4.1.1.9."
_KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
_X_RAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def _document(spec: StudySpec, series: SeriesSpec, sop_class_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = spec.specific_character_set
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = spec.sop_instance_uid(series, number)
    _add_patient_study(ds, spec)
    _add_series(ds, spec, series)
    ds.InstanceNumber = number
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    if sop_class_uid.startswith(_SR_FAMILY):
        ds.Modality = "KO" if sop_class_uid == _KEY_OBJECT_SELECTION else "SR"
        _add_report(ds, sop_class_uid)
    elif sop_class_uid.startswith(_WAVEFORM_FAMILY):
        ds.Modality = "ECG" if sop_class_uid.startswith(f"{_WAVEFORM_FAMILY}1.") else "HD"
        _add_waveform(ds, number)
    else:
        ds.Modality = "OT"
    ds.file_meta = _file_meta(ds)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_report(ds: Dataset, sop_class_uid: str) -> None:
    title = {
        _X_RAY_RADIATION_DOSE_SR: ("113701", "DCM", "X-Ray Radiation Dose Report"),
        _KEY_OBJECT_SELECTION: ("113000", "DCM", "Of Interest"),
    }.get(sop_class_uid, ("18748-4", "LN", "Diagnostic Imaging Report"))
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*title)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    item.TextValue = "Synthetic finding"
    ds.ContentSequence = [item]


def _add_waveform(ds: Dataset, number: int) -> None:
    channels, samples = 2, 100
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = channels
    group.NumberOfWaveformSamples = samples
    group.SamplingFrequency = 500.0
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = [_channel(lead) for lead in ("I", "II")]
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    wave = (np.sin(np.arange(samples) / 8.0 + number) * 1000).astype("<i2")
    group.add_new(0x54001010, "OW", np.repeat(wave, channels).tobytes())
    ds.WaveformSequence = [group]


def _channel(lead: str) -> Dataset:
    channel = Dataset()
    channel.ChannelSourceSequence = [_code(f"5.6.3-9-{lead}", "SCPECG", f"Lead {lead}")]
    channel.ChannelSensitivity = 1.0
    channel.ChannelSensitivityUnitsSequence = [_code("uV", "UCUM", "microvolt")]
    channel.ChannelSensitivityCorrectionFactor = 1.0
    channel.ChannelBaseline = 0.0
    channel.ChannelSampleSkew = 0.0
    channel.WaveformBitsStored = 16
    return channel
