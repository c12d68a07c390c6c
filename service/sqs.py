"""SQS adapter: receive, delete and change visibility in batches of up to 10, with retries."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from service.retry import aws_retry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = structlog.get_logger()

MAX_BATCH = 10
MAX_VISIBILITY_S = 43_200  # SQS's ceiling


@dataclass(frozen=True, slots=True)
class Message:
    """One received SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float = field(default_factory=time.monotonic, compare=False)


class Queue:
    """One SQS queue, reached through one boto3 client."""

    def __init__(self, client: SQSClient, url: str) -> None:
        self._sqs = client
        self.url = url

    @aws_retry
    def receive(self, max_messages: int, wait_s: int, visibility_s: int) -> list[Message]:
        """Long-poll for up to ``max_messages`` (<= 10) messages."""
        response = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(MAX_BATCH, max_messages)),
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Message(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, messages: Sequence[Message]) -> None:
        """Delete messages in batches; a failed entry is logged (it will be delivered again)."""
        for start in range(0, len(messages), MAX_BATCH):
            batch = messages[start : start + MAX_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(batch)]
            response = self._delete_batch(entries)
            for failed in response.get("Failed", []):
                log.warning(
                    "sqs.delete_failed",
                    message_id=batch[int(failed["Id"])].message_id,
                    code=failed.get("Code"),
                )

    def change_visibility(self, messages: Sequence[tuple[Message, int]]) -> None:
        """Set each message's visibility timeout (seconds from now), in batches."""
        for start in range(0, len(messages), MAX_BATCH):
            batch = messages[start : start + MAX_BATCH]
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": m.receipt_handle,
                    "VisibilityTimeout": max(0, min(MAX_VISIBILITY_S, s)),
                }
                for i, (m, s) in enumerate(batch)
            ]
            response = self._visibility_batch(entries)
            for failed in response.get("Failed", []):
                log.warning(
                    "sqs.visibility_change_failed",
                    message_id=batch[int(failed["Id"])][0].message_id,
                    code=failed.get("Code"),
                )

    @aws_retry
    def _delete_batch(self, entries: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
        return self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type,return-value]

    @aws_retry
    def _visibility_batch(self, entries: list[dict[str, object]]) -> dict[str, list[dict[str, str]]]:
        return self._sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type,return-value]

    def max_receive_count(self) -> int | None:
        """``maxReceiveCount`` of the queue's redrive policy, or None without one."""
        try:
            attributes = self._attributes()
        except botocore.exceptions.ClientError as exc:
            # Without it no delivery counts as the last, so jobs are not marked Failed before the DLQ.
            log.warning("sqs.redrive_policy_unreadable", code=exc.response.get("Error", {}).get("Code"))
            return None
        policy = attributes.get("RedrivePolicy")
        if not policy:
            return None
        return int(json.loads(policy)["maxReceiveCount"])

    @aws_retry
    def _attributes(self) -> dict[str, str]:
        response = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["RedrivePolicy"])
        return {str(name): value for name, value in response.get("Attributes", {}).items()}

    def send_batch(self, bodies: Sequence[str]) -> list[int]:
        """Send up to 10 messages in one call; return the positions of those SQS did not take.

        A call that still fails after retries fails them all (nothing is known to be sent).
        """
        if len(bodies) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per batch")
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
        try:
            response = self._send_batch(entries)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.warning("sqs.send_failed", error_type=type(exc).__name__, messages=len(bodies))
            return list(range(len(bodies)))
        failed = response.get("Failed", [])
        for entry in failed:
            log.warning("sqs.send_failed", code=entry.get("Code"), messages=1)
        return sorted(int(entry["Id"]) for entry in failed)

    @aws_retry
    def _send_batch(self, entries: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
        return self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type,return-value]

    @aws_retry
    def send(self, body: str) -> str:
        """Send one message (redrive and tests); return its id."""
        return self._sqs.send_message(QueueUrl=self.url, MessageBody=body)["MessageId"]
