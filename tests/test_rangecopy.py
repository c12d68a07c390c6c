"""The tail copy: every shift and every path gives the same bytes, and a source shorter than the
range is an error, never a short output."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from service.processors import rangecopy
from service.processors.rangecopy import append_range

SOURCE = bytes(range(251)) * 12_000  # ~3 MB: more than one buffer, not a multiple of a page


def _copy(tmp_path: Path, head: bytes, offset: int, count: int) -> bytes:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(SOURCE)
    dst.write_bytes(head)
    in_fd, out_fd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
    try:
        append_range(in_fd, out_fd, offset, count)
    finally:
        os.close(in_fd)
        os.close(out_fd)
    return dst.read_bytes()


@pytest.mark.parametrize("shift", [0, 1, 12, 15, 16, 2048, 4095, 4096 + 12])
def test_every_shift_copies_the_range_exactly(tmp_path: Path, shift: int) -> None:
    offset = 5000
    head = b"h" * (offset + shift)
    out = _copy(tmp_path, head, offset, len(SOURCE) - offset)
    assert out == head + SOURCE[offset:]


def test_the_slow_shifts_take_the_buffer_and_the_others_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    real_send, real_buffered = rangecopy._send, rangecopy._buffered
    monkeypatch.setattr(rangecopy, "_send", lambda *a: used.append("send") or real_send(*a))
    monkeypatch.setattr(rangecopy, "_buffered", lambda *a: used.append("buffer") or real_buffered(*a))
    _copy(tmp_path, b"x" * 112, 100, 1000)  # destination 12 bytes ahead
    _copy(tmp_path, b"x" * 132, 100, 1000)  # 32 bytes ahead
    assert used == ["buffer", "send"]


def test_a_filesystem_refusing_sendfile_part_way_gets_the_rest_through_the_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.sendfile
    calls = 0

    def refuse_after_one(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.EINVAL, "sendfile refused")
        return real(out_fd, in_fd, offset, min(count, 100_000))

    monkeypatch.setattr(os, "sendfile", refuse_after_one)
    out = _copy(tmp_path, b"", 0, len(SOURCE))
    assert out == SOURCE and calls == 2


@pytest.mark.parametrize("head", [b"", b"x" * 12], ids=["sendfile", "buffer"])
def test_a_source_shorter_than_the_range_is_an_error(tmp_path: Path, head: bytes) -> None:
    with pytest.raises(OSError, match="shrank"):
        _copy(tmp_path, head, 0, len(SOURCE) + 10)


def test_a_failed_write_through_the_buffer_raises_the_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as raised:
        _copy(tmp_path, b"x" * 12, 0, 100_000)  # 12 bytes ahead: the buffered path
    assert raised.value.errno == errno.ENOSPC  # not a BufferError from the buffer's views
