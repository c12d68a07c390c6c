"""Full pydicom rewrite: the fallback for files whose byte layout rules out a header splice.

Used for deflated datasets (the bytes after the meta group are compressed), big-endian explicit
VR, files without preamble or file meta, and files whose element structure the splice walker
finds irregular (for example a transfer syntax that says explicit VR over implicit VR bytes).

The price is memory: pydicom reads the whole file, pixel data included, and writes it back
re-encoded, so peak memory is a few times the file size. These layouts are rare (retired or
non-conformant), and pydicom's forgiving reader is the right tool for them; everything else takes
the streaming splice.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import dcmread
from pydicom.tag import BaseTag
from pydicom.uid import UID

from service.errors import PermanentError
from service.processors.layout import UNDEFINED_LENGTH
from service.processors.reading import (
    BIG_ENDIAN,
    EXPLICIT_LITTLE,
    IMPLICIT_LITTLE,
    fail,
    is_os_fault,
    quiet,
)


def _check_complete(dataset: Dataset) -> None:
    """Raise ERRS1002 when a top-level value is shorter than its declared length (truncation)."""
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag, keep_deferred=True)
        if (
            isinstance(element, RawDataElement)
            and element.length != UNDEFINED_LENGTH
            and element.value is not None
            and len(element.value) < element.length
        ):
            raise fail("ERRS1002", "a value is shorter than its declared length (truncated)")


def _complete_meta(dataset: FileDataset) -> None:
    """Give a file read without (complete) file meta what a valid Part 10 file needs."""
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = dataset.original_encoding
        if implicit:
            meta.TransferSyntaxUID = UID(IMPLICIT_LITTLE)
        else:
            meta.TransferSyntaxUID = UID(EXPLICIT_LITTLE if little else BIG_ENDIAN)
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in dataset:
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID


def read_full(path: Path) -> FileDataset:
    """Read all of ``path`` with pydicom (``force=True``), pixel data included.

    Raises ERRS1002 when pydicom cannot read it or a value is cut short, ``OSError`` for disk
    faults.
    """
    try:
        with quiet():
            dataset = dcmread(path, force=True)
    except Exception as exc:
        if is_os_fault(exc):
            raise
        raise fail("ERRS1002", "instance cannot be read by pydicom") from None
    _check_complete(dataset)
    return dataset


# A full rewrite (or an inflated deflated dataset) holds the whole dataset in memory: one at a
# time per process, so N worker threads never need N x file size (the splice streams, ungated).
WHOLE_DATASET_GATE = threading.BoundedSemaphore(1)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _pixel_digest(dataset: Dataset) -> bytes:
    digest = hashlib.sha256()
    for tag in _PIXEL_TAGS:
        if tag in dataset:
            value = dataset[tag].value
            digest.update(value if isinstance(value, bytes) else b"")
    return digest.digest()


def rewrite_file(src: Path, dst: Path, tag: BaseTag, vr: str, value: str) -> None:
    """Read all of ``src`` with pydicom, set ``tag`` to ``value`` and write a Part 10 file.

    The tracking element is replaced if present (a dataset holds one element per tag). The output
    keeps the input's transfer syntax (deflated stays deflated, big endian stays big endian) and
    gets valid file meta (``enforce_file_format=True``); its pixel bytes are read back and compared
    with the input's. Raises ERRS1009 when the input cannot be read or is truncated, ERRS1008 when
    pydicom cannot write it or the pixel bytes differ, ``OSError`` for disk faults.
    """
    with WHOLE_DATASET_GATE:
        try:
            dataset = read_full(src)
        except PermanentError as exc:  # the scan read it; failing now is a read during the insert
            raise fail("ERRS1009", exc.message) from None
        before = _pixel_digest(dataset)
        try:
            with quiet():
                dataset[tag] = DataElement(tag, vr, value)
                _complete_meta(dataset)
                dataset.save_as(dst, enforce_file_format=True)
        except Exception as exc:
            if is_os_fault(exc):
                raise
            raise fail("ERRS1008", "pydicom could not write the instance back") from None
        del dataset
        if _pixel_digest(read_full(dst)) != before:
            raise fail("ERRS1008", "rewritten instance's pixel bytes differ from the input's")
