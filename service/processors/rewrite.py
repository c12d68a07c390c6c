"""Full pydicom rewrite: the fallback for files whose byte layout rules out a header splice.

Used for deflated datasets (the bytes after the meta group are compressed), big-endian explicit
VR, files without preamble or file meta, and files whose element structure the splice walker
finds irregular (for example a transfer syntax that says explicit VR over implicit VR bytes).

The price is memory: pydicom reads the whole file, pixel data included, and writes it back
re-encoded, so peak memory is a few times the file size. These layouts are rare (retired or
non-conformant), and pydicom's forgiving reader is the right tool for them; everything else takes
the streaming splice. Every whole-file read here passes ``WHOLE_DATASET_GATE``: a file (or an
inflated dataset) over ``max_in_memory_bytes`` fails with ERRS1020 before it is read, and one
whole dataset at a time is in memory per process.
"""

from __future__ import annotations

import hashlib
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
    WHOLE_DATASET_GATE,
    fail,
    in_memory_size,
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


def _read_full(path: Path) -> FileDataset:
    """Read all of ``path`` with pydicom (``force=True``), pixel data included: only ever called
    inside a ``WHOLE_DATASET_GATE`` admission.

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


def check_readable(path: Path, *, max_in_memory_bytes: int) -> None:
    """pydicom reads all of ``path`` (and lets it go again): its forgiving reader judges bytes the
    walker found irregular, in the scan rather than in the write pass.

    Raises ERRS1020 (before reading) when the file, or its inflated dataset, is larger than
    ``max_in_memory_bytes``; ERRS1002 when pydicom cannot read it or a value is cut short;
    ``OSError`` for disk faults.
    """
    with WHOLE_DATASET_GATE.admit(in_memory_size(path, max_in_memory_bytes), max_in_memory_bytes):
        _read_full(path)


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _pixel_digest(dataset: Dataset) -> bytes:
    digest = hashlib.sha256()
    for tag in _PIXEL_TAGS:
        if tag in dataset:
            value = dataset[tag].value
            digest.update(value if isinstance(value, bytes) else b"")
    return digest.digest()


def _carries(dataset: Dataset, tag: BaseTag, value: str) -> bool:
    try:
        found = dataset[tag].value if tag in dataset else None
    except Exception:  # noqa: BLE001 - an unreadable value is simply not the expected one
        return False
    if isinstance(found, bytes):  # a private tag without its creator reads as UN in implicit VR
        found = found.decode("latin-1")
    return isinstance(found, str) and found.strip(" \0") == value


def _drop_padding(dataset: Dataset) -> None:
    """Forget what pydicom made of trailing zero padding: elements (0000,0000) of no value.

    A file padded with zero bytes after its last element reads, eight bytes at a time, as
    group-0000 elements; group 0000 (the DIMSE command group) never belongs in a stored dataset,
    and pydicom refuses to write it. Padding is padding: the rewrite goes on without it.
    """
    if 0 not in dataset:
        return
    value = getattr(dataset.get_item(0, keep_deferred=True), "value", None)
    if not value or (isinstance(value, bytes) and not value.strip(b"\0")):
        del dataset[0]


def rewrite_file(
    src: Path, dst: Path, tag: BaseTag, vr: str, value: str, *, max_in_memory_bytes: int
) -> None:
    """Read all of ``src`` with pydicom, set ``tag`` to ``value`` and write a Part 10 file.

    The tracking element is replaced if present (a dataset holds one element per tag). The output
    keeps the input's transfer syntax (deflated stays deflated, big endian stays big endian) and
    gets valid file meta (``enforce_file_format=True``); it is read back whole, still inside the
    gate's admission, and must carry ``value`` and the input's pixel bytes. Raises ERRS1020
    (before reading) for a file or inflated dataset over ``max_in_memory_bytes``, ERRS1009 when
    the input cannot be read or is truncated, ERRS1008 when pydicom cannot write it, cannot read
    it back, or the value or pixel bytes differ; ``OSError`` for disk faults.
    """
    with WHOLE_DATASET_GATE.admit(in_memory_size(src, max_in_memory_bytes), max_in_memory_bytes):
        try:
            dataset = _read_full(src)
        except PermanentError as exc:  # the scan read it; failing now is a read during the insert
            raise fail("ERRS1009", exc.message) from None
        _drop_padding(dataset)
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
        try:
            written = _read_full(dst)
        except PermanentError:
            raise fail("ERRS1008", "pydicom cannot read the rewritten instance back") from None
        if not _carries(written, tag, value):
            raise fail("ERRS1008", "rewritten instance does not carry the tracking UID")
        if _pixel_digest(written) != before:
            raise fail("ERRS1008", "rewritten instance's pixel bytes differ from the input's")
