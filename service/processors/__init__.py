"""Stamp the tracking UID (ATRIUID) into an upload: one DICOM file or a zip of DICOM files.

``process_upload`` works in two passes. The scan reads only headers to find every instance's
Study/Series Instance UIDs and group the instances into series; the allocator is then called once
with all series; the write pass puts each series' ATRIUID into every instance and verifies the
result.

Splice or fallback. Most files take the *header splice*: the element headers on disk are walked
(values skipped with seeks) to find where the tracking element belongs, and the output is the
original bytes up to that point, the new element encoded in the dataset's own transfer syntax, and
the rest of the original bytes copied unchanged in 1 MiB chunks. Pixel data is never decoded or
held in memory, compressed pixel data is never re-encoded, and every other element keeps its exact
bytes. This works for the little-endian Part 10 files that make up nearly all uploads: implicit
and explicit VR little endian and every encapsulated (JPEG, JPEG 2000, RLE, ...) syntax.

A *full pydicom rewrite* (read everything, set the element, write a new Part 10 file) is used only
where the byte layout rules out a splice: a deflated dataset (its bytes are compressed), big-endian
explicit VR (retired), a file without preamble or file meta (the output must gain valid meta), or
element bytes the walker finds irregular (for example an explicit-VR syntax over implicit-VR
bytes). It holds the whole file in memory; ``ProcessResult.fallbacks`` counts these instances.

Errors: a bad upload raises ``service.errors.PermanentError`` with an ERRS1xxx code. A single file
that cannot be stamped raises too (ERRS1008/ERRS1009 after the allocation) and nothing is written:
an unstamped file never goes to quarantine. A bad member of an archive is carried over unchanged
and reported as a ``MemberIssue``. Messages hold codes, counts and member names, never header
values.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import pydicom.config
from pydicom.tag import BaseTag

from service.processors.archive import checked_uids, process_zip
from service.processors.base import (
    DEFAULT_MAX_IN_MEMORY_BYTES,
    DEFAULT_TRACKING_TAG,
    MemberIssue,
    ProcessResult,
    SeriesKey,
    SeriesSummary,
    UidAllocator,
    ZipLimits,
)
from service.processors.directory import ZIP_MAGICS
from service.processors.gated import Gate
from service.processors.instance import scan_instance, stamp_instance
from service.processors.splice import check_tracking_tag
from service.processors.zipstream import process_arriving_zip

__all__ = [
    "DEFAULT_MAX_IN_MEMORY_BYTES",
    "DEFAULT_TRACKING_TAG",
    "MemberIssue",
    "ProcessResult",
    "SeriesKey",
    "SeriesSummary",
    "UidAllocator",
    "ZipLimits",
    "is_zip",
    "process_arriving_zip_upload",
    "process_upload",
]

# pydicom logs through the "pydicom" logger, and its messages can quote header values (PHI).
# Keep them out of the service's log handlers; the processors report through codes instead.
logging.getLogger("pydicom").propagate = False
# Value validation is what turns a malformed header value into a warning that quotes it. The
# per-read ``warnings.catch_warnings()`` is not thread-safe (one job's exit can restore filters
# while another job reads), so validation is switched off process-wide as well.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def is_zip(path: Path) -> bool:
    """True when ``path`` starts with a zip local file header or an empty zip's end record.

    A file with ``DICM`` at offset 128 is DICOM whatever its preamble holds (the preamble is free
    for applications to use, so it may start with zip magic).
    """
    with open(path, "rb") as fp:
        head = fp.read(132)
    return head[:4] in ZIP_MAGICS and head[128:132] != b"DICM"


def process_arriving_zip_upload(
    src: Path,
    dst: Path,
    allocate: UidAllocator,
    *,
    gate: Gate,
    on_written: Callable[[int], None],
    tracking_tag: BaseTag = DEFAULT_TRACKING_TAG,
    limits: ZipLimits = ZipLimits(),  # noqa: B008 - frozen dataclass, safe as a default
    work_dir: Path | None = None,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
) -> ProcessResult:
    """``process_upload`` for a zip that ``src`` is still receiving: ``gate(start, end)`` returns
    once those bytes have landed, ``on_written(n)`` is told after each member that the first ``n``
    bytes of ``dst`` are final (``zipstream``). The allocator is called once per series, when its
    first instance is found. Raises as ``process_upload`` does; ``dst`` is removed on failure."""
    vr = check_tracking_tag(tracking_tag)
    try:
        with tempfile.TemporaryDirectory(prefix="edc-process-", dir=work_dir) as work:
            return process_arriving_zip(
                src,
                dst,
                allocate,
                tag=tracking_tag,
                vr=vr,
                limits=limits,
                work=Path(work),
                max_in_memory_bytes=max_in_memory_bytes,
                gate=gate,
                on_written=on_written,
            )
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def _process_file(
    src: Path, dst: Path, allocate: UidAllocator, tag: BaseTag, vr: str, max_in_memory_bytes: int
) -> ProcessResult:
    instance = scan_instance(src, tag, max_in_memory_bytes=max_in_memory_bytes)
    series = (SeriesSummary(instance.key, instance.series_number, 1),)
    uid = checked_uids(allocate(series), series, vr)[instance.key]
    # A file that cannot be stamped raises (ERRS1008/ERRS1009): an unstamped single file must not
    # reach quarantine, so there is nothing to carry over; the caller removes ``dst``.
    fallback = stamp_instance(src, dst, instance, tag, vr, uid, max_in_memory_bytes=max_in_memory_bytes)
    return ProcessResult(series, (), 1, 1, int(fallback))


def process_upload(
    src: Path,
    dst: Path,
    allocate: UidAllocator,
    *,
    tracking_tag: BaseTag = DEFAULT_TRACKING_TAG,
    limits: ZipLimits = ZipLimits(),  # noqa: B008 - frozen dataclass, safe as a default
    work_dir: Path | None = None,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
) -> ProcessResult:
    """Write a copy of the upload ``src`` to ``dst`` with the tracking UID in every instance.

    ``src`` is one DICOM file or a zip of them, told apart by content (zip magic), not by name;
    ``dst`` receives a DICOM file or a zip accordingly and must differ from ``src``. ``allocate``
    is called exactly once, after the scan and before anything is written, with every series found
    (ordered by first appearance); it must return an ATRIUID for each. Temporary files go under
    ``work_dir`` (default: the system temporary directory) and are removed whatever happens.
    A single file is stamped or the call raises. A file (or inflated
    deflated dataset) that would need the in-memory full rewrite and is larger than
    ``max_in_memory_bytes`` is refused with ERRS1020 before it is read (inside a zip it becomes
    the member's issue); the streaming splice has no such cap.

    Raises ``PermanentError`` (stage PROCESS) for an upload that cannot be processed, including a
    single file that cannot be stamped after the allocation (ERRS1008/ERRS1009/ERRS1020): an
    unstamped file never reaches quarantine. On any exception ``dst`` is removed. Besides that,
    only ``OSError`` (disk faults), whatever ``allocate`` itself raises, and ``ValueError`` (an
    invalid ``tracking_tag``, ``dst`` equal to ``src``, or an allocator answer missing a series or
    holding a UID the tag's VR cannot carry) escape.
    """
    vr = check_tracking_tag(tracking_tag)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError("dst must not be the upload itself")
    try:
        if is_zip(src):
            with tempfile.TemporaryDirectory(prefix="edc-process-", dir=work_dir) as work:
                return process_zip(
                    src,
                    dst,
                    allocate,
                    tag=tracking_tag,
                    vr=vr,
                    limits=limits,
                    work=Path(work),
                    max_in_memory_bytes=max_in_memory_bytes,
                )
        return _process_file(src, dst, allocate, tracking_tag, vr, max_in_memory_bytes)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
