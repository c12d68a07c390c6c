"""A file read while it is still being downloaded: every read waits until its bytes have landed."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, BinaryIO

Gate = Callable[[int, int], None]  # (start, end): return once those bytes may be read


class GatedFile(io.RawIOBase, BinaryIO):
    """A read-only file whose reads wait until the bytes they cover have landed."""

    def __init__(self, fd: int, size: int, gate: Gate) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._gate = gate
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, count: int = -1) -> bytes:
        end = self._size if count is None or count < 0 else min(self._size, self._position + count)
        if end <= self._position:
            return b""
        self._gate(self._position, end)
        data = os.pread(self._fd, end - self._position, self._position)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
