"""The size and SHA-256 of some bytes: one half of a job's integrity record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Size and SHA-256 (hex) of a file's bytes."""

    size: int
    sha256: str | None  # None: the bytes were never all read here (copied inside S3)
