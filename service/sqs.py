"""SQS adapter: receive, delete, send and change visibility in batches of up to 10, with retries;
the queue attributes the worker and the redrive read; SQS's own message move tasks."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from service.retry import aws_retry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = structlog.get_logger()

MAX_BATCH = 10
MAX_VISIBILITY_S = 43_200  # SQS's ceiling
# SendMessageBatch refuses a request whose bodies and attributes pass 256 KiB in all
# (BatchRequestTooLong), whatever the queue's MaximumMessageSize; one large message goes alone.
MAX_BATCH_PAYLOAD = 256 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    """One received SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float = field(default_factory=time.monotonic, compare=False)
    sent_at_ms: int | None = None  # SentTimestamp: when the message was first sent (epoch ms)
    attributes: Mapping[str, Any] = field(default_factory=dict)  # MessageAttributes, as SQS gives them


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
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        return [
            Message(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                sent_at_ms=_optional_int(m.get("Attributes", {}).get("SentTimestamp")),
                attributes=dict(m.get("MessageAttributes", {})),
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, messages: Sequence[Message]) -> list[Message]:
        """Delete messages in batches; a failed entry is logged (it will be delivered again) and
        returned. A batch whose call fails does not stop the others; the first such error is
        raised once all were tried (those messages come back and are finished again)."""
        not_deleted: list[Message] = []
        first_error: Exception | None = None
        for start in range(0, len(messages), MAX_BATCH):
            batch = messages[start : start + MAX_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(batch)]
            try:
                response = self._delete_batch(entries)
            except Exception as exc:  # noqa: BLE001 - the other batches still go; raised below
                first_error = first_error or exc
                continue
            for failed in response.get("Failed", []):
                not_deleted.append(batch[int(failed["Id"])])
                log.warning(
                    "sqs.delete_failed",
                    message_id=batch[int(failed["Id"])].message_id,
                    code=failed.get("Code"),
                )
        if first_error is not None:
            raise first_error
        return not_deleted

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
    def send(self, body: str) -> str:
        """Send one message (tests); return its id."""
        return self._sqs.send_message(QueueUrl=self.url, MessageBody=body)["MessageId"]

    @aws_retry
    def read_attributes(self, names: Sequence[str]) -> dict[str, str]:
        """The queue's attributes ``names`` (those SQS has); raises ``ClientError`` (e.g. no such queue)."""
        response = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=list(names))  # type: ignore[arg-type]
        return {str(name): value for name, value in response.get("Attributes", {}).items()}

    def send_copies(self, messages: Sequence[Message]) -> SendResult:
        """Send a copy of each message (body and message attributes) in one SendMessageBatch call.

        ``messages`` must fit one request (see ``send_groups``). An entry SQS refuses is in
        ``failed``; a call that fails as a whole (after the retries) raises.
        """
        entries: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": m.body}
            if m.attributes:
                entry["MessageAttributes"] = {name: _attribute_value(v) for name, v in m.attributes.items()}
            entries.append(entry)
        response = self._send_batch(entries)
        sent = {messages[int(ok["Id"])].message_id: ok["MessageId"] for ok in response.get("Successful", [])}
        failed = {
            messages[int(bad["Id"])].message_id: bad.get("Code", "?") for bad in response.get("Failed", [])
        }
        # An entry in neither list was not confirmed: treat it as not sent (it stays where it is).
        for m in messages:
            if m.message_id not in sent and m.message_id not in failed:
                failed[m.message_id] = "NotConfirmed"
        return SendResult(sent, failed)

    @aws_retry
    def _send_batch(self, entries: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
        return self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type,return-value]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one SendMessageBatch did, by the original messages' ids."""

    sent: dict[str, str]  # original message id -> the new message's id
    failed: dict[str, str]  # original message id -> SQS's error code for the entry


def send_groups(messages: Sequence[Message]) -> list[list[Message]]:
    """Split ``messages`` into groups that each fit one SendMessageBatch (count and payload size)."""
    groups: list[list[Message]] = []
    size = 0
    for m in messages:
        weight = len(m.body.encode()) + len(json.dumps(dict(m.attributes), default=str).encode())
        if not groups or len(groups[-1]) == MAX_BATCH or size + weight > MAX_BATCH_PAYLOAD:
            groups.append([])
            size = 0
        groups[-1].append(m)
        size += weight
    return groups


def _attribute_value(received: Mapping[str, Any]) -> dict[str, Any]:
    # A received attribute also carries the reserved, empty StringListValues/BinaryListValues.
    return {k: v for k, v in received.items() if k in ("DataType", "StringValue", "BinaryValue")}


def _optional_int(raw: object) -> int | None:
    try:
        return int(str(raw)) if raw is not None else None
    except ValueError:
        return None


# -- SQS's own redrive: message move tasks ------------------------------------------------------

# What an endpoint answers when it lacks the move-task API: other emulators name the action unknown
# or unsupported; moto's server fails with HTTP 500 and an HTML page (no AWS error code, see
# ``is_unsupported_answer``). AWS's own InternalError/InternalFailure are not here: they are
# transient faults of an API that exists, and are retried.
_UNSUPPORTED_CODES = frozenset(
    {
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "InvalidAction",
        "UnknownOperation",
        "UnknownOperationException",
        "NotImplemented",
        "NotImplementedException",
    }
)


def is_unsupported_answer(exc: botocore.exceptions.ClientError) -> bool:
    """True for an answer that means the endpoint lacks the called action: an unsupported-operation
    code, HTTP 501, or HTTP 500 without an AWS error code (botocore then puts the status in its place)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in _UNSUPPORTED_CODES or status == 501 or (status == 500 and code in ("", "500"))


class MoveTaskUnsupportedError(Exception):
    """The endpoint has no (working) message move task API; the text names the call and the code."""


@dataclass(frozen=True, slots=True)
class MoveTask:
    """One message move task as ListMessageMoveTasks describes it."""

    status: str  # RUNNING | COMPLETED | CANCELLING | CANCELLED | FAILED
    handle: str | None  # SQS gives the handle of RUNNING tasks only
    moved: int  # ApproximateNumberOfMessagesMoved
    to_move: int | None  # ApproximateNumberOfMessagesToMove (absent once the task has ended)
    destination_arn: str | None
    failure_reason: str | None = None
    started_at_ms: int | None = None


class MoveTasks:
    """StartMessageMoveTask / ListMessageMoveTasks, for one source queue (a dead-letter queue)."""

    def __init__(self, client: SQSClient, source_arn: str) -> None:
        self._sqs = client
        self.source_arn = source_arn
        self._start_attempts = 0

    @aws_retry
    def start(self, destination_arn: str) -> str:
        """Start moving every message to ``destination_arn``; return the task handle.

        Raises ``MoveTaskUnsupportedError`` only when the first attempt is answered as the API
        being missing; any later failure (after the retries) is a ``ClientError``, since an
        earlier attempt may have started a task that a manual redrive must not run beside.
        """
        self._start_attempts += 1
        try:
            response = self._sqs.start_message_move_task(
                SourceArn=self.source_arn, DestinationArn=destination_arn
            )
        except botocore.exceptions.ClientError as exc:
            if self._start_attempts == 1 and is_unsupported_answer(exc):
                # Raised inside the retried call, so aws_retry does not spend attempts on a missing API.
                raise MoveTaskUnsupportedError(f"StartMessageMoveTask answered {_answer(exc)}") from None
            raise
        return response["TaskHandle"]

    def recent_before_start(self) -> list[MoveTask] | None:
        """``recent()``, or None where the endpoint answers as if it lacked the API: whether it does
        is for StartMessageMoveTask to say (``start``), not for this listing."""
        try:
            return self._recent_or_unsupported()
        except MoveTaskUnsupportedError:
            return None

    @aws_retry
    def _recent_or_unsupported(self) -> list[MoveTask]:
        try:
            return self._list()
        except botocore.exceptions.ClientError as exc:
            if is_unsupported_answer(exc):
                raise MoveTaskUnsupportedError(f"ListMessageMoveTasks answered {_answer(exc)}") from None
            raise

    @aws_retry
    def recent(self) -> list[MoveTask]:
        """The queue's most recent tasks (up to 10, newest first). Every transient failure, HTTP 500
        included, is retried: this follows a task that exists."""
        return self._list()

    def _list(self) -> list[MoveTask]:
        response = self._sqs.list_message_move_tasks(SourceArn=self.source_arn, MaxResults=10)
        return [
            MoveTask(
                status=str(r.get("Status", "UNKNOWN")),
                handle=r.get("TaskHandle"),
                moved=int(r.get("ApproximateNumberOfMessagesMoved", 0)),
                to_move=_optional_int(r.get("ApproximateNumberOfMessagesToMove")),
                destination_arn=r.get("DestinationArn"),
                failure_reason=r.get("FailureReason"),
                started_at_ms=_optional_int(r.get("StartedTimestamp")),
            )
            for r in response.get("Results", [])
        ]


def _answer(exc: botocore.exceptions.ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
