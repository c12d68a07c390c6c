"""The fast path of the scan: the common file read with ``struct`` alone, no pydicom.

Most uploads are Part 10 files in a little-endian transfer syntax whose element headers walk
cleanly. For those, one walk of the element headers (``layout``) gives everything the pipeline
needs: where to splice, the series UIDs, the series number, and the pixel description to check
the Pixel Data length against. Values are read straight from their offsets (a few bytes each).

Anything unusual (no ``DICM`` prefix, deflated or big-endian syntax, bytes that do not walk, a UID
that does not decode) returns ``None``, and the caller takes the thorough pydicom-based scan,
which classifies the file. The fast path never decides that a file is bad, with one exception:
native pixel data shorter than its own header implies (ERRS1002).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import BinaryIO

from pydicom.tag import BaseTag

from service.processors.layout import LONG_VR_BYTES, VR_BYTES, Layout, StructureError, walk_dataset
from service.processors.reading import BIG_ENDIAN, DEFLATED, IMPLICIT_LITTLE, fail

TRANSFER_SYNTAX = 0x00020010
SOP_CLASS_UID = 0x00080016
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
SAMPLES_PER_PIXEL = 0x00280002
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
BITS_ALLOCATED = 0x00280100
PIXEL_DATA = 0x7FE00010
NATIVE_SYNTAXES = frozenset({IMPLICIT_LITTLE, "1.2.840.10008.1.2.1"})
_UNSPLICEABLE = frozenset({DEFLATED, BIG_ENDIAN})
_MAX_VALUE = 1024  # the values read here are short strings or 2-byte integers
_INTEGER = re.compile(rb"^\s*[+-]?\d{1,12}\s*$")
_META_HEADER = struct.Struct("<HH2sH")


def read_meta_syntax(fp: BinaryIO, size: int) -> tuple[str, int] | None:
    """(transfer syntax UID, dataset offset) of a Part 10 file, or None if it is not one."""
    fp.seek(0)
    head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    position, syntax = 132, None
    while position + 8 <= size:
        fp.seek(position)
        raw = fp.read(12)
        group, element, vr, length = _META_HEADER.unpack(raw[:8])
        if group != 0x0002:
            break
        if vr not in VR_BYTES:
            # pydicom (and so the labs' readers) would take this meta group for implicit VR and
            # read a length out of the VR bytes: leave the file to the thorough scan to classify.
            return None
        if vr in LONG_VR_BYTES:
            if len(raw) < 12:
                return None
            (length,) = struct.unpack("<L", raw[8:12])
            value_offset = position + 12
        else:
            value_offset = position + 8
        if length == 0xFFFFFFFF or value_offset + length > size:
            return None
        if (group << 16 | element) == TRANSFER_SYNTAX and length <= 64:
            fp.seek(value_offset)
            syntax = fp.read(length).rstrip(b"\0 ").decode("ascii", "replace")
        position = value_offset + length
    return (syntax, position) if syntax else None


def _value(fp: BinaryIO, layout: Layout, tag: int) -> bytes | None:
    element = next((e for e in layout.elements if e.tag == tag), None)
    if element is None or element.length > _MAX_VALUE:
        return None
    fp.seek(element.value_offset)
    return fp.read(element.length)


def _uid(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip(b" \0")
    if not 0 < len(value) <= 64 or b"\\" in value or not value.isascii():
        return None
    text = value.decode("ascii")
    return text if text.isprintable() else None


def _integer(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    value = raw.strip(b" \0")
    return int(value) if _INTEGER.match(value) else None


def _unsigned_short(raw: bytes | None) -> int | None:
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


class QuickScan:
    """What the fast path learned: the series, the layout to plan the splice from."""

    __slots__ = ("layout", "series_number", "series_uid", "study_uid")

    def __init__(self, layout: Layout, study_uid: str, series_uid: str, series_number: int | None) -> None:
        self.layout = layout
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.series_number = series_number


def quick_scan(fp: BinaryIO, size: int, tag: BaseTag) -> QuickScan | None:
    """Scan a common file with ``struct`` alone; None means "take the thorough scan".

    Raises ERRS1002 when native pixel data is shorter than Rows x Columns x samples x bits x
    frames implies; ``OSError`` for disk faults.
    """
    meta = read_meta_syntax(fp, size)
    if meta is None or meta[0] in _UNSPLICEABLE:
        return None
    syntax, dataset_start = meta
    try:
        layout = walk_dataset(
            fp, size, dataset_start, implicit_vr=syntax == IMPLICIT_LITTLE, little_endian=True
        )
    except StructureError:
        return None
    study, series = _uid(_value(fp, layout, STUDY_UID)), _uid(_value(fp, layout, SERIES_UID))
    if study is None or series is None:
        return None
    if syntax in NATIVE_SYNTAXES:
        check_native_pixel_length(layout, {t: _value(fp, layout, t) for t in PIXEL_DESCRIPTION})
    return QuickScan(layout, study, series, _integer(_value(fp, layout, SERIES_NUMBER)))


PHOTOMETRIC = 0x00280004
PIXEL_DESCRIPTION = (SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED)
# 4:2:2 subsampled colour stores two samples' worth per pixel, not three.
_SUBSAMPLED = (b"YBR_FULL_422", b"YBR_PARTIAL_422")


def check_native_pixel_length(layout: Layout, values: Mapping[int, bytes | None]) -> None:
    """Native (uncompressed) pixel data must hold what its description implies: ERRS1002 if short.

    Skipped when the description is incomplete (the file may be odd but it is not provably cut).
    """
    pixel = next((e for e in layout.elements if e.tag == PIXEL_DATA), None)
    rows, columns = _unsigned_short(values.get(ROWS)), _unsigned_short(values.get(COLUMNS))
    bits = _unsigned_short(values.get(BITS_ALLOCATED))
    if pixel is None or pixel.length == 0xFFFFFFFF or not rows or not columns or not bits:
        return
    samples = _unsigned_short(values.get(SAMPLES_PER_PIXEL)) or 1
    if (values.get(PHOTOMETRIC) or b"").strip(b" \0") in _SUBSAMPLED:
        samples = 2
    frames = _integer(values.get(NUMBER_OF_FRAMES)) or 1
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if pixel.length < expected:
        raise fail("ERRS1002", f"pixel data holds {pixel.length} bytes where the header implies {expected}")
