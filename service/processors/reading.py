"""Guarded pydicom reads of untrusted files, and the helpers every processor module shares.

pydicom raises almost any exception type on hostile bytes and warns (and logs) about odd ones, with
messages that can quote header values. Everything here therefore reads with warnings silenced,
turns pydicom's failures into ``None`` or an ERRL code with a message of our own (``from None``, so
no pydicom text rides along in ``__context__``), and lets only real operating-system faults (an
``OSError`` with an ``errno``: disk full, I/O error) escape unchanged.
"""

from __future__ import annotations

import errno
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info, read_partial
from pydicom.tag import BaseTag

from service.errors import PermanentError, Stage
from service.processors.layout import StructureError, meta_end

DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
# A deflated dataset is inflated in memory (pydicom cannot stream it): refuse beyond this, so a
# small deflate bomb cannot take the worker's memory.
MAX_INFLATED_BYTES = 512 * 1024 * 1024
_INFLATE_CHUNK = 1024 * 1024
# Values above this size are skipped, not read, while parsing headers: a garbage undefined-length
# element in a non-DICOM file would otherwise be read whole into memory.
_DEFER = 64 * 1024


def fail(code: str, message: str) -> PermanentError:
    """A ``PermanentError`` of the processing stage (``message`` must hold no header value)."""
    return PermanentError(code, message, Stage.PROCESS)


def is_os_fault(exc: BaseException) -> bool:
    """True for a real operating-system error (disk full, I/O error, permissions).

    Not for pydicom's bare ``OSError(msg)`` on bad data, nor for ``EINVAL``, which readers raise
    when hostile bytes make them seek to a negative offset.
    """
    return isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings from reads/writes of untrusted files (they may quote header values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_header(path: Path, last_tag: int, tags: Sequence[int]) -> Dataset | None:
    """Parse ``path`` with pydicom (``force=True``) up to ``last_tag``, keeping only ``tags``.

    Values of other elements are skipped with a seek, and parsing stops at the first top-level
    tag above ``last_tag``, so pixel data is never read. Returns ``None`` when pydicom cannot
    parse the bytes; raises ``OSError`` only for operating-system faults.
    """

    def past_last(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last_tag

    try:
        with quiet(), open(path, "rb") as fp:
            return read_partial(
                fp, stop_when=past_last, defer_size=_DEFER, force=True, specific_tags=list(tags)
            )
    except Exception as exc:
        if is_os_fault(exc):
            raise
        return None


def read_dataset_at(
    path: Path, offset: int, *, implicit_vr: bool, little_endian: bool, last_tag: int, tags: Sequence[int]
) -> Dataset | None:
    """``read_header`` for a dataset known to start at ``offset`` in the given encoding.

    Skips pydicom's file meta parsing, which costs more than the few elements read here.
    """

    def past_last(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last_tag

    stop: Callable[[BaseTag, str | None, int], bool] = past_last
    try:
        with quiet(), open(path, "rb") as fp:
            fp.seek(offset)
            return read_dataset(
                fp, implicit_vr, little_endian, stop_when=stop, defer_size=_DEFER, specific_tags=list(tags)
            )
    except Exception as exc:
        if is_os_fault(exc):
            raise
        return None


def read_header_bytes(
    data: bytes,
    last_tag: int,
    tags: Sequence[int],
    *,
    implicit_vr: bool = False,
    little_endian: bool = True,
) -> Dataset | None:
    """``read_header`` for a dataset held in memory (by default explicit VR little endian)."""

    def past_last(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > last_tag

    stop: Callable[[BaseTag, str | None, int], bool] = past_last
    try:
        with quiet():
            return read_dataset(
                BytesIO(data), implicit_vr, little_endian, stop_when=stop, specific_tags=list(tags)
            )
    except Exception:  # noqa: BLE001 - any pydicom failure on this input means "unreadable"
        return None


def transfer_syntax(path: Path) -> str | None:
    """The file meta Transfer Syntax UID, or ``None`` when there is no readable one."""
    try:
        with quiet():
            meta = read_file_meta_info(path)
        value = meta.get("TransferSyntaxUID")
    except Exception as exc:
        if is_os_fault(exc):
            raise
        return None
    return str(value) if value is not None else None


def inflate_dataset(path: Path) -> bytes:
    """Inflate the dataset of a deflated-syntax file, refusing past ``MAX_INFLATED_BYTES``.

    Raises ERRS1002 for a broken meta group or deflate stream (a truncated file ends mid-stream)
    and for a dataset that inflates beyond the bound.
    """
    size = path.stat().st_size
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    with open(path, "rb") as fp:
        try:
            fp.seek(meta_end(fp, size, 132))
        except StructureError:
            raise fail("ERRS1002", "file meta group is truncated or malformed") from None
        try:
            while not inflater.eof:
                chunk = inflater.unconsumed_tail or fp.read(_INFLATE_CHUNK)
                if not chunk:
                    raise fail("ERRS1002", "deflated dataset is truncated")
                out += inflater.decompress(chunk, _INFLATE_CHUNK)
                if len(out) > MAX_INFLATED_BYTES:
                    raise fail(
                        "ERRS1002",
                        f"deflated dataset expands beyond {MAX_INFLATED_BYTES} bytes; refused",
                    )
        except zlib.error:
            raise fail("ERRS1002", "deflated dataset is corrupt") from None
    return bytes(out)
