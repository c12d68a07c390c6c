"""The delete buffer: what waits, and when it goes."""

from __future__ import annotations

from collections.abc import Sequence

from service.acks import AckBuffer
from service.sqs import Message
from tests.stackfixtures import TestStack


def _messages(count: int, start: int = 0) -> list[Message]:
    return [Message(f"m{n}", f"r{n}", "{}", 1) for n in range(start, start + count)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _buffer(clock: Clock) -> tuple[AckBuffer, list[list[str]]]:
    sent: list[list[str]] = []

    def delete(messages: Sequence[Message]) -> None:
        sent.append([m.message_id for m in messages])

    return AckBuffer(delete, linger_s=1.0, clock=clock), sent


def test_a_message_waits_for_company_until_the_linger_runs_out() -> None:
    clock = Clock()
    acks, sent = _buffer(clock)
    acks.add(_messages(1))
    assert acks.flush() == 0 and sent == []
    clock.now += 0.5
    acks.add(_messages(2, start=1))
    assert acks.flush() == 0
    clock.now += 0.5  # the oldest has waited its second
    assert acks.flush() == 3 and sent == [["m0", "m1", "m2"]]
    assert len(acks) == 0 and acks.flush() == 0


def test_a_full_batch_goes_at_once_and_force_sends_whatever_waits() -> None:
    clock = Clock()
    acks, sent = _buffer(clock)
    acks.add(_messages(10))
    assert acks.flush() == 10
    acks.add(_messages(1, start=10))
    assert acks.flush(force=True) == 1
    assert sent == [[f"m{n}" for n in range(10)], ["m10"]]


def test_a_failed_delete_raises_and_leaves_nothing_behind() -> None:
    def delete(messages: Sequence[Message]) -> None:
        raise ConnectionError("SQS unreachable")

    acks = AckBuffer(delete, linger_s=0)
    acks.add(_messages(2))
    try:
        acks.flush()
    except ConnectionError:
        pass
    else:
        raise AssertionError("the delete's error must reach the caller")
    assert len(acks) == 0  # those messages come back to the queue and are finished again


def test_a_failed_delete_call_does_not_stop_the_other_batches(stack: TestStack) -> None:
    from service.local.stack import aws_client
    from service.sqs import Queue

    class HalfBroken(Queue):
        calls = 0

        def _delete_batch(self, entries: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
            HalfBroken.calls += 1
            if HalfBroken.calls == 1:
                raise ConnectionError("SQS unreachable for one call")
            return super()._delete_batch(entries)

    url = stack.env["PIPELINE_QUEUE_URL"]
    queue = HalfBroken(aws_client("sqs", stack.endpoint), url)
    for n in range(15):
        stack.send(f'{{"n": {n}}}')
    received: list[Message] = []
    while len(received) < 15:
        received += queue.receive(10, 1, 30)
    try:
        queue.delete(received)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failed call's error must reach the caller")
    assert HalfBroken.calls == 2
    assert stack.queue_depth() == 10  # the second batch (5) went; the first (10) comes back
