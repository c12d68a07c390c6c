"""Stamp a single DICOM file from its head alone: the new head, and where the unchanged tail starts.

The output of a header splice is new bytes up to the splice point followed by the input's bytes
from ``plan.cut_end`` on, unchanged. When those unchanged bytes already sit in S3, only the new
head needs to leave the worker (the rest is copied inside S3). This module does the DICOM half of
that: it scans a file through any random-access reader (one that fetches ranges on demand), plans
the splice, builds the new head and checks it, exactly as the local splice checks its output.

Only the common file qualifies: one the fast scan reads (little-endian Part 10, element headers
that walk) with a splice point in the first ``MAX_HEAD_IN_MEMORY`` bytes. Anything else returns
``None`` and takes the local path, which downloads the file and classifies it fully.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from pydicom.tag import BaseTag

from service.processors.archive import checked_uids
from service.processors.base import SeriesKey, SeriesSummary, UidAllocator
from service.processors.fastscan import quick_scan
from service.processors.instance import Instance, check_head_with_pydicom, check_spliced_head
from service.processors.splice import (
    MAX_HEAD_IN_MEMORY,
    check_tracking_tag,
    encode_element,
    encode_value,
    plan_splice,
    spliced_head,
)


class RandomAccess(Protocol):
    """What the scan needs of a file: ``seek`` and ``read`` (a local file, or ranged reads)."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, count: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class HeadStamp:
    """A stamped single file as the new head plus a byte range of the input."""

    series: tuple[SeriesSummary, ...]
    head: bytes  # the output's bytes before the unchanged tail
    tail_start: int  # the input's bytes from here to its end follow ``head`` unchanged
    source_size: int

    @property
    def output_size(self) -> int:
        return len(self.head) + self.source_size - self.tail_start


def scan_head(reader: RandomAccess, size: int, tag: BaseTag) -> Instance | None:
    """The instance and its splice plan when the fast scan reads it and the head is small;
    ``None`` otherwise. Raises what ``quick_scan`` raises (ERRS1002 for short native pixels) and
    whatever the reader raises when a read would cost too much."""
    quick = quick_scan(cast(BinaryIO, reader), size, tag)
    if quick is None:
        return None
    plan = plan_splice(quick.layout, tag)
    if plan.cut_start > MAX_HEAD_IN_MEMORY:
        return None
    return Instance(SeriesKey(quick.study_uid, quick.series_uid), quick.series_number, plan)


def stamp_head(reader: RandomAccess, instance: Instance, allocate: UidAllocator, tag: BaseTag) -> HeadStamp:
    """Allocate the series' ATRIUID and build the checked new head for a planned instance.

    The checks are the local splice's: the element sits where planned, the next element has a
    larger tag (or only padding follows), and pydicom reads the UID back from the head. Raises
    ERRS1008 when a check fails, what ``allocate`` raises, ``ValueError`` for a UID the tag's VR
    cannot carry.
    """
    plan = instance.plan
    if plan is None:
        raise ValueError("stamp_head needs an instance with a splice plan")
    vr = check_tracking_tag(tag)
    series = (SeriesSummary(instance.key, instance.series_number, 1),)
    value = checked_uids(allocate(series), series, vr)[instance.key]
    element = encode_element(
        tag, vr, encode_value(value, vr), implicit_vr=plan.implicit_vr, little_endian=plan.little_endian
    )
    reader.seek(0)
    head = spliced_head(reader.read(plan.cut_start), plan, element)
    reader.seek(plan.cut_end)
    following = reader.read(4)
    check_spliced_head(head, following, plan, element)
    check_head_with_pydicom(head, plan, tag, value)
    return HeadStamp(series, head, plan.cut_end, plan.size)
