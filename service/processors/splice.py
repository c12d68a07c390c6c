"""Header splice: write one element into a DICOM file without decoding or loading the rest.

The output is the input's bytes up to the insertion point, the newly encoded tracking element, and
the input's remaining bytes copied unchanged in bounded chunks. Offsets come from ``layout``, which
reads element lengths from the bytes on disk; nothing after the insertion point is ever parsed, so
pixel data of any size and any compression passes through untouched and memory stays flat.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from service.processors.layout import UNDEFINED_LENGTH, Element, Layout
from service.processors.rangecopy import append_range
from service.processors.reading import fail

COPY_CHUNK = 1024 * 1024  # bounded copy buffer: memory stays flat whatever the file size
# Everything before the splice point is built in memory up to this size (headers are kilobytes);
# a larger head is streamed.
MAX_HEAD_IN_MEMORY = 16 * 1024 * 1024

# VRs a text UID can be written into; anything else is a configuration mistake.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "UI": 64, "PN": 64, "ST": 1024, "LT": 10240}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


def check_tracking_tag(tag: BaseTag) -> str:
    """Return the VR to write ``tag`` with: the dictionary VR, or LO for a tag not in it.

    Raises ``ValueError`` for a tag that cannot carry the UID: file meta or command groups,
    group lengths, item/delimiter tags, pixel data, or a dictionary VR that is not text.
    """
    if tag.group <= 0x0002 or tag.element == 0 or tag.group in (0xFFFE, 0x7FE0, 0xFFFC):
        raise ValueError(f"tracking tag {tag} cannot be written into a dataset")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "LO"
    if vr not in _TEXT_VRS:
        raise ValueError(f"tracking tag {tag} has VR {vr}, which cannot hold a UID string")
    return vr


def encode_value(value: str, vr: str) -> bytes:
    """Encode the tracking UID as the element value, padded to even length for its VR.

    Raises ``ValueError`` for a value that is empty, not printable ASCII, contains the value
    separator, or is longer than the VR allows (an allocator bug, not an input problem).
    """
    if not value or not value.isascii() or not value.isprintable() or "\\" in value:
        raise ValueError("tracking UID must be non-empty printable ASCII without a backslash")
    limit = _MAX_LENGTH.get(vr)
    if limit is not None and len(value) > limit:
        raise ValueError(f"tracking UID is longer than the {limit} characters {vr} allows")
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def encode_element(
    tag: BaseTag, vr: str, value: bytes, *, implicit_vr: bool, little_endian: bool = True
) -> bytes:
    """Encode a whole element (header + value) in the dataset's own encoding."""
    endian = "<" if little_endian else ">"
    if implicit_vr:
        header = struct.pack(f"{endian}HHL", tag.group, tag.element, len(value))
    elif vr in _LONG_VRS:
        header = struct.pack(f"{endian}HH2sHL", tag.group, tag.element, vr.encode(), 0, len(value))
    else:
        header = struct.pack(f"{endian}HH2sH", tag.group, tag.element, vr.encode(), len(value))
    return header + value


def _copy_range(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    """Copy exactly ``count`` bytes in bounded chunks; a short read means the file changed."""
    while count > 0:
        chunk = src.read(min(COPY_CHUNK, count))
        if not chunk:
            raise OSError("source file shrank while it was being copied")
        dst.write(chunk)
        count -= len(chunk)


@dataclass(frozen=True, slots=True)
class SplicePlan:
    """Where the tracking element goes in one file: all the splice needs, a few ints.

    Kept instead of the whole ``Layout`` so a zip of thousands of members costs little memory
    between the scan and the write pass.
    """

    size: int  # the file size the plan was made for
    cut_start: int  # bytes before this are copied unchanged
    cut_end: int  # bytes from here on are copied unchanged (== cut_start for an insert)
    group_length_offset: int | None  # offset of the tag group's 4-byte group length value
    implicit_vr: bool
    little_endian: bool
    dataset_start: int  # first byte after the file meta group
    dataset_end: int  # first byte of trailing zero padding (``size`` when there is none)


def _find(layout: Layout, tag: int) -> Element | None:
    return next((element for element in layout.elements if element.tag == tag), None)


def plan_splice(layout: Layout, tag: BaseTag) -> SplicePlan:
    """Decide the byte range of the original file that the new element replaces.

    An existing tracking element is replaced in place; otherwise the element goes before the
    first top-level element with a larger tag, or at the end of the dataset (before any trailing
    zero padding, which stays at the end of the file).
    """
    existing = _find(layout, int(tag))
    if existing is not None:
        cut_start, cut_end = existing.start, existing.end
    else:
        after = next((element for element in layout.elements if element.tag > tag), None)
        cut_start = cut_end = after.start if after is not None else layout.end
    group_length = _find(layout, tag.group << 16)
    offset = group_length.value_offset if group_length is not None and group_length.length == 4 else None
    return SplicePlan(
        layout.size,
        cut_start,
        cut_end,
        offset,
        layout.implicit_vr,
        layout.little_endian,
        layout.dataset_start,
        layout.end,
    )


def spliced_head(prefix: bytes, plan: SplicePlan, element: bytes) -> bytes:
    """The new bytes before the unchanged tail: ``prefix`` (the input up to ``plan.cut_start``)
    with its group length corrected, then ``element``."""
    delta = len(element) - (plan.cut_end - plan.cut_start)
    offset = plan.group_length_offset
    if offset is None or not delta:
        return prefix + element
    endian = "<" if plan.little_endian else ">"
    (old,) = struct.unpack_from(f"{endian}L", prefix, offset)
    patched = struct.pack(f"{endian}L", (old + delta) % (UNDEFINED_LENGTH + 1))
    return prefix[:offset] + patched + prefix[offset + 4 :] + element


def splice_file(src: Path, dst: Path, plan: SplicePlan, element: bytes) -> bytes | None:
    """Write ``src`` to ``dst`` with ``element`` in place of the plan's byte range, and check it.

    A group length element of the tag's group, if present, is corrected by the change in size so
    the group stays self-consistent. The written file is checked for its size and for the
    element's bytes where the plan put them, followed by a later tag (``check_placed``). Returns
    the new head (everything before the unchanged tail) when it was small enough to build in
    memory, else None. Raises ERRS1008 when the check fails, ``OSError`` on disk problems (or when
    ``src`` is not the size the plan was made for); ``dst`` is left for the caller to remove.
    """
    if src.stat().st_size != plan.size:
        raise OSError(f"{src.name} changed size after it was scanned")
    head: bytes | None = None
    with open(src, "rb") as source, open(dst, "w+b") as target:
        if plan.cut_start <= MAX_HEAD_IN_MEMORY:
            head = spliced_head(source.read(plan.cut_start), plan, element)
            target.write(head)
        else:
            _stream_head(source, target, plan, element)
        target.flush()
        copy_tail(source, target, plan.cut_end, plan.size - plan.cut_end)
        expected = plan.size + plan.cut_start + len(element) - plan.cut_end
        if os.fstat(target.fileno()).st_size != expected:
            raise fail("ERRS1008", "written instance has the wrong size")
        found = os.pread(target.fileno(), len(element) + 4, plan.cut_start)
    check_placed(found[: len(element)], found[len(element) :], plan, element)
    return head


def _stream_head(source: BinaryIO, target: BinaryIO, plan: SplicePlan, element: bytes) -> None:
    delta = len(element) - (plan.cut_end - plan.cut_start)
    endian = "<" if plan.little_endian else ">"
    if plan.group_length_offset is not None and delta:
        # Rewrite only the 4-byte UL value; the element header stays as it was.
        _copy_range(source, target, plan.group_length_offset)
        (old,) = struct.unpack(f"{endian}L", source.read(4))
        target.write(struct.pack(f"{endian}L", (old + delta) % (UNDEFINED_LENGTH + 1)))
        _copy_range(source, target, plan.cut_start - plan.group_length_offset - 4)
    else:
        _copy_range(source, target, plan.cut_start)
    target.write(element)


def check_placed(found: bytes, following: bytes, plan: SplicePlan, element: bytes) -> None:
    """The written bytes at the splice point are ``element``, and the next element (if any) has
    a larger tag than the tracking tag; after the dataset's last element only the input's zero
    padding may follow. Raises ERRS1008."""
    if found != element:
        raise fail("ERRS1008", "written instance does not carry the tracking UID where planned")
    if plan.cut_end >= plan.dataset_end:
        if following.count(0) != len(following):
            raise fail("ERRS1008", "written instance has bytes other than padding after the tracking UID")
    elif len(following) >= 4:
        endian = "<" if plan.little_endian else ">"
        group, number = struct.unpack(f"{endian}HH", following[:4])
        own_group, own_number = struct.unpack(f"{endian}HH", element[:4])
        if (group, number) <= (own_group, own_number):
            raise fail("ERRS1008", "written instance has elements out of order after the tracking UID")


def copy_tail(source: BinaryIO, target: BinaryIO, offset: int, count: int) -> None:
    """Copy ``count`` bytes of ``source`` from ``offset`` to the end of ``target``, inside the
    kernel where that is fast (``rangecopy``), so the pixel data never passes through Python.
    ``target`` must have no buffered data."""
    append_range(source.fileno(), target.fileno(), offset, count)
    target.seek(0, os.SEEK_END)
