"""The worker loop against a real queue on moto's server, with a scripted handler."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from service.events import ObjectCreated
from service.local.stack import aws_client
from service.pipeline import Delivery, Outcome
from service.sqs import Message, Queue
from service.worker import ExponentialBackoff, Worker
from tests.stackfixtures import TestStack


class ScriptedHandler:
    """Records calls; each call waits until ``release`` is set (or a timeout)."""

    def __init__(self, hold_s: float = 0.0, outcome: Outcome | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.release = threading.Event()
        self.hold_s = hold_s
        self.outcome = outcome or Outcome.done("ok")
        self.started = threading.Event()
        self.malformed: list[str] = []

    def report_malformed(self, message_id: str, reason: str) -> None:
        self.malformed.append(message_id)

    def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        self.calls.append((source.key, delivery.receive_count))
        self.started.set()
        self.release.wait(self.hold_s)
        return self.outcome


def event(*keys: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-11-01T00:00:00Z",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": "e"}},
                }
                for key in keys
            ]
        }
    )


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(timeout=30)


def make_worker(stack: TestStack, handler: ScriptedHandler, **kwargs: int) -> Worker:
    queue = Queue(aws_client("sqs", stack.endpoint), stack.env["PIPELINE_QUEUE_URL"])
    options = {"concurrency": 2, "visibility_timeout_s": 30, "shutdown_grace_s": 5, **kwargs}
    return Worker(queue, handler, poll_wait_s=1, backoff=ExponentialBackoff(1, 2), **options)


def test_several_records_in_one_message_are_each_handled(stack: TestStack) -> None:
    handler = ScriptedHandler()
    worker = make_worker(stack, handler)
    stack.send(event("a", "b", "c"))
    with running(worker):
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message deleted")
    assert sorted(k for k, _ in handler.calls) == ["a", "b", "c"]
    assert worker.stats.acknowledged >= 1


def test_a_long_job_keeps_its_lease_and_is_not_delivered_twice(stack: TestStack) -> None:
    handler = ScriptedHandler(hold_s=6)
    worker = make_worker(stack, handler, visibility_timeout_s=3)  # renewed every second
    stack.send(event("slow"))
    with running(worker):
        stack.wait_for(lambda: stack.queue_depth() == 0, timeout=20, what="message deleted")
    assert handler.calls == [("slow", 1)]


def test_shutdown_releases_unfinished_messages_for_another_task(stack: TestStack) -> None:
    handler = ScriptedHandler(hold_s=30)
    worker = make_worker(stack, handler, shutdown_grace_s=1)
    stack.send(event("stuck"))
    with running(worker) as thread:
        assert handler.started.wait(15)
        worker.stop()
        thread.join(timeout=15)
        assert not thread.is_alive()
    handler.release.set()
    visible = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.env["PIPELINE_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert visible == "1"  # visible again at once, not after the 30 s lease
    assert '"worker.released_unfinished"' in stack.log.getvalue()
    assert worker.stats.abandoned == 1  # the command then exits without joining that thread


def test_shutdown_waits_for_running_jobs_within_the_grace(stack: TestStack) -> None:
    handler = ScriptedHandler(hold_s=1.5)
    worker = make_worker(stack, handler, shutdown_grace_s=10)
    stack.send(event("finishing"))
    with running(worker) as thread:
        assert handler.started.wait(15)
        worker.stop()
        started = time.monotonic()
        thread.join(timeout=15)
        assert time.monotonic() - started < 10
    assert stack.queue_depth() == 0  # finished, then deleted during the drain


def test_retry_outcome_shows_the_message_again_after_the_delay(stack: TestStack) -> None:
    handler = ScriptedHandler(outcome=Outcome.retry("later", delay_s=1))
    worker = make_worker(stack, handler)
    stack.send(event("again"))
    with running(worker):
        stack.wait_for(lambda: len(handler.calls) >= 2, timeout=15, what="second delivery")
    assert [count for _, count in handler.calls[:2]] == [1, 2]


class CountingQueue(Queue):
    """A real queue that counts its delete calls."""

    deletes: list[int]

    def delete(self, messages: Sequence[Message]) -> list[Message]:
        self.deletes.append(len(messages))
        return super().delete(messages)


def test_messages_finishing_one_by_one_are_deleted_in_batches(stack: TestStack) -> None:
    handler = ScriptedHandler()
    queue = CountingQueue(aws_client("sqs", stack.endpoint), stack.env["PIPELINE_QUEUE_URL"])
    queue.deletes = []
    slow = ScriptedHandler(hold_s=4)

    class Mixed:
        def report_malformed(self, message_id: str, reason: str) -> None: ...

        def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
            return (slow if source.key == "slow" else handler).handle(source, delivery)

    worker = Worker(queue, Mixed(), concurrency=2, visibility_timeout_s=30, shutdown_grace_s=5, poll_wait_s=1)
    stack.send(event("slow"))
    with running(worker):
        assert slow.started.wait(15)
        for n in range(6):  # each finishes on its own while "slow" keeps the worker busy
            stack.send(event(f"quick{n}"))
            time.sleep(0.15)
        stack.wait_for(lambda: len(handler.calls) == 6, what="quick messages handled")
        stack.wait_for(lambda: stack.queue_depth() == 0, timeout=20, what="all deleted")
    # Every message deleted (the queue is empty), in fewer calls than messages: while "slow" kept
    # the worker busy, the quick ones finished one by one and shared a call.
    assert sum(queue.deletes) >= 7 and len(queue.deletes) < sum(queue.deletes) and max(queue.deletes) > 1
