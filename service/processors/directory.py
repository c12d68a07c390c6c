"""The zip's central directory: what the archive claims, checked before anything is expanded.

Names (absolute, escaping, links), encryption, methods, counts and sizes, and the layout itself:
every member's bytes, from its local header to the end of its data, must lie before the central
directory and apart from every other member's, so one stored payload listed many times cannot
multiply the output. Also here: how a member is labelled (position and a known extension, never
its name), which members are system files, and which share a name.
"""

from __future__ import annotations

import re
import stat
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from service.errors import PipelineError
from service.processors.base import MemberIssue, ZipLimits
from service.processors.reading import fail, is_os_fault
from service.processors.zipraw import data_start

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# What a single instance can be refused for; inside a zip these become the member's issue.
INSTANCE_CODES = frozenset({"ERRS1002", "ERRS1012", "ERRS1014", "ERRS1020"})
# The codes that refuse a whole archive (ERRL3002: series were allocated, yet no instance could be
# stamped).
ARCHIVE_CODES = frozenset(
    {"ERRS1010", "ERRS1011", "ERRS1015", "ERRS1016", "ERRS1017", "ERRS1018", "ERRL3002"}
)
# The ratio limit only applies above this size: tiny text files compress far beyond any sane
# ratio and are harmless.
RATIO_FLOOR = 1024 * 1024
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
# Files that operating systems and exporters add to an upload (lower case): carried over unchanged,
# counted, no issue. Besides these: anything under __MACOSX/ and AppleDouble "._*" files.
_SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "dicomdir"})
# Extensions a member may be shown with (lower case, without the dot). An allow-list: any other
# suffix may be part of a name chosen after the patient, such as a birth date.
KNOWN_EXTENSIONS = frozenset(
    {
        "dcm", "dicom", "dic", "dc3", "ima", "img", "hdr", "nii", "mha", "mhd", "nrrd", "raw", "bin",
        "dat", "gz", "zip", "tar", "7z", "rar", "txt", "xml", "json", "csv", "pdf", "rtf", "doc",
        "docx", "xls", "xlsx", "htm", "html", "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff",
        "ini", "db", "log",
    }
)  # fmt: skip
_DRIVE = re.compile(r"^[A-Za-z]:")


@contextmanager
def reading_zip() -> Iterator[None]:
    """Map failures while reading the archive to ERRS1015 (zipfile and its decompressors raise
    many types on hostile bytes); our own errors (a ``PermanentError``, or a ``RetryableError``
    from a download still arriving) and real disk faults pass through."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        if is_os_fault(exc):
            raise
        raise fail("ERRS1015", "zip archive is corrupt or unreadable") from None


def member_suffix(name: str) -> str:
    """A member's extension with its dot, lower case, when it is in ``KNOWN_EXTENSIONS``; else "".

    Exporters often name folders and files after the patient ("DOE^JOHN/IM1",
    "ROE^JANE.19650312"), so member names never go into messages, and of the suffix only a known
    extension does.
    """
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    return suffix if suffix[1:] in KNOWN_EXTENSIONS else ""


def member_label(position: int, name: str) -> str:
    """How a member appears in messages and reports: ``#N`` (1-based position) and a known
    extension (``#3.dcm``, ``#4``)."""
    return f"#{position}{member_suffix(name)}"


def is_system_file(name: str) -> bool:
    """True for a file an operating system or exporter adds to an upload: anything under
    ``__MACOSX/``, AppleDouble ``._*``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, and a
    media directory ``DICOMDIR`` (any case, at any level)."""
    parts = name.replace("\\", "/").rstrip("/").split("/")
    leaf = parts[-1]
    return "__MACOSX" in parts or leaf.startswith("._") or leaf.lower() in _SYSTEM_FILES


@dataclass(frozen=True, slots=True)
class Member:
    """One central directory entry and its 1-based position in the archive."""

    position: int
    info: zipfile.ZipInfo

    @property
    def label(self) -> str:
        return member_label(self.position, self.info.filename)

    def issue(self, code: str, message: str) -> MemberIssue:
        return MemberIssue(self.info.filename, code, message, self.position)


def _check_entry(member: Member, limits: ZipLimits) -> None:
    info, label = member.info, member.label
    name = info.filename.replace("\\", "/")
    if not name:
        raise fail("ERRS1015", "zip archive has a member without a name")
    if name.startswith("/") or _DRIVE.match(name) or ".." in name.split("/"):
        raise fail("ERRS1010", f"member {label} is absolute or escapes the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise fail("ERRS1010", f"member {label} is a symbolic link")
    if info.flag_bits & 0x1:
        raise fail("ERRS1018", f"member {label} is encrypted")
    if info.compress_type not in _METHODS:
        raise fail("ERRS1015", f"member {label} uses an unsupported compression")
    if info.file_size > RATIO_FLOOR and (
        info.compress_size <= 0 or info.file_size / info.compress_size > limits.max_ratio
    ):
        raise fail("ERRS1016", f"member {label} exceeds the compression ratio limit of {limits.max_ratio:g}")
    if not info.is_dir() and not is_system_file(name) and name.lower().endswith(".zip"):
        raise fail("ERRS1017", f"member {label} is a nested archive")


def validate_directory(infos: Sequence[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Check the central directory's entries before anything is expanded.

    Raises ERRS1010 (absolute or escaping name, symbolic link), ERRS1016 (member count, total
    expanded size or ratio over the limits), ERRS1018 (encrypted member), ERRS1017 (member named
    ``*.zip``) or ERRS1015 (unnamed member, unsupported compression method).
    """
    if len(infos) > limits.max_members:
        raise fail("ERRS1016", f"zip archive has {len(infos)} members; the limit is {limits.max_members}")
    for position, info in enumerate(infos, start=1):
        _check_entry(Member(position, info), limits)
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_uncompressed:
        raise fail(
            "ERRS1016", f"zip archive expands to {total} bytes; the limit is {limits.max_total_uncompressed}"
        )


_LOCAL_HEADER_SIZE = 30  # a local file header without its name and extra fields


def check_layout(archive: BinaryIO, infos: Sequence[zipfile.ZipInfo], directory_start: int) -> None:
    """Refuse overlapping members (a zip bomb that lists one payload many times) with ERRS1016.

    A member's range runs from its local header to the end of its compressed data, measured with
    the local header's own name and extra lengths. Every range must lie before the central
    directory (``directory_start``), and no two may share a byte. Reads only local headers;
    raises ERRS1015 for a missing or damaged one. Messages hold counts only.
    """
    ranges: list[tuple[int, int]] = []
    outside = 0
    for info in infos:
        if not 0 <= info.header_offset < directory_start:
            outside += 1
            continue
        with reading_zip():
            end = data_start(archive, info) + info.compress_size
        if end > directory_start:
            outside += 1
            continue
        ranges.append((info.header_offset, end))
    if outside:
        raise fail(
            "ERRS1016", f"{outside} of {len(infos)} zip member(s) lie outside the archive's member data"
        )
    ranges.sort()
    overlapping, reached = 0, 0
    for start, end in ranges:
        if start < reached:
            overlapping += 1
        reached = max(reached, end)
    if overlapping:
        raise fail("ERRS1016", f"{overlapping} of {len(infos)} zip member(s) overlap another member")


def directory_bounds(infos: Sequence[zipfile.ZipInfo], directory_start: int) -> list[int]:
    """``check_layout`` from the central directory alone, for an archive still arriving.

    Refuses with ERRS1016 what the directory shows (a local header outside the member data; two
    members whose ranges overlap even at their smallest: a header and the data, no name), and
    returns for each member the offset its data must end by: the next local header in offset
    order, or the central directory. ``check_member_end`` completes the check member by member
    once each local header has landed: together they refuse exactly what ``check_layout`` does.
    """
    outside = sum(1 for info in infos if not 0 <= info.header_offset < directory_start)
    if outside:
        raise fail(
            "ERRS1016", f"{outside} of {len(infos)} zip member(s) lie outside the archive's member data"
        )
    order = sorted(range(len(infos)), key=lambda index: infos[index].header_offset)
    bounds = [directory_start] * len(infos)
    overlapping, reached = 0, 0
    for rank, index in enumerate(order):
        info = infos[index]
        if info.header_offset < reached:
            overlapping += 1
        reached = max(reached, info.header_offset + _LOCAL_HEADER_SIZE + info.compress_size)
        if rank + 1 < len(order):
            bounds[index] = infos[order[rank + 1]].header_offset
    if overlapping:
        raise fail("ERRS1016", f"{overlapping} of {len(infos)} zip member(s) overlap another member")
    return bounds


def check_member_end(end: int, bound: int) -> None:
    """ERRS1016 when a member's data (measured with its local header) runs past ``bound``."""
    if end > bound:
        raise fail("ERRS1016", "a zip member overlaps the next member or the central directory")


def unzipped_path(name: str) -> str:
    """The file a member's name becomes when unzipped, folded as the labs' file systems fold it:
    ``\\`` is ``/`` (Windows), empty and ``.`` segments vanish (``a//b``, ``./a/./b``), Unicode
    is composed (macOS stores é as e + accent, NFD), and case is folded (Windows and macOS
    unzip case-insensitively: IM1.dcm and im1.DCM overwrite each other)."""
    segments = unicodedata.normalize("NFC", name.replace("\\", "/")).split("/")
    return "/".join(s for s in segments if s not in ("", ".")).casefold()


def duplicate_issues(infos: Sequence[zipfile.ZipInfo]) -> dict[int, MemberIssue]:
    """ERRS1019 for every member that unzips to the file an earlier member already unzipped to
    (``unzipped_path``), keyed by position; directories and system files are left out (unzipping
    them twice is harmless). The members themselves are carried over as they came."""
    first: dict[str, int] = {}
    issues: dict[int, MemberIssue] = {}
    for position, info in enumerate(infos, start=1):
        if info.is_dir() or is_system_file(info.filename.replace("\\", "/")):
            continue
        name = unzipped_path(info.filename)
        if name in first:
            member = Member(position, info)
            issues[position] = member.issue(
                "ERRS1019",
                f"member {member.label} has the name of member #{first[name]}; both carried over",
            )
        else:
            first[name] = position
    return issues
