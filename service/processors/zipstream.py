"""A zip stamped in one pass while it is still arriving, each member written as soon as it is read.

``archive.process_zip`` scans every member, allocates once, then writes: it needs the whole
archive first. Here the archive is a download in progress (``gate`` waits for a byte range to
land, its central directory comes first) and the output is being uploaded as it grows
(``on_written`` is told, after each member, how many bytes of the output are final). So each
member is checked, scanned, stamped and written in order as its bytes arrive; a series' ATRIUID
is allocated when its first instance is found (the allocator is idempotent per series, and the
job's completion trues every series' count). The checks are ``process_zip``'s, in the same order
for each member; what the central directory shows is refused before any member is read.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydicom.tag import BaseTag

from service.processors.archive import (
    Budget,
    Entry,
    Writer,
    checked_uids,
    no_instance_error,
    scan_member,
    write_member,
    zip_result,
)
from service.processors.base import (
    MemberIssue,
    ProcessResult,
    SeriesKey,
    SeriesSummary,
    UidAllocator,
    ZipLimits,
)
from service.processors.directory import (
    Member,
    check_member_end,
    directory_bounds,
    duplicate_issues,
    reading_zip,
    validate_directory,
)
from service.processors.gated import Gate, GatedFile
from service.processors.reading import fail
from service.processors.zipraw import data_start


def process_arriving_zip(
    src: Path,
    dst: Path,
    allocate: UidAllocator,
    *,
    tag: BaseTag,
    vr: str,
    limits: ZipLimits,
    work: Path,
    max_in_memory_bytes: int,
    gate: Gate,
    on_written: Callable[[int], None],
) -> ProcessResult:
    """``process_zip`` for a zip whose bytes ``src`` is still receiving (see the module).

    Raises what ``process_zip`` raises, for the same archives; an archive-level fault found at a
    member (a nested archive, overlapping members the directory alone did not show, the expansion
    limit) is raised when that member is reached, with the output incomplete (the caller discards
    it and aborts its upload). Also raises what ``gate`` or ``on_written`` raise.
    """
    fd = os.open(src, os.O_RDONLY)
    try:
        archive = GatedFile(fd, os.fstat(fd).st_size, gate)
        with reading_zip():
            zin = zipfile.ZipFile(archive)
        with zin:
            return _stream(
                zin, archive, dst, allocate, tag, vr, limits, work, max_in_memory_bytes, gate, on_written
            )
    except zipfile.BadZipFile:
        raise fail("ERRS1015", "zip archive is corrupt or unreadable") from None
    finally:
        os.close(fd)


def _stream(
    zin: zipfile.ZipFile,
    archive: GatedFile,
    dst: Path,
    allocate: UidAllocator,
    tag: BaseTag,
    vr: str,
    limits: ZipLimits,
    work: Path,
    max_in_memory_bytes: int,
    gate: Gate,
    on_written: Callable[[int], None],
) -> ProcessResult:
    with reading_zip():
        infos = zin.infolist()
    validate_directory(infos, limits)
    bounds = directory_bounds(infos, zin.start_dir)
    duplicates = duplicate_issues(infos)
    scan_budget = Budget(limits.max_total_uncompressed)
    uids: dict[SeriesKey, str] = {}
    found: list[SeriesSummary] = []  # in order of first appearance
    entries: list[Entry] = []
    issues: list[MemberIssue] = []
    with zipfile.ZipFile(dst, "w", allowZip64=True) as zout, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        limit = limits.max_total_uncompressed
        writer = Writer(zin, zout, archive, work, limit, max_in_memory_bytes, gate)
        for position, info in enumerate(infos, start=1):
            member = Member(position, info)
            with reading_zip():
                check_member_end(data_start(archive, info) + info.compress_size, bounds[position - 1])
            entry = scan_member(zin, archive, member, work, tag, scan_budget, max_in_memory_bytes)
            entries.append(entry)
            if entry.instance is not None and entry.instance.key not in uids:
                summary = SeriesSummary(entry.instance.key, entry.instance.series_number, 1)
                uids.update(checked_uids(allocate((summary,)), (summary,), vr))
                found.append(summary)
            issues.extend(write_member(writer, member, entry, duplicates, uids, tag, vr))
            _commit(zout, on_written)
        zout.comment = zin.comment
    if not found:
        raise no_instance_error(entries)
    return zip_result(found, writer, entries, issues)


def _commit(zout: zipfile.ZipFile, on_written: Callable[[int], None]) -> None:
    """Everything before the next local header is final once a member is written."""
    assert zout.fp is not None
    with contextlib.suppress(AttributeError):
        zout.fp.flush()
    on_written(zout.start_dir)
