"""The long-running worker: receive -> process -> settle, until told to stop.

Only this module deletes messages or changes their visibility. Processing runs in a bounded
thread pool; between passes the loop renews the visibility (and job lease) of running messages so a long
job is not delivered twice; on SIGTERM the loop stops receiving, in-flight work gets
``shutdown_grace_s``, and whatever is unfinished is made visible again for another task.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from service.events import MalformedMessageError, ObjectCreated, parse_message
from service.logs import describe_exception
from service.pipeline import Delivery, Outcome
from service.sqs import Message, Queue

log = structlog.get_logger()

LONG_POLL_S = 20


class Handler(Protocol):
    """Processes one object of a message (``ObjectHandler`` in production)."""

    def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome: ...

    def report_malformed(self, message_id: str, reason: str) -> None: ...


class BackoffPolicy(Protocol):
    """How long a message that failed transiently stays invisible."""

    def delay_s(self, receive_count: int) -> int: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``base * 2**(n-1)`` seconds for the n-th delivery, capped: a pure function of the count."""

    base_s: int = 15
    cap_s: int = 900

    def delay_s(self, receive_count: int) -> int:
        return int(min(self.cap_s, self.base_s * 2 ** max(0, min(receive_count - 1, 20))))


@dataclass(frozen=True, slots=True)
class MessageResult:
    """How to settle one message."""

    message: Message
    ack: bool
    delay_s: int = 0
    objects: int = 0
    malformed: bool = False


@dataclass(slots=True)
class WorkerStats:
    """Counters, logged at shutdown and read by tests."""

    received: int = 0
    acknowledged: int = 0
    retried: int = 0
    malformed: int = 0
    objects: int = 0


@dataclass(slots=True)
class _InFlight:
    futures: dict[Future[MessageResult], Message] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    """Consumes one queue with a pool of ``concurrency`` threads."""

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        concurrency: int,
        visibility_timeout_s: int,
        shutdown_grace_s: int,
        backoff: BackoffPolicy | None = None,
        max_receive_count: int | None = None,
        poll_wait_s: int = LONG_POLL_S,
        renew_leases: Callable[[list[str]], object] | None = None,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._concurrency = concurrency
        self._visibility_s = visibility_timeout_s
        self._grace_s = shutdown_grace_s
        self._backoff = backoff or ExponentialBackoff()
        self._max_receive_count = max_receive_count
        self._poll_wait_s = poll_wait_s
        self._renew_leases = renew_leases
        self._heartbeat_s = max(1.0, visibility_timeout_s / 3)
        self._last_heartbeat = time.monotonic()
        self._stop = threading.Event()
        self._in_flight = _InFlight()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
        self.stats = WorkerStats()

    def stop(self) -> None:
        """Ask the loop to stop after the current pass (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Loop until ``stop()``; then drain. Never raises for a single bad message."""
        log.info("worker.started", concurrency=self._concurrency, max_receive_count=self._max_receive_count)
        try:
            while not self._stop.is_set():
                messages = self._receive()
                self._dispatch(messages)
                self._settle(self._finished(block=not messages))
                self._heartbeat_if_due()
        finally:
            self._drain()
            log.info("worker.stopped", **self._stats_fields())

    # -- receive ---------------------------------------------------------------------------
    def _receive(self) -> list[Message]:
        free = self._concurrency - len(self._in_flight.futures)
        if free <= 0:
            return []
        # Long-poll only when idle, so finished work is settled promptly while busy.
        wait_s = self._poll_wait_s if not self._in_flight.futures else min(1, self._poll_wait_s)
        try:
            messages = self._queue.receive(free, wait_s, self._visibility_s)
        except Exception as exc:  # noqa: BLE001 - retries spent: back off, never crash the loop
            log.error("worker.receive_failed", **describe_exception(exc))
            self._stop.wait(5)
            return []
        self.stats.received += len(messages)
        return messages

    # -- process ---------------------------------------------------------------------------
    def _dispatch(self, messages: list[Message]) -> None:
        for message in messages:
            future = self._pool.submit(self._process, message)
            with self._in_flight.lock:
                self._in_flight.futures[future] = message

    def _process(self, message: Message) -> MessageResult:
        with structlog.contextvars.bound_contextvars(message_id=message.message_id):
            started = time.monotonic()
            try:
                parsed = parse_message(message.body)
            except MalformedMessageError as exc:
                if message.receive_count == 1:  # recorded once, not on every redelivery
                    self._report_malformed(message, str(exc))
                log.error(
                    "worker.malformed_message",
                    reason=str(exc),
                    error_code="ERRS1001",
                    receive_count=message.receive_count,
                )
                # Left for the redrive policy to move to the DLQ.
                delay = self._backoff.delay_s(message.receive_count)
                return MessageResult(message, ack=False, delay_s=delay, malformed=True)
            delivery = Delivery(message.message_id, message.receive_count, self._max_receive_count)
            outcomes = [self._handle_one(source, delivery) for source in parsed.objects]
            if not outcomes:
                log.info("worker.message_ignored", ignored_records=parsed.ignored)
            result = dataclasses.replace(self._combine(message, outcomes), objects=len(outcomes))
            log.info(
                "worker.message_processed",
                objects=len(outcomes),
                ack=result.ack,
                delay_s=result.delay_s,
                duration_ms=int((time.monotonic() - started) * 1000),
            )
            return result

    def _report_malformed(self, message: Message, reason: str) -> None:
        try:
            self._handler.report_malformed(message.message_id, reason)
        except Exception as exc:  # noqa: BLE001 - reporting must not stop the message reaching the DLQ
            log.error("worker.malformed_report_failed", **describe_exception(exc))

    def _handle_one(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        with structlog.contextvars.bound_contextvars(source_key=source.key):
            try:
                return self._handler.handle(source, delivery)
            except Exception as exc:  # noqa: BLE001 - a database outage before a job row exists
                log.error("worker.object_failed", error_code="ERRL8001", **describe_exception(exc))
                return Outcome.retry(f"unhandled {type(exc).__name__}")

    def _combine(self, message: Message, outcomes: list[Outcome]) -> MessageResult:
        waiting = [o for o in outcomes if not o.ack]
        if not waiting:
            return MessageResult(message, ack=True)
        # The whole message comes back; objects already done are acknowledged as duplicates then.
        delays = [
            o.delay_s if o.delay_s is not None else self._backoff.delay_s(message.receive_count)
            for o in waiting
        ]
        return MessageResult(message, ack=False, delay_s=min(delays))

    # -- settle ----------------------------------------------------------------------------
    def _finished(self, *, block: bool) -> list[MessageResult]:
        with self._in_flight.lock:
            pending = list(self._in_flight.futures)
        if not pending:
            return []
        done, _ = wait(pending, timeout=0.5 if block else 0, return_when=FIRST_COMPLETED)
        results = []
        with self._in_flight.lock:
            for future in done:
                message = self._in_flight.futures.pop(future)
                results.append(_result_of(future, message, self._backoff.delay_s))
        return results

    def _settle(self, results: list[MessageResult]) -> None:
        acks = [r.message for r in results if r.ack]
        retries = [(r.message, r.delay_s) for r in results if not r.ack]
        try:
            if acks:
                self._queue.delete(acks)
            if retries:
                self._queue.change_visibility(retries)
        except Exception as exc:  # noqa: BLE001 - the messages simply come back; processing is idempotent
            log.error("worker.settle_failed", **describe_exception(exc))
        self.stats.acknowledged += len(acks)
        self.stats.retried += len(retries)
        self.stats.malformed += sum(r.malformed for r in results)
        self.stats.objects += sum(r.objects for r in results)

    # -- heartbeat and shutdown -------------------------------------------------------------
    def _heartbeat_if_due(self) -> None:
        """Renew the lease of running messages (SQS visibility, and the jobs' leases).

        Runs on the loop's own thread, between settles, so a renewal never races a settle.
        """
        if time.monotonic() - self._last_heartbeat < self._heartbeat_s:
            return
        self._last_heartbeat = time.monotonic()
        with self._in_flight.lock:
            running = [m for f, m in self._in_flight.futures.items() if not f.done()]
        if not running:
            return
        try:
            self._queue.change_visibility([(m, self._visibility_s) for m in running])
            if self._renew_leases is not None:
                self._renew_leases([Delivery(m.message_id, m.receive_count, None).owner for m in running])
        except Exception as exc:  # noqa: BLE001 - a missed renewal is retried on the next pass
            log.warning("worker.heartbeat_failed", **describe_exception(exc))

    def _drain(self) -> None:
        deadline = time.monotonic() + self._grace_s
        with self._in_flight.lock:
            pending = list(self._in_flight.futures)
        if pending:
            log.info("worker.draining", in_flight=len(pending), grace_s=self._grace_s)
        while pending and time.monotonic() < deadline:
            _, not_done = wait(pending, timeout=min(self._heartbeat_s, max(0.0, deadline - time.monotonic())))
            self._settle(self._collect_done())
            self._heartbeat_if_due()  # running jobs keep their leases during the grace
            pending = list(not_done)
        self._settle(self._collect_done())
        with self._in_flight.lock:
            unfinished = list(self._in_flight.futures.values())
            self._in_flight.futures.clear()
        if unfinished:
            log.warning("worker.released_unfinished", count=len(unfinished), error_code="ERRL8004")
            try:
                self._queue.change_visibility([(m, 0) for m in unfinished])
            except Exception as exc:  # noqa: BLE001 - the messages come back when their lease ends
                log.error("worker.release_failed", **describe_exception(exc))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _collect_done(self) -> list[MessageResult]:
        results = []
        with self._in_flight.lock:
            for future in [f for f in self._in_flight.futures if f.done()]:
                results.append(_result_of(future, self._in_flight.futures.pop(future), self._backoff.delay_s))
        return results

    def _stats_fields(self) -> dict[str, int]:
        s = self.stats
        return {
            "received": s.received,
            "acknowledged": s.acknowledged,
            "retried": s.retried,
            "malformed": s.malformed,
            "objects": s.objects,
        }


def _result_of(future: Future[MessageResult], message: Message, delay: Callable[[int], int]) -> MessageResult:
    exc = future.exception()
    if exc is None:
        return future.result()
    log.error("worker.process_crashed", message_id=message.message_id, **describe_exception(exc))
    return MessageResult(message, ack=False, delay_s=delay(message.receive_count))
