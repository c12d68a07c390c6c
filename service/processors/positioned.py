"""A read-only, seekable file over bytes that a subclass fetches by range.

The scans read files through ``seek``/``read`` only; the places that hand them something other
than a plain file (a stored zip member's slice of the archive, an archive still downloading, an S3
object read in ranges) differ only in how bytes ``start``..``end`` are got.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO


class PositionedReader(io.RawIOBase, BinaryIO):
    """``size`` bytes read through ``_read_range(start, end)`` (end exclusive, within size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._position = 0

    def _read_range(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, count: int | None = -1) -> bytes:
        end = self.size if count is None or count < 0 else min(self.size, self._position + count)
        if end <= self._position:
            return b""
        data = self._read_range(self._position, end)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
