"""Sample uploads built from pydicom's bundled test files (nothing large is committed)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.data import get_testdata_file


def bundled_file(name: str) -> Path:
    """A file bundled with pydicom (local; never downloaded)."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(name)
    return Path(str(found))


def series_dir() -> Path:
    """A 7-instance MR series bundled with pydicom."""
    return bundled_file("CT_small.dcm").parent / "dicomdirtests" / "98892003" / "MR700"


def write_series_zip(path: Path) -> Path:
    """A stored zip of the bundled MR series, one member per instance, under a folder."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for instance in sorted(series_dir().iterdir()):
            archive.write(instance, f"MR700/{instance.name}.dcm")
    return path


def write_mixed_zip(path: Path) -> Path:
    """A deflated zip: one DICOM instance and a README that is not DICOM."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(bundled_file("MR_small.dcm"), "MR_small.dcm")
        archive.writestr("README.txt", "Scanner export notes\n")
    return path


def write_not_dicom(path: Path) -> Path:
    """A text file uploaded where a DICOM file was expected."""
    path.write_text("this is a scanned consent form, not an image\n")
    return path


@dataclass(frozen=True, slots=True)
class SampleUpload:
    """One demo upload: the source key, the local file, and what the demo expects."""

    key: str
    path: Path
    expect: str


def demo_uploads(workdir: Path) -> list[SampleUpload]:
    """The demo's uploads under the contract's key layout (records from ``DEMO_EDC``)."""
    return [
        SampleUpload(
            "subjecteventcrffile/1/101/CT Scan/v1.dcm",
            bundled_file("CT_small.dcm"),
            "Completed: single file stamped",
        ),
        SampleUpload(
            "subjecteventcrffile/2/102/MRI Series/v1.zip",
            write_series_zip(workdir / "series.zip"),
            "Completed: 7-instance series zip",
        ),
        SampleUpload(
            "subjecteventcrffile/2/102/CT Scan/v1.zip",
            write_mixed_zip(workdir / "mixed.zip"),
            "Completed + has_error: README.txt carried over (ERRS1013)",
        ),
        SampleUpload(
            "subjecteventcrffile/1/101/CT Scan/v2.dcm",
            write_not_dicom(workdir / "bad.dcm"),
            "Failed: not DICOM (ERRS1012)",
        ),
        SampleUpload(
            "subjecteventcrffile/1/101/CT Scan/v9.dcm",
            bundled_file("MR_small.dcm"),
            "Failed: no EDC record after the replica-lag window (ERRL1003)",
        ),
    ]
