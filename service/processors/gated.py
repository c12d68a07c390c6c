"""A file read while it is still being downloaded: every read waits until its bytes have landed."""

from __future__ import annotations

import os
from collections.abc import Callable

from service.processors.positioned import PositionedReader

Gate = Callable[[int, int], None]  # (start, end): return once those bytes may be read


class GatedFile(PositionedReader):
    """A read-only file whose reads wait until the bytes they cover have landed."""

    def __init__(self, fd: int, size: int, gate: Gate) -> None:
        super().__init__(size)
        self._fd = fd
        self._gate = gate

    def fileno(self) -> int:
        return self._fd

    def _read_range(self, start: int, end: int) -> bytes:
        self._gate(start, end)
        return os.pread(self._fd, end - start, start)
