"""Values shared by the processors: what they are given and what they return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom.tag import BaseTag, Tag

# ClinicalTrialSeriesID: the contract's default home for the ATRIUID.
DEFAULT_TRACKING_TAG: BaseTag = Tag(0x0012, 0x0071)
# The largest file (or inflated deflated dataset) the full pydicom rewrite may hold in memory;
# its peak is a few times this, well inside a 2 GB task (MAX_IN_MEMORY_BYTES overrides it).
DEFAULT_MAX_IN_MEMORY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Identifies one series inside an upload."""

    study_uid: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One series found in an upload: its UIDs, number and how many instances it has."""

    key: SeriesKey
    series_number: int | None
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class MemberIssue:
    """A problem with one part of an upload that did not stop the rest (Completed + has_error)."""

    member: str  # zip member name, or the file name for a single file (never put in a message)
    code: str  # a code from service.errors
    message: str  # built from codes/counts/UIDs only: never a header value, never a member name
    # 1-based index of the member in the archive (set by the zip processor; None for a single
    # file). Reports name a member by this, not by ``member``: two members can share one name.
    position: int | None = None


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Bounds that reject zip bombs before anything is expanded."""

    max_members: int = 10_000
    max_total_uncompressed: int = 20 * 1024**3
    max_ratio: float = 200.0


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What a processor did to one upload: a record of the output, not of the scan.

    ``series`` describes what was actually stamped: one summary per series that has at least one
    instance carrying its ATRIUID in the output, in order of first appearance, with
    ``number_of_instances`` the count of such instances. A series that was found and allocated but
    none of whose instances could be stamped is omitted (its instances are among ``issues``), so
    ``sum(s.number_of_instances for s in series) == instances_stamped``.
    """

    series: tuple[SeriesSummary, ...]
    issues: tuple[MemberIssue, ...]
    instances_stamped: int
    members: int  # 1 for a single file
    fallbacks: int = 0  # instances that needed a full pydicom rewrite instead of a header splice
    # System files of a zip (__MACOSX/, ._*, .DS_Store, Thumbs.db, desktop.ini, DICOMDIR):
    # carried over unchanged, no issue. Directories are not counted.
    system_files: int = 0


class UidAllocator(Protocol):
    """Gives the ATRIUID for every series of an upload.

    Called once per upload, after the series are known and before anything is written; the
    tracking store implements it by inserting (or finding) one ``edc_pipeline_file_dicom`` row per
    series, so the same upload retried gets the same ATRIUIDs.
    """

    def __call__(self, series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]: ...
