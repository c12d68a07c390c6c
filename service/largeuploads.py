"""Large uploads without the sum of download, processing and upload (issue 14).

Two ways, each returning what the job records, or ``None`` when the upload does not qualify:

- ``stamp_in_s3``: a single DICOM file is stamped from its head; the new head goes up and the
  unchanged rest is copied inside S3 (``s3splice``). Nothing is written and nothing allocated
  unless the file qualifies, so the caller can take the local path instead.
- ``stream_zip``: a zip is stamped while it arrives and sent while it is written (``s3stream``,
  ``processors.zipstream``); any failure aborts the upload before it completes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydicom.tag import BaseTag

from service.errors import PermanentError
from service.fingerprint import Fingerprint
from service.placer import Destination, Placer
from service.processors import process_arriving_zip_upload
from service.processors.base import ProcessResult, UidAllocator, ZipLimits
from service.processors.headstamp import scan_head, stamp_head
from service.quarantine import Placement
from service.s3io import ObjectRef, ObjectStore, UploadReceipt
from service.s3splice import HeadOnlyRefused
from service.s3stream import ArrivingDownload

log = structlog.get_logger()

Processed = Callable[[ProcessResult, Fingerprint], None]  # told once the output is decided


@dataclass(frozen=True, slots=True)
class Placed:
    """A processed upload in quarantine: the result, the source's fingerprint, where it went."""

    result: ProcessResult
    source: Fingerprint
    placement: Placement


def stamp_in_s3(
    store: ObjectStore,
    placer: Placer,
    destination: Destination,
    ref: ObjectRef,
    tag: BaseTag,
    allocate: UidAllocator,
    processed: Processed,
) -> Placed | None:
    """Stamp a single file inside S3, or None (nothing written) when it does not qualify: a zip,
    a file the fast scan does not read, a header that reaches far into the object."""
    source = store.open_ranged(ref)
    try:
        instance = scan_head(source, source.size, tag) if source.first[128:132] == b"DICM" else None
        if instance is None:
            return None
        stamp = stamp_head(source, instance, allocate, tag)
    except (HeadOnlyRefused, PermanentError) as exc:
        # The local path reads the whole file and gives the verdict its full record; an ATRIUID
        # allocated already is the one it gets again.
        log.info("job.stamp_in_s3_declined", reason=type(exc).__name__, bytes_read=source.fetched)
        return None
    source_print = Fingerprint(source.size, None)
    result = ProcessResult(series=stamp.series, issues=(), instances_stamped=1, members=1)
    processed(result, source_print)

    def upload(bucket: str, key: str, metadata: Mapping[str, str]) -> UploadReceipt:
        return store.upload_spliced(source, stamp.head, stamp.tail_start, bucket, key, metadata)

    output = Fingerprint(stamp.output_size, None)
    placement = placer.place(destination, source_print, output, upload)
    log.info("job.stamped_in_s3", bytes_read=source.fetched, bytes_sent=len(stamp.head))
    return Placed(result, source_print, placement)


def stream_zip(
    placer: Placer,
    destination: Destination,
    arriving: ArrivingDownload,
    work: Path,
    allocate: UidAllocator,
    processed: Processed,
    *,
    tag: BaseTag,
    limits: ZipLimits,
    max_in_memory_bytes: int,
) -> Placed:
    """Stamp the zip landing in ``work/source`` member by member into ``work/output`` while the
    output goes up part by part. The upload's metadata holds what is known when it starts (the
    job, the source and its size); the SHA-256 pair of the integrity record is on the job row."""
    output = work / "output"
    output.touch()
    stream = placer.open_stream(destination, arriving.size, output)
    try:
        result = process_arriving_zip_upload(
            work / "source",
            output,
            allocate,
            gate=arriving.wait,
            on_written=stream.upload.advance,
            tracking_tag=tag,
            limits=limits,
            work_dir=work,
            max_in_memory_bytes=max_in_memory_bytes,
        )
        source_print = arriving.fingerprint()
        written = output.stat().st_size
    except BaseException:
        placer.abandon_stream(destination, stream)
        raise
    processed(result, source_print)
    return Placed(result, source_print, placer.finish_stream(destination, stream, written))
