"""SNS adapter for admin notifications (errors at once, completions when enabled).

Messages are plain text built from codes, ids, counts and the source key: never a header value.
Errors are published at once, each in its own call. Completions (one per file with
NOTIFY_ON_COMPLETION) are queued and sent ten per ``PublishBatch`` call by a thread of the
worker's, every second and once more when it stops: one call per file cost about 2 ms of CPU in
botocore. Subscribers still get one notification per file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from service.errors import RetryableError, Stage
from service.retry import aws_retry

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

log = structlog.get_logger()

_SUBJECT_LIMIT = 99  # SNS: subjects "must be less than 100 characters"
_BATCH = 10  # SNS: entries per PublishBatch
_BATCH_BYTES = 200_000  # SNS: 256 KiB for all the entries of one call together; a margin kept


@dataclass(frozen=True, slots=True)
class _Queued:
    subject: str
    message: str
    job_id: int | None


class Notifier:
    """Publishes to one SNS topic; does nothing (one log line) when no topic is configured."""

    def __init__(self, client: SNSClient | None, topic_arn: str | None) -> None:
        self._sns = client
        self._topic_arn = topic_arn
        self._queued: list[_Queued] = []
        self._lock = threading.Lock()

    def publish(self, subject: str, message: str) -> None:
        """Publish one notification. Raises ``RetryableError`` ERRL4006 when SNS stays unavailable."""
        if self._sns is None or not self._topic_arn:
            log.info("notify.skipped_no_topic", subject=subject)
            return
        try:
            self._publish(subject[:_SUBJECT_LIMIT], message)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise RetryableError(
                "ERRL4006", f"SNS publish failed ({type(exc).__name__})", Stage.NOTIFY
            ) from exc

    def publish_later(self, subject: str, message: str, job_id: int | None) -> None:
        """Queue a short notification for the next ``flush``."""
        if self._sns is None or not self._topic_arn:
            log.info("notify.skipped_no_topic", subject=subject)
            return
        with self._lock:
            self._queued.append(_Queued(subject[:_SUBJECT_LIMIT], message, job_id))

    def flush(self) -> None:
        """Publish everything queued, up to ten per call. Never raises: a notification SNS does
        not take (after the retries) is logged with its job id (``report.notification_failed``,
        ERRL4006) and dropped, as a failed ``publish`` is."""
        with self._lock:
            queued, self._queued = self._queued, []
        for batch in _batches(queued):
            failed = self._send(batch)
            again = [item for item, _reason, sender_fault in failed if not sender_fault]
            if again:  # SNS's own fault for those entries (throttled, internal): once more
                failed = [f for f in failed if f[2]] + self._send(again)
            for item, reason, _sender_fault in failed:
                log.error(
                    "report.notification_failed",
                    error_code="ERRL4006",
                    pipeline_file_id=item.job_id,
                    reason=reason,
                )

    @aws_retry
    def _publish(self, subject: str, message: str) -> None:
        assert self._sns is not None and self._topic_arn
        self._sns.publish(TopicArn=self._topic_arn, Subject=subject, Message=message)

    def _send(self, batch: list[_Queued]) -> list[tuple[_Queued, str, bool]]:
        """The entries of ``batch`` that did not go: (entry, why, whether it is the sender's fault)."""
        try:
            return self._publish_batch(batch)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return [(item, type(exc).__name__, True) for item in batch]  # aws_retry already tried

    @aws_retry
    def _publish_batch(self, batch: list[_Queued]) -> list[tuple[_Queued, str, bool]]:
        """Send one batch; return the entries SNS refused, with its code and SenderFault."""
        assert self._sns is not None and self._topic_arn
        ids = {str(number): item for number, item in enumerate(batch)}
        entries: list[Any] = [
            {"Id": entry_id, "Subject": item.subject, "Message": item.message}
            for entry_id, item in ids.items()
        ]
        response = self._sns.publish_batch(TopicArn=self._topic_arn, PublishBatchRequestEntries=entries)
        return [
            (ids[f["Id"]], str(f.get("Code", "refused")), bool(f.get("SenderFault", True)))
            for f in response.get("Failed", [])
        ]


def _batches(queued: list[_Queued]) -> list[list[_Queued]]:
    batches: list[list[_Queued]] = []
    size = 0
    for item in queued:
        item_bytes = len(item.message.encode()) + len(item.subject.encode())
        if not batches or len(batches[-1]) == _BATCH or size + item_bytes > _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item_bytes
    return batches
