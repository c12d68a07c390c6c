"""CRC-32 (the zlib / S3 ``CRC32`` polynomial) of a concatenation from its pieces' CRCs.

S3 reports a CRC-32 for each part it copies; the whole object's CRC-32 follows from them and their
lengths without the bytes (zlib's ``crc32_combine``, which Python's ``zlib`` does not expose).
"""

from __future__ import annotations

import base64
import zlib

_POLYNOMIAL = 0xEDB88320  # reflected


def _times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _squared(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[row]) for row in range(32)]


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC-32 of ``A + B`` given ``crc32(A)``, ``crc32(B)`` and ``len(B)``: ``first`` is advanced
    over ``second_length`` zero bytes by repeated squaring of the one-zero-bit operator."""
    if second_length <= 0:
        return first
    odd = [_POLYNOMIAL] + [1 << row for row in range(31)]  # one zero bit
    even = _squared(odd)  # two zero bits
    odd = _squared(even)  # four zero bits
    while True:
        even = _squared(odd)  # eight zero bits (one byte) on the first round, then doubling
        if second_length & 1:
            first = _times(even, first)
        second_length >>= 1
        if not second_length:
            break
        odd = _squared(even)
        if second_length & 1:
            first = _times(odd, first)
        second_length >>= 1
        if not second_length:
            break
    return first ^ second


def crc32_b64(data: bytes) -> str:
    """S3's spelling of a CRC-32: the four big-endian bytes in base64."""
    return encode(zlib.crc32(data))


def encode(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def decode(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "big")
