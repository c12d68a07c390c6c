"""Where each top-level element of a DICOM file sits, read from the element headers on disk.

The walker reads tags, VRs and lengths only and seeks over every value, so it costs a few bytes of
memory per element whatever the size of the pixel data. It serves three purposes:

* the header splice needs the byte offset of the first top-level element after the tracking tag
  (and of an existing tracking element or group length) in the *original* bytes;
* a value that runs past the end of the file is a truncated file (``TruncatedError``), found before
  anything is written and without decoding pixel data;
* zero bytes after the last top-level element are padding (some writers pad files to a block
  size): the walk ends where they begin (``Layout.end``) and the splice copies them unchanged.
  Any other bytes there are walked as elements, so garbage keeps failing as before;
* anything that does not follow the plain Part 5 layout (unknown VR bytes, an implicit/explicit
  switch at the top level, tags out of order, a delimiter where an element should be) raises
  ``IrregularError``: the caller then leaves the file to pydicom's more forgiving full rewrite instead
  of splicing bytes it does not understand.

Nothing here decodes a value, so nothing here can leak a header value into a message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_DELIMITER_GROUP = 0xFFFE
_META_GROUP = 0x0002
# Sequences nested deeper than this are not seen in real files; a hostile file could recurse
# until the interpreter's stack runs out.
_MAX_DEPTH = 24

VR_BYTES = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)
LONG_VR_BYTES = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)


class StructureError(Exception):
    """The element structure cannot be walked; see the subclasses."""


class TruncatedError(StructureError):
    """An element header or value runs past the end of the data."""


class IrregularError(StructureError):
    """The bytes do not follow the layout the splice relies on (a full rewrite may still work)."""


@dataclass(frozen=True, slots=True)
class Element:
    """One top-level element: its tag and where its bytes are (``length`` may be undefined)."""

    tag: int
    start: int  # offset of the first byte of the element header
    value_offset: int
    length: int  # UNDEFINED_LENGTH for an undefined-length element
    end: int  # offset just past the element (after the delimiter for undefined length)


@dataclass(frozen=True, slots=True)
class Layout:
    """The top-level structure of one DICOM dataset stream."""

    implicit_vr: bool
    little_endian: bool
    dataset_start: int  # first byte after the preamble, prefix and file meta group
    size: int
    elements: tuple[Element, ...]  # in file order, strictly ascending tags
    end: int  # offset just past the last element: ``size`` unless zero padding follows


class _Walker:
    """Reads element headers through a window of the file held in memory.

    Skipping a value moves an integer, not the file; the file is read again only when the walk
    leaves the window, so a header of hundreds of elements costs a few reads.
    """

    _WINDOW = 8 * 1024
    _ZERO_CHUNK = 1024 * 1024

    def __init__(self, fp: BinaryIO, size: int, little_endian: bool) -> None:
        self._fp = fp
        self._size = size
        self._buffer = b""
        self._buffer_start = 0
        self._position = 0
        endian = "<" if little_endian else ">"
        self._tag_length = struct.Struct(f"{endian}HHL")
        self._tag_vr_short = struct.Struct(f"{endian}HH2sH")
        self._long = struct.Struct(f"{endian}L")

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int) -> None:
        self._position = offset

    def read(self, count: int) -> bytes:
        start = self._position - self._buffer_start
        if start < 0 or start + count > len(self._buffer):
            self._fp.seek(self._position)
            self._buffer = self._fp.read(max(count, self._WINDOW))
            self._buffer_start, start = self._position, 0
        data = self._buffer[start : start + count]
        if len(data) < count:
            raise TruncatedError
        self._position += count
        return data

    def skip(self, count: int) -> None:
        target = self._position + count
        if target > self._size:
            raise TruncatedError
        self._position = target

    def at_zero_tail(self) -> bool:
        """True when every byte from here to the end of the data is zero (trailing padding).

        Looks at the next header's worth of bytes first, so a real element costs nothing more;
        only a tail that starts with zeros is read through, in bounded chunks.
        """
        position = self._position
        peek = min(8, self._size - position)
        if self.read(peek).count(0) != peek:
            self._position = position
            return False
        self._position = position
        self._fp.seek(position + peek)
        remaining = self._size - position - peek
        while remaining > 0:
            chunk = self._fp.read(min(self._ZERO_CHUNK, remaining))
            if not chunk:
                raise TruncatedError  # the file shrank under the walk
            if chunk.count(0) != len(chunk):
                return False
            remaining -= len(chunk)
        return True

    def tag_and_length(self) -> tuple[int, int]:
        """Item and delimiter headers: tag + 4-byte length, no VR in any encoding."""
        group, elem, length = self._tag_length.unpack(self.read(8))
        return group << 16 | elem, length

    def element_header(self, implicit: bool) -> tuple[int, bytes | None, int]:
        """Read one element header; return tag, VR bytes (None if implicit) and length."""
        raw = self.read(8)
        if implicit:
            group, elem, length = self._tag_length.unpack(raw)
            return group << 16 | elem, None, length
        group, elem, vr, length = self._tag_vr_short.unpack(raw)
        if group == _DELIMITER_GROUP:
            # Items and delimiters never carry a VR; report them as the tag + 4-byte length form.
            group, elem, length = self._tag_length.unpack(raw)
            return group << 16 | elem, None, length
        if vr not in VR_BYTES:
            raise IrregularError
        if vr in LONG_VR_BYTES:
            (length,) = self._long.unpack(self.read(4))
        return group << 16 | elem, vr, length

    def looks_explicit(self) -> bool:
        """Peek at the next element: do bytes 4-5 hold a known VR?"""
        start = self._position
        try:
            raw = self.read(6)
        except TruncatedError:
            return False
        finally:
            self._position = start
        return raw[4:6] in VR_BYTES

    def items(self, implicit: bool, depth: int, *, unknown: bool = False) -> None:
        """Skip the items of an undefined-length value, up to and including its delimiter."""
        if depth > _MAX_DEPTH:
            raise IrregularError
        while True:
            tag, length = self.tag_and_length()
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise IrregularError
            if length == UNDEFINED_LENGTH:
                self.nested_dataset(implicit, depth, unknown=unknown)
            else:
                self.skip(length)

    def nested_dataset(self, implicit: bool, depth: int, *, unknown: bool = False) -> None:
        """Skip an undefined-length item's dataset, up to and including its delimiter."""
        # Some writers switch to implicit VR inside sequences of an explicit VR dataset, and
        # undefined-length UN content is implicit VR by the standard though not always in
        # practice: decide per item from its first element, as pydicom does.
        if unknown or not implicit:
            implicit = not self.looks_explicit()
        while True:
            start = self._position
            tag, length = self.tag_and_length()
            if tag == _ITEM_END:
                return
            if tag >> 16 == _DELIMITER_GROUP:
                raise IrregularError
            self.seek(start)
            _, vr, length = self.element_header(implicit)
            if length == UNDEFINED_LENGTH:
                self.items(implicit, depth + 1, unknown=vr == b"UN")
            else:
                self.skip(length)


def meta_end(fp: BinaryIO, size: int, start: int) -> int:
    """Offset of the first byte after the file meta group (0002,eeee) that begins at ``start``.

    The meta group is always explicit VR little endian. Raises ``TruncatedError`` or ``IrregularError``.
    """
    walker = _Walker(fp, size, little_endian=True)
    walker.seek(start)
    position = start
    while size - position >= 8:
        group = struct.unpack("<H", walker.read(2))[0]
        walker.seek(position)
        if group != _META_GROUP:
            break
        _, _, length = walker.element_header(implicit=False)
        if length == UNDEFINED_LENGTH:
            raise IrregularError
        walker.skip(length)
        position = walker.tell()
    return position


def walk_dataset(fp: BinaryIO, size: int, start: int, *, implicit_vr: bool, little_endian: bool) -> Layout:
    """Walk the top-level elements from ``start`` to the end of the data.

    A tail of zero bytes after the last element (of any length, odd or shorter than a header) is
    padding: the walk stops there and ``Layout.end`` says where it begins. Raises
    ``TruncatedError`` when a header or value runs past ``size`` (including a partial header of
    non-zero bytes at the end) and ``IrregularError`` when the bytes do not follow the expected
    encoding or tag order.
    """
    walker = _Walker(fp, size, little_endian)
    walker.seek(start)
    elements: list[Element] = []
    previous = -1
    position = start
    while position < size:
        if walker.at_zero_tail():
            break
        tag, vr, length = walker.element_header(implicit_vr)
        if tag >> 16 == _DELIMITER_GROUP or tag <= previous:
            raise IrregularError
        value_offset = walker.tell()
        if length == UNDEFINED_LENGTH:
            walker.items(implicit_vr, depth=1, unknown=vr == b"UN")
        else:
            walker.skip(length)
        end = walker.tell()
        elements.append(Element(tag, position, value_offset, length, end))
        previous = tag
        position = end
    return Layout(implicit_vr, little_endian, start, size, tuple(elements), position)


def walk_file(fp: BinaryIO, size: int, *, implicit_vr: bool, little_endian: bool) -> Layout:
    """Walk a whole file: optional preamble and ``DICM``, the meta group, then the dataset."""
    fp.seek(0)
    head = fp.read(132)
    start = 132 if len(head) == 132 and head[128:132] == b"DICM" else 0
    dataset_start = meta_end(fp, size, start)
    return walk_dataset(fp, size, dataset_start, implicit_vr=implicit_vr, little_endian=little_endian)
