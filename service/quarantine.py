"""Stage 5: copy the stamped file into the destination bucket's quarantine prefix, once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import structlog

from service.errors import PermanentError, Stage
from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.s3io import ObjectStore, UploadReceipt

log = structlog.get_logger()

JOB_ID_METADATA = "pipeline-file-id"
SHA256_METADATA = "sha256"
# S3's own limits: a key is at most 1,024 bytes of UTF-8; user metadata at most 2 KB (names and
# values, as S3 counts them).
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048


@dataclass(frozen=True, slots=True)
class IntegrityRecord:
    """Size and SHA-256 of the source version read and of the quarantine object written (sizes
    alone for a file stamped inside S3), and S3's checksum of the object."""

    source: Fingerprint
    quarantine: Fingerprint | None  # None: an earlier attempt wrote it without the record
    # S3's checksum of the object when it answered one: ChecksumSHA256 ("<b64>", or
    # "<b64>-<parts>" for a multipart upload), or "crc32:<b64>" (full object, stamped inside S3).
    s3_checksum: str | None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the file went and the checksum S3 gave it (None when an earlier attempt wrote it)."""

    bucket: str
    key: str
    stored: Fingerprint | None  # of the object in quarantine (an earlier attempt's, if it wrote it)
    s3_checksum: str | None


def quarantine_metadata(
    job_id: int, source: ObjectCreated, source_print: Fingerprint, output: Fingerprint | None
) -> dict[str, str]:
    """S3 user metadata: the job id, where the file came from, and the integrity record (ASCII,
    so the key is quoted). A SHA-256 the worker did not take (a file stamped inside S3, whose
    bytes it never held) is left out: S3's full-object checksum of the object stands for it.
    ``output`` None: the upload starts before the output exists (a zip sent while it is stamped),
    and the object's size and SHA-256 are on the job row only."""
    metadata = {
        JOB_ID_METADATA: str(job_id),
        "source-bucket": source.bucket,
        "source-key": quote(source.key, safe="/"),
        "source-version": source.version_or_etag,
        "source-bytes": str(source_print.size),
        "source-sha256": source_print.sha256,
        "bytes": str(output.size) if output else None,
        SHA256_METADATA: output.sha256 if output else None,
    }
    return {name: value for name, value in metadata.items() if value is not None}


def check_fits_s3(key: str, metadata: Mapping[str, str]) -> None:
    """Raise ``PermanentError`` ERRL4005 for a key or metadata S3 would refuse (long EDC names).

    Checked before the upload, so the job fails once with a code instead of as retried S3 errors.
    """
    key_bytes = len(key.encode("utf-8"))
    if key_bytes > MAX_KEY_BYTES:
        raise PermanentError(
            "ERRL4005", f"quarantine key is {key_bytes} bytes; S3 allows {MAX_KEY_BYTES}", Stage.QUARANTINE
        )
    meta_bytes = sum(len(f"x-amz-meta-{k}".encode()) + len(v.encode()) for k, v in metadata.items())
    if meta_bytes > MAX_METADATA_BYTES:
        raise PermanentError(
            "ERRL4005",
            f"object metadata is {meta_bytes} bytes; S3 allows {MAX_METADATA_BYTES}",
            Stage.QUARANTINE,
        )


Upload = Callable[[str, str, Mapping[str, str]], UploadReceipt]


def place_in_quarantine(
    store: ObjectStore,
    upload: Upload,
    bucket: str,
    key: str,
    job_id: int,
    metadata: dict[str, str],
    output: Fingerprint,
) -> Placement:
    """Write the output to ``bucket/key`` once, with ``upload(bucket, key, metadata)``.

    If the key already holds this job's object (an earlier attempt wrote it, then died before
    recording it), that object stands. If it holds another job's object, raise ERRL4004: a
    quarantine object is never overwritten.
    """
    return settle_placement(store, upload(bucket, key, metadata), bucket, key, job_id, output)


def settle_placement(
    store: ObjectStore, receipt: UploadReceipt, bucket: str, key: str, job_id: int, output: Fingerprint
) -> Placement:
    """What a write-once upload placed: this output, or (the key was taken) this job's object from
    an earlier attempt, described by its own metadata. ERRL4004 for another job's object."""
    if receipt.written:
        return Placement(bucket, key, output, receipt.s3_checksum)
    existing = store.head(bucket, key) or {}
    if existing.get(JOB_ID_METADATA) == str(job_id):
        # The record describes the object in quarantine, not this attempt's bytes: from its own
        # metadata, or unknown (an object written by a release without the integrity record).
        stored = fingerprint_in(existing, "")
        log.info("quarantine.already_written", pipeline_file_id=job_id, same_bytes=stored == output)
        return Placement(bucket, key, stored, None)
    raise PermanentError("ERRL4004", "destination key holds another job's object", Stage.QUARANTINE)


def fingerprint_in(metadata: Mapping[str, str], prefix: str) -> Fingerprint | None:
    """The ``{prefix}bytes`` / ``{prefix}sha256`` pair of a quarantine object's metadata; the
    size alone for an object stamped inside S3 (no SHA-256 taken); None when there is no size."""
    size, digest = metadata.get(f"{prefix}bytes", ""), metadata.get(f"{prefix}{SHA256_METADATA}", "")
    if not size.isdigit() or (digest and len(digest) != 64):
        return None
    return Fingerprint(int(size), digest or None)
