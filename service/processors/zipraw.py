"""Stored zip members without a pass over their bytes in Python.

A stored (uncompressed) member is a plain byte range of the archive. Its DICOM header is read and
walked in place (``MemberSlice``), and the output member is written as: a local header, the new
head (the bytes before the splice point, plus the tracking element), then the original tail copied
from archive to archive inside the kernel (``rangecopy``). Its CRC-32 is not recomputed over the
data: CRC-32 is linear, so the new CRC follows from the stored one and the two (small) heads.

The trade-off, decided here: the stored CRC of the input member is trusted, not re-verified. A
member whose bytes were damaged after it was zipped keeps its damage *and* a CRC that does not
match it, so the labs' unzip still reports the corruption; nothing is hidden. Compressed members
take the ordinary path (decompress, verify the CRC, recompress with the same method).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from typing import BinaryIO

from service.processors.positioned import PositionedReader
from service.processors.rangecopy import append_range

_LOCAL_HEADER = struct.Struct("<4s5HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_POLY = 0xEDB88320  # CRC-32 (zip, zlib), reflected


def _multmodp(a: int, b: int) -> int:
    """a x b modulo the CRC-32 polynomial, reflected bit order (zlib's ``multmodp``)."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if (a & (m - 1)) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table = [0] * 32
    p = 1 << 30  # x^1
    table[0] = p
    for n in range(1, 32):
        p = _multmodp(p, p)
        table[n] = p
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial."""
    p = 1 << 31  # x^0 == 1
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B), as zlib's ``crc32_combine``."""
    return _multmodp(_x2nmodp(length2, 3), crc1) ^ crc2


def replaced_head_crc(stored_crc: int, old_head: bytes, new_head: bytes, tail_length: int) -> int:
    """CRC-32 of ``new_head + tail`` given the CRC of ``old_head + tail``, without reading the tail."""
    shift = _x2nmodp(tail_length, 3)
    return stored_crc ^ _multmodp(shift, zlib.crc32(old_head) ^ zlib.crc32(new_head))


def data_start(archive: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a member's data starts: after its local header, whose name and extra lengths may
    differ from the central directory's. Raises ``zipfile.BadZipFile`` for a missing or damaged
    local header."""
    if info.header_offset < 0:
        raise zipfile.BadZipFile("negative local header offset")
    archive.seek(info.header_offset)
    raw = archive.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise zipfile.BadZipFile("truncated local header")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != _LOCAL_SIGNATURE:
        raise zipfile.BadZipFile("bad local header signature")
    name_length, extra_length = int(fields[-2]), int(fields[-1])
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def data_offset(archive: BinaryIO, info: zipfile.ZipInfo) -> int:
    """``data_start``, checked: raises ``zipfile.BadZipFile`` when the data runs past the end of
    the archive."""
    start = data_start(archive, info)
    if start + info.compress_size > os.fstat(archive.fileno()).st_size:
        raise zipfile.BadZipFile("member data runs past the end of the archive")
    return start


def is_raw_member(info: zipfile.ZipInfo) -> bool:
    """A member that can be read and copied as a byte range: stored, not encrypted."""
    return (
        info.compress_type == zipfile.ZIP_STORED
        and not info.flag_bits & 0x1
        and info.compress_size == info.file_size
        and not info.is_dir()
    )


class MemberSlice(PositionedReader):
    """A read-only, seekable view of one stored member's bytes inside the archive."""

    def __init__(self, archive: BinaryIO, start: int, size: int) -> None:
        super().__init__(size)
        self._archive = archive
        self._start = start

    def _read_range(self, start: int, end: int) -> bytes:
        self._archive.seek(self._start + start)
        return self._archive.read(end - start)


def write_stored_member(
    zout: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    head: bytes,
    archive: BinaryIO,
    tail_offset: int,
    tail_length: int,
    crc: int,
) -> None:
    """Append a stored member made of ``head`` and ``tail_length`` bytes of ``archive`` from
    ``tail_offset``, with the given CRC, copying the tail inside the kernel.

    Works at the level of zipfile's own ``write``/``mkdir``: local header at ``start_dir``, entry
    registered for the central directory written at close.
    """
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = info.compress_size = len(head) + tail_length
    info.CRC = crc
    zip64 = info.file_size > zipfile.ZIP64_LIMIT
    fp = zout.fp
    assert fp is not None
    fp.seek(zout.start_dir)
    info.header_offset = fp.tell()
    fp.write(info.FileHeader(zip64))
    fp.write(head)
    fp.flush()
    end = fp.tell() + tail_length
    append_range(archive.fileno(), fp.fileno(), tail_offset, tail_length)
    fp.seek(end)  # resynchronise the buffered writer with the descriptor
    zout.start_dir = end
    zout.filelist.append(info)
    zout.NameToInfo[info.filename] = info
    # So close() writes the central directory, as zipfile's own write() arranges.
    zout._didModify = True  # type: ignore[attr-defined]  # private flag; the tests cover it
