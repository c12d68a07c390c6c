"""SNS adapter for admin notifications (errors at once, completions when enabled).

Messages are plain text built from codes, ids, counts and the source key: never a header value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from service.errors import RetryableError, Stage
from service.retry import aws_retry

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

log = structlog.get_logger()

_SUBJECT_LIMIT = 99  # SNS: subjects "must be less than 100 characters"


class Notifier:
    """Publishes to one SNS topic; does nothing (one log line) when no topic is configured."""

    def __init__(self, client: SNSClient | None, topic_arn: str | None) -> None:
        self._sns = client
        self._topic_arn = topic_arn

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

    @aws_retry
    def _publish(self, subject: str, message: str) -> None:
        assert self._sns is not None and self._topic_arn
        self._sns.publish(TopicArn=self._topic_arn, Subject=subject, Message=message)
