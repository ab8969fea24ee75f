"""Small synthetic DICOM series for the tests, written with pydicom.

A series is described by its geometry in the DICOM patient frame (LPS+, mm): the row and
column direction cosines, the pixel spacing, the slice spacing and the position of the
first slice. Voxel values come from a function of the LPS coordinates of each voxel centre,
so a bright blob can be put at a known patient coordinate and looked for after a round trip.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
JPEG2000 = "1.2.840.10008.1.2.4.90"


def oblique(angle_deg: float = 20.0, tilt_deg: float = 15.0) -> tuple:
    """Row and column cosines of a doubly oblique plane (rotations about z, then about x)."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(tilt_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    r = rx @ rz
    return tuple(r[:, 0]), tuple(r[:, 1])


def blob(centre: Sequence[float], sigma: float = 6.0, peak: float = 1000.0, base: float = 0.0) -> Callable:
    """Voxel values: ``base`` plus a Gaussian of height ``peak`` at the LPS point ``centre``."""
    c = np.asarray(centre, dtype=np.float64)

    def values(lps: np.ndarray) -> np.ndarray:
        d2 = ((lps - c) ** 2).sum(axis=-1)
        return base + peak * np.exp(-d2 / (2.0 * sigma**2))

    return values


@dataclass
class SeriesSpec:
    """What to write; every field has a small default (CT, axial, anisotropic, 12 slices)."""

    rows: int = 20
    columns: int = 24
    slices: int = 12
    pixel_spacing: tuple = (0.9, 0.8)  # (between rows, between columns) as DICOM orders them
    slice_spacing: float = 2.5
    orientation: tuple = AXIAL
    origin: tuple = (-10.0, -12.0, 30.0)
    modality: str = "CT"
    values: Callable | None = None
    description: str = "AX 2.5mm"
    series_number: int = 3
    patient_id: str = "P001"
    patient_name: str = "Test^Patient"
    study_date: str = "20240102"
    study_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    image_type: tuple = ("ORIGINAL", "PRIMARY", "AXIAL")
    tilt_deg: float = 0.0  # shear of the slice stack along the column direction (gantry tilt)
    positions: Sequence[Sequence[float]] | None = None  # explicit per-slice positions
    orientations: Sequence[tuple] | None = None  # explicit per-slice orientations
    skip: Sequence[int] = ()  # slice indices not written (missing slices)
    shuffle_names: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian
    prefix: str = "IM"
    instance_order: str = "ascending"  # or "descending": InstanceNumber against the stacking direction


@dataclass
class WrittenSeries:
    spec: SeriesSpec
    files: list[Path]
    positions: np.ndarray  # [n, 3] LPS positions of the written slices, in stacking order
    normal: np.ndarray
    volume: np.ndarray  # [slices, rows, columns] values of the written slices (stored values)

    @property
    def uid(self) -> str:
        return self.spec.series_uid


def _frame(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = np.asarray(spec.orientation[0], dtype=np.float64)
    col_dir = np.asarray(spec.orientation[1], dtype=np.float64)
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def slice_positions(spec: SeriesSpec) -> np.ndarray:
    """LPS position of the first voxel of each slice (before skipping)."""
    if spec.positions is not None:
        return np.asarray(spec.positions, dtype=np.float64)
    _, col_dir, normal = _frame(spec)
    k = np.arange(spec.slices, dtype=np.float64)[:, None]
    shear = np.tan(np.deg2rad(spec.tilt_deg)) * spec.slice_spacing
    return np.asarray(spec.origin) + k * spec.slice_spacing * normal + k * shear * col_dir


def _base_dataset(spec: SeriesSpec, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic study"
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.description
    ds.Modality = spec.modality
    ds.Manufacturer = "Synthetic"
    ds.InstitutionName = "Do Not Copy Hospital"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.ContentTime = "101500"
    return ds


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def write_series(folder: Path, spec: SeriesSpec | None = None, **changes) -> WrittenSeries:
    """Write one single-frame CT or MR series into ``folder`` (one file a slice)."""
    spec = spec or SeriesSpec(**changes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir, normal = _frame(spec)
    positions = slice_positions(spec)
    dr, dc = spec.pixel_spacing
    r = np.arange(spec.rows, dtype=np.float64)[:, None, None]
    c = np.arange(spec.columns, dtype=np.float64)[None, :, None]
    values = spec.values or blob(spec.origin, base=0.0, peak=0.0)
    ct = spec.modality == "CT"
    sop_class = CTImageStorage if ct else MRImageStorage
    keep = [k for k in range(len(positions)) if k not in set(spec.skip)]
    n = len(keep)
    names = [f"{spec.prefix}{i:04d}.dcm" for i in range(n)]
    if spec.shuffle_names:
        random.Random(7).shuffle(names)
    files, volume, written = [], [], []
    for order, k in enumerate(keep):
        orientation = spec.orientations[k] if spec.orientations is not None else spec.orientation
        rd = np.asarray(orientation[0], dtype=np.float64)
        cd = np.asarray(orientation[1], dtype=np.float64)
        lps = positions[k] + c * dc * rd + r * dr * cd  # [rows, columns, 3]
        stored = np.rint(values(lps) + (1024.0 if ct else 0.0)).astype(np.int16)
        ds = _base_dataset(spec, sop_class)
        ds.SOPInstanceUID = generate_uid()
        ds.FrameOfReferenceUID = spec.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = order + 1 if spec.instance_order == "ascending" else n - order
        ds.ImageType = list(spec.image_type)
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in positions[k]]
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*rd, *cd)]
        ds.PixelSpacing = [dr, dc]
        ds.SliceThickness = spec.slice_spacing
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = spec.rows, spec.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        if ct:
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.KVP = 120
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 10, 500, 1
            ds.MagneticFieldStrength = 3
        ds.AcquisitionNumber = 1
        if spec.tilt_deg:
            ds.GantryDetectorTilt = spec.tilt_deg
        if spec.transfer_syntax == ExplicitVRLittleEndian:
            ds.PixelData = stored.tobytes()
        else:  # a compressed syntax: a placeholder fragment (never decoded by the tests)
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
            ds["PixelData"].VR = "OB"
        ds.file_meta = _file_meta(ds, spec.transfer_syntax)
        path = folder / names[order]
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        volume.append(stored.astype(np.float32) - (1024.0 if ct else 0.0))
        written.append(positions[k])
    return WrittenSeries(spec, files, np.asarray(written), normal, np.stack(volume))


def write_localizer(folder: Path, study: SeriesSpec, **changes) -> WrittenSeries:
    """A 1-slice localiser (LOCALIZER image type) of the same study, coronal."""
    spec = SeriesSpec(
        rows=16,
        columns=16,
        slices=1,
        orientation=CORONAL,
        description="Topogram",
        series_number=1,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        study_uid=study.study_uid,
        frame_uid=generate_uid(),
        patient_id=study.patient_id,
        study_date=study.study_date,
        prefix="LOC",
        **changes,
    )
    return write_series(folder, spec)


def write_sr(folder: Path, study: SeriesSpec, name: str = "report.dcm") -> Path:
    """A text Structured Report of the study: a DICOM object without pixels."""
    spec = SeriesSpec(modality="SR", study_uid=study.study_uid, patient_id=study.patient_id, series_number=99)
    ds = _base_dataset(spec, SR_STORAGE)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContentDate = datetime.date(2024, 1, 2).strftime("%Y%m%d")
    ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    path = Path(folder) / name
    ds.save_as(path, enforce_file_format=True)
    return path


def read_headers(files: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dicom3tools' ``dciodvfy`` finds in a file.

    The test fails, not skips, when ``dciodvfy`` is not installed (``.ci/run`` installs
    Debian's ``dicom3tools``).
    """
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy is not installed: `apt-get install dicom3tools` (the CI script does this)")
    done = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]
