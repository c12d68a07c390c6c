"""Stage 1: turn an SQS message body into the S3 objects it announces.

Accepted shapes (CONTRACT section 2): an S3 event notification, the same wrapped in an SNS
notification, and the EventBridge "Object Created" event. ``s3:TestEvent`` and non-creation
events yield no objects. The ``reprocess`` command's own message (``REPROCESS_MESSAGE``) names
the job to run. Anything else raises ``MalformedMessageError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True, slots=True)
class ObjectCreated:
    """One S3 object version that was created: what the worker processes."""

    bucket: str
    key: str  # decoded: "+" is a space, %2F is "/"
    version_id: str | None
    etag: str | None
    size: int | None
    event_time: datetime
    # Set by a reprocess message: run this job (its own row, already recorded) instead of the
    # object version's first job.
    job_id: int | None = None

    @property
    def version_or_etag(self) -> str:
        """What identifies this object version: the version id, else the ETag."""
        return self.version_id or self.etag or ""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """The objects in one message; empty for test events and events we do not act on."""

    objects: tuple[ObjectCreated, ...]
    ignored: int  # records that were valid but not object creations (test events, deletions)


# The marker of the ``reprocess`` command's message:
# {"edc_image_pipeline": "reprocess", "pipeline_file_id": M, "bucket": ..., "key": ... (not
#  URL-encoded), "version_id": ... | null, "etag": ... | null, "size": ... | null,
#  "requested_at": ISO-8601}
MESSAGE_MARKER = "edc_image_pipeline"
REPROCESS_MESSAGE = "reprocess"


def reprocess_message(source: ObjectCreated) -> dict[str, Any]:
    """The message that asks the worker to run job ``source.job_id`` on ``source``'s version."""
    if source.job_id is None:
        raise ValueError("a reprocess message names a job")
    return {
        MESSAGE_MARKER: REPROCESS_MESSAGE,
        "pipeline_file_id": source.job_id,
        "bucket": source.bucket,
        "key": source.key,
        "version_id": source.version_id,
        "etag": source.etag,
        "size": source.size,
        "requested_at": source.event_time.isoformat(),
    }


class MalformedMessageError(ValueError):
    """The body is not one of the accepted event shapes; the message is left to reach the DLQ."""


def parse_message(body: str) -> ParsedMessage:
    """Parse one SQS message body. Raises ``MalformedMessageError`` on anything unrecognised.

    Whatever a hostile body makes the parser raise (JSON nested past the recursion limit, a size of
    ``1e400``, ...) is a malformed message too, never a crash of the message's processing.
    """
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise MalformedMessageError("body is not JSON") from None
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on deeply nested JSON
        raise MalformedMessageError(f"body cannot be parsed ({type(exc).__name__})") from None
    try:
        return _parse_document(document, depth=0)
    except MalformedMessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure on a hostile shape
        raise MalformedMessageError(f"event cannot be read ({type(exc).__name__})") from None


def _parse_document(document: Any, depth: int) -> ParsedMessage:
    if not isinstance(document, dict):
        raise MalformedMessageError("body is not a JSON object")
    if document.get("Type") == "Notification" and "Message" in document and depth == 0:
        # SNS wraps the S3 event as a JSON string.
        try:
            inner = json.loads(document["Message"])
        except (json.JSONDecodeError, TypeError):
            raise MalformedMessageError("SNS Message is not JSON") from None
        return _parse_document(inner, depth + 1)
    if MESSAGE_MARKER in document:
        return ParsedMessage(objects=(_parse_reprocess(document),), ignored=0)
    if document.get("Event") == "s3:TestEvent":
        return ParsedMessage(objects=(), ignored=1)
    if "Records" in document:
        return _parse_s3_records(document["Records"])
    if document.get("source") == "aws.s3" and "detail-type" in document:
        return _parse_eventbridge(document)
    raise MalformedMessageError("not an S3, SNS or EventBridge event")


def _parse_s3_records(records: Any) -> ParsedMessage:
    if not isinstance(records, list) or not records:
        raise MalformedMessageError("Records is empty or not a list")
    objects: list[ObjectCreated] = []
    ignored = 0
    for record in records:
        if not isinstance(record, dict):
            raise MalformedMessageError("a record is not an object")
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            ignored += 1
            continue
        try:
            s3 = record["s3"]
            obj = s3["object"]
            objects.append(
                ObjectCreated(
                    bucket=_name(s3["bucket"]["name"], "bucket name"),
                    key=_decode_key(obj["key"]),
                    version_id=_optional_text(obj.get("versionId"), "versionId"),
                    etag=_clean_etag(obj.get("eTag")),
                    size=_size(obj.get("size"), "S3 record"),
                    event_time=_parse_time(record.get("eventTime")),
                )
            )
        except (KeyError, TypeError):
            raise MalformedMessageError(
                "an ObjectCreated record lacks s3.bucket.name or s3.object.key"
            ) from None
    return ParsedMessage(objects=tuple(objects), ignored=ignored)


def _parse_eventbridge(document: dict[str, Any]) -> ParsedMessage:
    if document["detail-type"] != "Object Created":
        return ParsedMessage(objects=(), ignored=1)
    try:
        detail = document["detail"]
        obj = detail["object"]
        created = ObjectCreated(
            bucket=_name(detail["bucket"]["name"], "bucket name"),
            # EventBridge keys are URL-encoded the same way as S3 notifications.
            key=_decode_key(obj["key"]),
            version_id=_real_version(_optional_text(obj.get("version-id"), "version-id")),
            etag=_clean_etag(obj.get("etag", obj.get("eTag"))),  # moto spells it eTag
            size=_size(obj.get("size"), "EventBridge event"),
            event_time=_parse_time(document.get("time")),
        )
    except (KeyError, TypeError):
        raise MalformedMessageError(
            "EventBridge event lacks detail.bucket.name or detail.object.key"
        ) from None
    return ParsedMessage(objects=(created,), ignored=0)


def _parse_reprocess(document: dict[str, Any]) -> ObjectCreated:
    """The reprocess command's message; every field is checked, as the command wrote them all."""
    if document[MESSAGE_MARKER] != REPROCESS_MESSAGE:
        raise MalformedMessageError(f"unknown {MESSAGE_MARKER} message")
    job_id = document.get("pipeline_file_id")
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id <= 0:
        raise MalformedMessageError("reprocess message lacks a pipeline_file_id")
    size = _size(document.get("size"), "reprocess message")
    version_id = _optional_text(document.get("version_id"), "version_id")
    etag = _optional_text(document.get("etag"), "etag")
    return ObjectCreated(
        bucket=_name(document.get("bucket"), "bucket name"),
        key=_name(document.get("key"), "object key"),  # as stored, not URL-encoded
        version_id=version_id,
        etag=etag,
        size=size,
        event_time=_parse_time(document.get("requested_at")),
        job_id=job_id,
    )


def _name(raw: Any, what: str) -> str:
    """A bucket name, key or version: a non-empty string with no control characters (a NUL would
    fail the job's insert before any record could be written)."""
    if not isinstance(raw, str) or not raw or not raw.isprintable():
        raise MalformedMessageError(f"{what} is empty, not a string, or holds control characters")
    return raw


def _optional_text(raw: Any, what: str) -> str | None:
    return None if raw is None or raw == "" else _name(raw, what)


def _decode_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise MalformedMessageError("object key is empty or not a string")
    return _name(unquote_plus(raw), "object key")


def _real_version(version_id: str | None) -> str | None:
    """S3 names the version of an object in an unversioned bucket "null": no version at all, or
    every re-upload of a key would look like the same object version."""
    return None if version_id == "null" else version_id


def _clean_etag(raw: Any) -> str | None:
    text = _optional_text(raw, "ETag")
    return text.strip('"') or None if text else None


def _size(raw: Any, what: str) -> int | None:
    """An object size: absent, or a finite non-negative integer (``7.0`` counts as 7).

    Anything else (``1e400`` parses as infinity, NaN, a negative number, a fraction, a bool, a
    string) is a malformed message: S3 never writes one, so the body is not what it claims to be.
    """
    if raw is None:
        return None
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise MalformedMessageError(f"{what} has a size that is not a non-negative integer")
    return raw


def _parse_time(raw: Any) -> datetime:
    if not isinstance(raw, str):
        raise MalformedMessageError("event time is missing")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedMessageError("event time is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
