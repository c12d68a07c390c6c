"""Stage 5: copy the stamped file into the destination bucket's quarantine prefix, once."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import structlog

from service.errors import PermanentError, Stage
from service.events import ObjectCreated
from service.s3io import ObjectStore

log = structlog.get_logger()

JOB_ID_METADATA = "pipeline-file-id"


def quarantine_metadata(job_id: int, source: ObjectCreated) -> dict[str, str]:
    """S3 user metadata: the job id and where the file came from (ASCII, so the key is quoted)."""
    return {
        JOB_ID_METADATA: str(job_id),
        "source-bucket": source.bucket,
        "source-key": quote(source.key, safe="/"),
        "source-version": source.version_or_etag,
    }


def place_in_quarantine(
    store: ObjectStore, path: Path, bucket: str, key: str, job_id: int, source: ObjectCreated
) -> None:
    """Write ``path`` to ``bucket/key`` once.

    If the key already holds this job's object (an earlier attempt wrote it, then died before
    recording it), that object stands. If it holds another job's object, raise ERRL4004: a
    quarantine object is never overwritten.
    """
    if store.upload_once(path, bucket, key, quarantine_metadata(job_id, source)):
        return
    existing = store.head(bucket, key) or {}
    if existing.get(JOB_ID_METADATA) == str(job_id):
        log.info("quarantine.already_written", pipeline_file_id=job_id)
        return
    raise PermanentError("ERRL4004", "destination key holds another job's object", Stage.QUARANTINE)
