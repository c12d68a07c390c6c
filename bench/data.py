"""Generate the benchmark's DICOM data in a temporary directory (not timed).

Every instance is explicit VR little endian with a real header (patient, study, series and SOP
UIDs, image geometry) followed by native 16-bit pixel data of random bytes. The header is written
by pydicom; the Pixel Data element is appended by hand and streamed in chunks, so a 50 MB instance
is never held in memory and zip members are written straight into the archive.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ROWS = COLUMNS = 512
FRAME_BYTES = ROWS * COLUMNS * 2  # 16-bit
CHUNK = 4 * 1024 * 1024
_PIXEL_DATA_HEADER = struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OW", 0)  # + 4-byte length


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much data one run generates."""

    series_instances: int  # 0.5 MB single-frame instances in one series
    multiframe_files: int
    multiframe_frames: int  # 120 frames of 512x512x16 bit = ~63 MB
    memory_member_frames: int  # frames per member of the memory zips
    memory_zip_bytes: tuple[int, int]  # the small and the large memory zip (target sizes)
    pipeline_files: int  # small files through the embedded stack


FULL = Sizes(300, 3, 120, 100, (500_000_000, 2_000_000_000), 200)
QUICK = Sizes(20, 3, 12, 10, (50_000_000, 200_000_000), 20)


@dataclass(frozen=True, slots=True)
class BenchInput:
    """One benchmark input: a list of DICOM files or one zip."""

    role: str  # series_files, series_zip, multiframe, memory_small, memory_large
    name: str  # as shown in the tables
    kind: str  # "files" or "zip"
    paths: tuple[Path, ...]  # the files, or the zip alone
    instances: int
    nbytes: int  # input bytes (the files' sizes, or the zip's size)
    memory: bool = False  # part of the memory comparison (0.5 GB vs 2 GB)


def _header(study: str, series: str, number: int, frames: int, series_number: int) -> bytes:
    """The Part 10 file up to (not including) Pixel Data, encoded by pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "MR"
    ds.Manufacturer = "BENCH"
    ds.InstitutionName = "Bench Imaging Centre"
    ds.ReferringPhysicianName = "REF^DOCTOR"
    ds.StudyDescription = "BRAIN W/O CONTRAST"
    ds.SeriesDescription = "T1 AX"
    ds.PatientName = "BENCH^PATIENT"
    ds.PatientID = "P-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.SliceThickness = "1.0"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.MagneticFieldStrength = "3"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-125.0, -125.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = generate_uid()
    ds.SliceLocation = float(number)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = [0.488, 0.488]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "600"
    ds.WindowWidth = "1200"
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_instance(
    out: IO[bytes], study: str, series: str, number: int, frames: int, series_number: int = 1
) -> int:
    """Write one instance to ``out``, pixel data streamed in chunks; return the bytes written."""
    header = _header(study, series, number, frames, series_number)
    pixels = frames * FRAME_BYTES
    out.write(header)
    out.write(_PIXEL_DATA_HEADER + struct.pack("<I", pixels))
    left = pixels
    while left:
        n = min(CHUNK, left)
        out.write(os.urandom(n))
        left -= n
    return len(header) + 12 + pixels


def _series_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(1, count + 1):
        path = folder / f"IM{n:04d}.dcm"
        with open(path, "wb") as fp:
            write_instance(fp, study, series, n, frames=1)
        paths.append(path)
    return paths


def _zip_files(paths: list[Path], dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in paths:
            zf.write(path, f"SERIES1/{path.name}")


def write_streamed_zip(dst: Path, members: int, frames: int) -> None:
    """A stored zip of ``members`` multi-frame instances, each written straight into the archive."""
    study, series = generate_uid(), generate_uid()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for n in range(1, members + 1):
            info = zipfile.ZipInfo(f"MF/IM{n:04d}.dcm", date_time=(2024, 1, 15, 10, 15, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as member:
                write_instance(member, study, series, n, frames=frames)


def instance_bytes(frames: int) -> int:
    """Approximate size of one generated instance."""
    return frames * FRAME_BYTES + 1500


def planned_bytes(sizes: Sizes) -> int:
    """Disk the inputs take, before outputs."""
    series = sizes.series_instances * instance_bytes(1)
    multi = sizes.multiframe_files * instance_bytes(sizes.multiframe_frames)
    return 2 * series + multi + sum(sizes.memory_zip_bytes)


def memory_members(sizes: Sizes, target: int) -> int:
    """How many multi-frame members make a memory zip of about ``target`` bytes."""
    return max(1, round(target / instance_bytes(sizes.memory_member_frames)))


def _label(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def generate(root: Path, sizes: Sizes) -> Iterator[BenchInput]:
    """Write every input under ``root``, yielding each dataset once it is complete."""
    series = _series_files(root / "series", sizes.series_instances)
    yield BenchInput(
        "series_files",
        f"series as files ({len(series)} x 0.5 MB)",
        "files",
        tuple(series),
        len(series),
        sum(p.stat().st_size for p in series),
    )
    series_zip = root / "series.zip"
    _zip_files(series, series_zip)
    yield BenchInput(
        "series_zip",
        f"series as zip ({len(series)} x 0.5 MB)",
        "zip",
        (series_zip,),
        len(series),
        series_zip.stat().st_size,
    )
    multi_dir = root / "multiframe"
    multi_dir.mkdir()
    multi = []
    for n in range(1, sizes.multiframe_files + 1):
        path = multi_dir / f"MF{n}.dcm"
        with open(path, "wb") as fp:
            write_instance(fp, generate_uid(), generate_uid(), 1, frames=sizes.multiframe_frames)
        multi.append(path)
    each = multi[0].stat().st_size
    yield BenchInput(
        "multiframe",
        f"multi-frame files ({len(multi)} x {each / 1e6:.0f} MB)",
        "files",
        tuple(multi),
        len(multi),
        sum(p.stat().st_size for p in multi),
    )
    for role, target in zip(("memory_small", "memory_large"), sizes.memory_zip_bytes, strict=True):
        members = memory_members(sizes, target)
        path = root / f"memory-{members}.zip"
        write_streamed_zip(path, members, sizes.memory_member_frames)
        nbytes = path.stat().st_size
        member_mb = instance_bytes(sizes.memory_member_frames) / 1e6
        yield BenchInput(
            role,
            f"memory: {_label(nbytes)} zip ({members} x {member_mb:.0f} MB)",
            "zip",
            (path,),
            members,
            nbytes,
            memory=True,
        )


def warm_page_cache(paths: tuple[Path, ...]) -> None:
    """Read every input once so that all methods read from the page cache."""
    buf = bytearray(CHUNK)
    for path in paths:
        with open(path, "rb", buffering=0) as fp:
            while fp.readinto(buf):
                pass
