"""Zip uploads: validate the archive, scan every member, allocate once, write a stamped copy.

Members are handled one at a time and never held in memory: each is expanded with bounded-chunk
copies into a temporary file (counting the bytes actually produced against the limits, so a
member whose header lies about its size cannot expand past them), processed into a second
temporary file, and copied in chunks into the output archive, which keeps member order, names,
timestamps, permissions and each member's compression method.

Before anything is expanded the central directory is checked (``directory.py``): names, links,
encryption, methods, counts, sizes, and members that overlap.

Members are shown in messages and reports by position and a known extension (``#3.dcm``), never
by name: exporters name folders and files after the patient ("DOE^JOHN/IM1", "ROE^JANE.19650312").

The scan pass expands every member once and the write pass expands the DICOM ones again instead
of keeping them all on disk between the passes: that costs a second decompression but bounds the
temporary disk to about two members besides the input and output archives.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from pydicom.tag import BaseTag

from service.errors import PermanentError, RetryableError, Stage
from service.processors.base import (
    MemberIssue,
    ProcessResult,
    SeriesKey,
    SeriesSummary,
    UidAllocator,
    ZipLimits,
)
from service.processors.directory import (
    INSTANCE_CODES,
    ZIP_MAGICS,
    Member,
    check_layout,
    duplicate_issues,
    is_system_file,
    reading_zip,
    validate_directory,
)
from service.processors.fastscan import quick_scan
from service.processors.gated import Gate
from service.processors.instance import (
    Instance,
    check_head_with_pydicom,
    check_spliced_head,
    scan_instance,
    stamp_instance,
)
from service.processors.reading import fail
from service.processors.splice import COPY_CHUNK, encode_element, encode_value, plan_splice, spliced_head
from service.processors.zipraw import (
    MemberSlice,
    data_offset,
    is_raw_member,
    replaced_head_crc,
    write_stored_member,
)

# A stored member is stamped in place when everything before its splice point fits this: the
# head is held in memory (headers are kilobytes; a larger one takes the extracting path).
MAX_RAW_HEAD = 16 * 1024 * 1024


class Budget:
    """Counts the bytes really produced, against the per-member header and the total limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, count: int, member: Member) -> None:
        """Count ``count`` bytes produced for ``member``; raise ERRS1016 past the total limit."""
        self.used += count
        if self.used > self.limit:
            raise fail("ERRS1016", f"member {member.label} expands past the allowed size")

    def pump(self, source: IO[bytes], target: IO[bytes], member: Member) -> None:
        """Copy one member in bounded chunks; raise ERRS1016 once it expands past a limit."""
        written = 0
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            self.used += len(chunk)
            if written > member.info.file_size or self.used > self.limit:
                raise fail("ERRS1016", f"member {member.label} expands past the declared or allowed size")
            target.write(chunk)


def _extract(zin: zipfile.ZipFile, member: Member, path: Path, budget: Budget) -> None:
    with reading_zip(), zin.open(member.info) as source, open(path, "wb") as target:
        budget.pump(source, target, member)
    with open(path, "rb") as extracted:
        if extracted.read(4) in ZIP_MAGICS:
            raise fail("ERRS1017", f"member {member.label} is a nested archive")


@dataclass(frozen=True, slots=True)
class Entry:
    """The scan pass's verdict on one member."""

    instance: Instance | None = None  # a DICOM instance to stamp
    issue: MemberIssue | None = None  # carried over unchanged, with this issue
    raw_offset: int | None = None  # a stored member stamped in place (zipraw): its data offset
    system: bool = False  # a system file, carried over unchanged without an issue


def _scan_raw(archive: BinaryIO, member: Member, tag: BaseTag) -> Entry | None:
    """The in-place scan of a stored member; None when it needs the extracting scan."""
    info = member.info
    offset = data_offset(archive, info)
    view = MemberSlice(archive, offset, info.file_size)
    if view.read(4) in ZIP_MAGICS:
        raise fail("ERRS1017", f"member {member.label} is a nested archive")
    quick = quick_scan(view, info.file_size, tag)
    if quick is None:
        return None
    plan = plan_splice(quick.layout, tag)
    if plan.cut_end > MAX_RAW_HEAD:
        return None
    instance = Instance(SeriesKey(quick.study_uid, quick.series_uid), quick.series_number, plan)
    return Entry(instance=instance, raw_offset=offset)


def scan_member(
    zin: zipfile.ZipFile,
    archive: BinaryIO,
    member: Member,
    work: Path,
    tag: BaseTag,
    budget: Budget,
    max_in_memory_bytes: int,
) -> Entry:
    info = member.info
    if info.is_dir():
        return Entry()
    if is_system_file(info.filename):
        return Entry(system=True)
    path = work / "scan.member"
    try:
        if is_raw_member(info):
            entry = _scan_raw(archive, member, tag)
            if entry is not None:
                return entry
        _extract(zin, member, path, budget)
        return Entry(instance=scan_instance(path, tag, max_in_memory_bytes=max_in_memory_bytes))
    except PermanentError as exc:
        if exc.code not in INSTANCE_CODES:
            raise
        code = "ERRS1013" if exc.code == "ERRS1012" else exc.code
        return Entry(issue=member.issue(code, f"{exc.message}; carried over unchanged"))
    finally:
        path.unlink(missing_ok=True)


def _summaries(entries: Sequence[Entry]) -> tuple[SeriesSummary, ...]:
    """One summary per series found by the scan, in order of first appearance in the archive."""
    counts: dict[SeriesKey, int] = {}
    numbers: dict[SeriesKey, int | None] = {}
    for entry in entries:
        if entry.instance is not None:
            key = entry.instance.key
            counts[key] = counts.get(key, 0) + 1
            numbers.setdefault(key, entry.instance.series_number)
    return tuple(SeriesSummary(key, numbers[key], count) for key, count in counts.items())


def stamped_series(
    series: Sequence[SeriesSummary], stamped: Mapping[SeriesKey, int]
) -> tuple[SeriesSummary, ...]:
    """The scan's series as written: each counts the instances that carry its ATRIUID in the
    output, and a series none of whose instances was stamped is left out."""
    return tuple(
        SeriesSummary(summary.key, summary.series_number, stamped[summary.key])
        for summary in series
        if stamped.get(summary.key, 0) > 0
    )


def no_instance_error(entries: Sequence[Entry]) -> PermanentError:
    broken = [
        e.issue.code for e in entries if e.issue and e.issue.code in ("ERRS1002", "ERRS1014", "ERRS1020")
    ]
    if broken:
        return fail(
            broken[0],
            f"no member could be stamped: {len(broken)} DICOM member(s) are corrupt, lack UIDs"
            " or are too large for the in-memory rewrite",
        )
    return fail("ERRS1011", "zip archive contains no DICOM instance")


def checked_uids(
    allocated: Mapping[SeriesKey, str], series: Sequence[SeriesSummary], vr: str
) -> dict[SeriesKey, str]:
    """The allocator's answer for every series, validated before anything is written.

    Raises ``RetryableError`` ERRS1007 for a series without a UID and ERRS1006 for an empty one
    (the tracking store answered wrongly: another delivery may get a sound answer), ``ValueError``
    for a UID the tag's VR cannot carry (a configuration or allocator bug).
    """
    uids: dict[SeriesKey, str] = {}
    for number, summary in enumerate(series, start=1):
        uid = allocated.get(summary.key)
        if uid is None:
            raise RetryableError("ERRS1007", f"no tracking UID for series #{number}", Stage.TRACKING)
        if not uid.strip():
            raise RetryableError("ERRS1006", f"empty tracking UID for series #{number}", Stage.TRACKING)
        encode_value(uid, vr)
        uids[summary.key] = uid
    return uids


def _out_info(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    out = zipfile.ZipInfo(info.filename, info.date_time)
    out.compress_type = info.compress_type
    out.external_attr = info.external_attr
    out.create_system = info.create_system
    out.comment = info.comment
    return out


class Writer:
    """The write pass: one output member per input member, in order."""

    def __init__(
        self,
        zin: zipfile.ZipFile,
        zout: zipfile.ZipFile,
        archive: BinaryIO,
        work: Path,
        limit: int,
        max_in_memory_bytes: int,
        gate: Gate | None = None,
    ) -> None:
        self.zin, self.zout, self.archive, self.work = zin, zout, archive, work
        self.gate = gate  # a download still landing: wait for a byte range before the kernel copies it
        self.max_in_memory_bytes = max_in_memory_bytes
        self.budget = Budget(limit)
        self.stamped: dict[SeriesKey, int] = {}  # instances carrying each series' ATRIUID
        self.fallbacks = 0
        self.deep_verified: set[SeriesKey] = set()  # pydicom re-reads one instance per series

    def _deep(self, key: SeriesKey) -> bool:
        if key in self.deep_verified:
            return False
        self.deep_verified.add(key)
        return True

    def _arrived(self, offset: int, count: int) -> None:
        if self.gate is not None:
            self.gate(offset, offset + count)

    def _count(self, instance: Instance) -> None:
        self.stamped[instance.key] = self.stamped.get(instance.key, 0) + 1

    def _target(self, info: zipfile.ZipInfo) -> IO[bytes]:
        return self.zout.open(_out_info(info), "w", force_zip64=True)

    def _store(self, info: zipfile.ZipInfo, path: Path) -> None:
        with open(path, "rb") as source, self._target(info) as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)

    def carry(self, member: Member) -> None:
        """Copy a member unchanged: a stored one as a byte range with its own CRC, any other
        decompressed (CRC verified) and recompressed with its own method, in bounded chunks.
        Either way its bytes count against the expansion limit (ERRS1016)."""
        info = member.info
        if info.is_dir():
            self.zout.writestr(_out_info(info), b"")
            return
        if is_raw_member(info):
            offset = data_offset(self.archive, info)
            self.budget.charge(info.file_size, member)
            self._arrived(offset, info.file_size)
            write_stored_member(
                self.zout, _out_info(info), b"", self.archive, offset, info.file_size, info.CRC
            )
            return
        with reading_zip(), self.zin.open(info) as source, self._target(info) as target:
            self.budget.pump(source, target, member)

    def stamp_raw(
        self, member: Member, instance: Instance, offset: int, tag: BaseTag, vr: str, uid: str
    ) -> MemberIssue | None:
        """Stamp a stored member in place: new head, tail copied by the kernel, CRC derived."""
        info = member.info
        plan = instance.plan
        assert plan is not None
        element = encode_element(
            tag, vr, encode_value(uid, vr), implicit_vr=plan.implicit_vr, little_endian=plan.little_endian
        )
        view = MemberSlice(self.archive, offset, info.file_size)
        old_head = view.read(plan.cut_end)
        following = view.read(4)
        head = spliced_head(old_head[: plan.cut_start], plan, element)
        try:
            check_spliced_head(head, following, plan, element)
            if self._deep(instance.key):
                check_head_with_pydicom(head, plan, tag, uid)
        except PermanentError as exc:
            self.carry(member)
            return member.issue(exc.code, f"{exc.message}; carried over unchanged")
        tail = info.file_size - plan.cut_end
        crc = replaced_head_crc(info.CRC, old_head, head, tail)
        self.budget.charge(len(head) + tail, member)
        self._arrived(offset + plan.cut_end, tail)
        write_stored_member(self.zout, _out_info(info), head, self.archive, offset + plan.cut_end, tail, crc)
        self._count(instance)
        return None

    def stamp(
        self, member: Member, instance: Instance, tag: BaseTag, vr: str, uid: str
    ) -> MemberIssue | None:
        """Stamp one DICOM member; on failure carry it over unchanged and return the issue."""
        src, dst = self.work / "in.member", self.work / "out.member"
        try:
            _extract(self.zin, member, src, self.budget)
            try:
                deep = self._deep(instance.key)
                fallback = stamp_instance(
                    src,
                    dst,
                    instance,
                    tag,
                    vr,
                    uid,
                    max_in_memory_bytes=self.max_in_memory_bytes,
                    deep_verify=deep,
                )
            except PermanentError as exc:
                self._store(member.info, src)
                return member.issue(exc.code, f"{exc.message}; carried over unchanged")
            self._store(member.info, dst)
            self._count(instance)
            self.fallbacks += int(fallback)
            return None
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)


def process_zip(
    src: Path,
    dst: Path,
    allocate: UidAllocator,
    *,
    tag: BaseTag,
    vr: str,
    limits: ZipLimits,
    work: Path,
    max_in_memory_bytes: int,
) -> ProcessResult:
    """Stamp every DICOM member of the zip ``src`` into a new zip at ``dst``.

    ``work`` is an existing private temporary directory; ``max_in_memory_bytes`` caps what a
    member's full rewrite may hold (ERRS1020, the member's issue). Raises ERRS1010 and
    ERRS1015-ERRS1018 for the archive as a whole, before anything is expanded where the central
    directory shows it (ERRS1002/ERRS1014 when its only DICOM members are broken, ERRS1011 when it
    has none), and ERRL3002 when series were allocated but no instance could be stamped (``dst``
    then holds partial output: ``process_upload`` removes it). Problems with single members become
    ``MemberIssue`` entries and the member is carried over unchanged; system files are carried
    over without one. ``allocate`` is called once, with every series, before anything is written;
    ``ValueError`` escapes when its answer lacks a series or holds an invalid UID, ``OSError`` for
    disk faults. The result's ``series`` counts what was stamped (see ``ProcessResult``).
    """
    with reading_zip():
        zin = zipfile.ZipFile(src)
    with zin, contextlib.ExitStack() as stack:
        with reading_zip():
            infos = zin.infolist()
        validate_directory(infos, limits)
        archive = stack.enter_context(open(src, "rb"))
        check_layout(archive, infos, zin.start_dir)
        members = [Member(position, info) for position, info in enumerate(infos, start=1)]
        scan_budget = Budget(limits.max_total_uncompressed)
        try:
            entries = [
                scan_member(zin, archive, member, work, tag, scan_budget, max_in_memory_bytes)
                for member in members
            ]
        except zipfile.BadZipFile:
            raise fail("ERRS1015", "zip archive is corrupt or unreadable") from None
        found = _summaries(entries)
        if not found:
            raise no_instance_error(entries)
        uids = checked_uids(allocate(found), found, vr)
        with zipfile.ZipFile(dst, "w", allowZip64=True) as zout, warnings.catch_warnings():
            # Duplicate member names are carried over as they came (and reported, ERRS1019);
            # zipfile warns about them.
            warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
            writer = Writer(zin, zout, archive, work, limits.max_total_uncompressed, max_in_memory_bytes)
            try:
                issues = _write_members(writer, members, entries, duplicate_issues(infos), uids, tag, vr)
            except zipfile.BadZipFile:
                raise fail("ERRS1015", "zip archive is corrupt or unreadable") from None
            zout.comment = zin.comment
    return zip_result(found, writer, entries, issues)


def zip_result(
    found: Sequence[SeriesSummary], writer: Writer, entries: Sequence[Entry], issues: Sequence[MemberIssue]
) -> ProcessResult:
    """The archive's result once every member is written: the series as stamped, or ERRL3002
    when series were found but none of their instances could be stamped."""
    series = stamped_series(found, writer.stamped)
    if not series:
        attempted = sum(1 for entry in entries if entry.instance is not None)
        raise fail("ERRL3002", f"none of the {attempted} DICOM member(s) could be stamped")
    return ProcessResult(
        series,
        tuple(issues),
        sum(writer.stamped.values()),
        len(entries),
        writer.fallbacks,
        system_files=sum(1 for entry in entries if entry.system),
    )


def _write_members(
    writer: Writer,
    members: Sequence[Member],
    entries: Sequence[Entry],
    duplicates: Mapping[int, MemberIssue],
    uids: Mapping[SeriesKey, str],
    tag: BaseTag,
    vr: str,
) -> list[MemberIssue]:
    issues: list[MemberIssue] = []
    for member, entry in zip(members, entries, strict=True):
        issues.extend(write_member(writer, member, entry, duplicates, uids, tag, vr))
    return issues


def write_member(
    writer: Writer,
    member: Member,
    entry: Entry,
    duplicates: Mapping[int, MemberIssue],
    uids: Mapping[SeriesKey, str],
    tag: BaseTag,
    vr: str,
) -> list[MemberIssue]:
    """Write one member as the scan decided: carried over, stamped in place or extracted and
    stamped. Returns its issues (a duplicate name, a member that could not be stamped)."""
    issues: list[MemberIssue] = []
    if member.position in duplicates:
        issues.append(duplicates[member.position])
    if entry.instance is None:
        writer.carry(member)
        issue = entry.issue
    elif entry.raw_offset is not None:
        uid = uids[entry.instance.key]
        issue = writer.stamp_raw(member, entry.instance, entry.raw_offset, tag, vr, uid)
    else:
        issue = writer.stamp(member, entry.instance, tag, vr, uids[entry.instance.key])
    if issue is not None:
        issues.append(issue)
    return issues
