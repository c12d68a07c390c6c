"""Stage 5 for one job: reserve its place in quarantine, then write the output there once.

One set of rules for every way the output is written (a finished local file, a new head in front
of bytes copied inside S3, a zip streamed while it is stamped): the key is reserved on the job row
just before the upload (a job that fails earlier has none), a retry writes where the first
attempt reserved whatever ``DESTINATION_BUCKET`` says now, the upload is write-once, and a key
that already holds this job's object (an earlier attempt wrote it, then died) is accepted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.quarantine import (
    Placement,
    Upload,
    check_fits_s3,
    place_in_quarantine,
    quarantine_metadata,
    settle_placement,
)
from service.s3io import BucketMissingError, ObjectStore
from service.s3stream import StreamingUpload
from service.tracking import TrackingStore


@dataclass(frozen=True, slots=True)
class Destination:
    """Whose output goes where: the job, the delivery holding its lease, the quarantine name."""

    job_id: int
    owner: str
    source: ObjectCreated
    name: str  # the key the naming template gives; an earlier attempt's reservation wins


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed upload under way to its reserved place."""

    bucket: str
    key: str
    upload: StreamingUpload
    reserved_now: bool  # False: an earlier attempt reserved the place (and may have written it)


class Placer:
    """Reserves quarantine places on the job row and writes outputs to them once."""

    def __init__(self, store: ObjectStore, tracking: TrackingStore, destination_bucket: str) -> None:
        self._store = store
        self._tracking = tracking
        self._bucket = destination_bucket

    def place(
        self, dest: Destination, source_print: Fingerprint, output: Fingerprint, upload: Upload
    ) -> Placement:
        """Reserve the place and write the output with ``upload(bucket, key, metadata)``."""
        metadata = quarantine_metadata(dest.job_id, dest.source, source_print, output)
        bucket, key = self._reserve(dest, metadata)
        try:
            return place_in_quarantine(self._store, upload, bucket, key, dest.job_id, metadata, output)
        except BucketMissingError:
            # Nothing can be there: let a retry (after the operator fixed DESTINATION_BUCKET,
            # and a redrive) reserve the bucket configured by then.
            self._tracking.clear_destination(dest.job_id, dest.owner)
            raise

    def open_stream(self, dest: Destination, source_size: int, output: Path) -> Stream:
        """Reserve the place and open an upload fed from ``output`` as it is written. Its metadata
        holds what is known before the output exists: the job, the source and its size."""
        metadata = quarantine_metadata(dest.job_id, dest.source, Fingerprint(source_size, None), None)
        earlier = self._tracking.reserved_destination(dest.job_id)
        bucket, key = self._reserve(dest, metadata)
        try:
            upload = self._store.start_upload(output, bucket, key, metadata, expected_size=source_size)
        except BucketMissingError:
            self._tracking.clear_destination(dest.job_id, dest.owner)
            raise
        return Stream(bucket, key, upload, reserved_now=earlier is None)

    def finish_stream(self, dest: Destination, stream: Stream, size: int) -> Placement:
        """Send the rest of the streamed output (``size`` bytes) and complete it write-once; on
        failure the upload is aborted (the place is kept: a retry completes it or finds it)."""
        stored, receipt = self._store.finish_upload(stream.upload, size, stream.bucket)
        return settle_placement(self._store, receipt, stream.bucket, stream.key, dest.job_id, stored)

    def abandon_stream(self, dest: Destination, stream: Stream) -> None:
        """Abort a streamed upload that will not be finished. A place reserved by this attempt
        holds nothing now and is released (best effort: the failure is what counts); one an
        earlier attempt reserved is kept, as that attempt may have written the object there."""
        stream.upload.abort()
        if stream.reserved_now:
            with contextlib.suppress(Exception):
                self._tracking.clear_destination(dest.job_id, dest.owner)

    def _reserve(self, dest: Destination, metadata: Mapping[str, str]) -> tuple[str, str]:
        check_fits_s3(dest.name, metadata)  # before reserving: a refused job keeps no series rows
        bucket, key = self._tracking.reserve_destination(dest.job_id, dest.owner, self._bucket, dest.name)
        if key != dest.name:  # reserved by an earlier attempt, under other EDC values
            check_fits_s3(key, metadata)
        return bucket, key
