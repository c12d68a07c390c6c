"""The long-running worker: receive -> process -> settle, until told to stop.

Only this module deletes messages or changes their visibility. Processing runs in a bounded
thread pool. A heartbeat thread renews the visibility of the messages the worker holds and the
leases of their jobs, so a long job is not delivered twice and a short lease is safe (a job whose
worker died is free again within one lease). Messages that must wait without spending a delivery
(a replica-lag wait, a job another delivery holds, an outage) are *parked*: held invisible, with
no thread, and run again in place when their time comes. While the circuit breaker is open (a
dependency does not answer) the loop stops receiving. On SIGTERM the loop stops receiving,
in-flight work gets ``shutdown_grace_s``, and whatever is unfinished or parked is made visible
again for another task.
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

from service.acks import AckBuffer
from service.breaker import CircuitBreaker, Dependency
from service.events import MalformedMessageError, ObjectCreated, parse_message
from service.logs import describe_exception
from service.pipeline import Delivery, Outcome
from service.sqs import Message, Queue

log = structlog.get_logger()

LONG_POLL_S = 20
# SQS keeps a message invisible for at most 12 h after its receipt: let go of it before that.
MAX_HOLD_S = 11.5 * 3600
OUTBOX_INTERVAL_S = 1.0  # completion notices wait at most this long to share a PublishBatch call
OUTBOX_FINAL_S = 15.0  # how long a stopping worker waits for the last send


class Handler(Protocol):
    """Processes one object of a message (``ObjectHandler`` in production)."""

    def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome: ...

    def report_malformed(self, message_id: str, reason: str) -> None: ...


class Protection(Protocol):
    """Scale-in protection while jobs run (``service.protection.TaskProtection`` on ECS)."""

    @property
    def receiving_blocked(self) -> bool: ...

    def update(self, *, busy: bool) -> None: ...

    def release(self) -> None: ...


class Liveness(Protocol):
    """Told on every pass of the loop (``service.liveness.HeartbeatFile``)."""

    def beat(self) -> None: ...

    def remove(self) -> None: ...


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
    park_s: float | None = None  # hold the message and run it again in place after this long
    outage: Dependency | None = None  # hold it until the breaker closes for this dependency
    leave: bool = False  # another delivery holds the job: no SQS call for this message at all

    @property
    def parks(self) -> bool:
        return not self.ack and not self.leave and (self.park_s is not None or self.outage is not None)


@dataclass(slots=True)
class WorkerStats:
    """Counters, logged at shutdown and read by tests."""

    received: int = 0
    acknowledged: int = 0
    retried: int = 0
    malformed: int = 0
    objects: int = 0
    parked: int = 0
    left: int = 0
    abandoned: int = 0  # jobs still running when the grace ran out (released to other workers)


@dataclass(slots=True)
class _Parked:
    message: Message
    due: float  # monotonic time to run again (outage-parked: when the breaker closes)
    outage: Dependency | None = None


@dataclass(slots=True)
class _InFlight:
    """The messages this worker holds: running in the pool, or parked. Guarded by ``lock``."""

    futures: dict[Future[MessageResult], Message] = field(default_factory=dict)
    parked: dict[str, _Parked] = field(default_factory=dict)
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
        release_leases: Callable[[list[str]], object] | None = None,
        breaker: CircuitBreaker | None = None,
        max_parked: int | None = None,
        protection: Protection | None = None,
        liveness: Liveness | None = None,
        flush_outbox: Callable[[], object] | None = None,
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
        self._release_leases = release_leases
        self._breaker = breaker or CircuitBreaker({})
        self._max_parked = max_parked if max_parked is not None else 50 * concurrency
        self._heartbeat_s = max(1.0, visibility_timeout_s / 3)
        self._stop = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._in_flight = _InFlight()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
        self._protection = protection
        self._liveness = liveness
        self._paused_logged = False
        # What finished jobs queued to send (completion notifications): sent by a thread of its
        # own, so a slow SNS never holds up receiving, settling or the heartbeat.
        self._flush_outbox = flush_outbox
        self._outbox_stop = threading.Event()
        self._acks = AckBuffer(queue.delete)
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
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        outbox = threading.Thread(target=self._outbox_loop, name="outbox", daemon=True)
        outbox.start()
        try:
            while not self._stop.is_set():
                self._beat()
                self._breaker.probe_due()
                self._dispatch(self._due_parked())
                messages = self._receive()
                self._dispatch(messages)
                self._protect()
                self._settle(self._finished(block=not messages))
                self._send_acks(force=self._idle())
        finally:
            self._drain()
            self._heartbeat_stop.set()
            heartbeat.join(timeout=10)
            self._outbox_stop.set()  # one last send of what the finished jobs queued
            outbox.join(timeout=OUTBOX_FINAL_S)
            if self._protection is not None:
                self._protection.release()
            if self._liveness is not None:
                self._liveness.remove()
            log.info("worker.stopped", **self._stats_fields())

    def _beat(self) -> None:
        if self._liveness is not None:
            self._liveness.beat()

    def _protect(self) -> None:
        """Scale-in protection follows whether jobs run (parked messages are released at a stop,
        so they need none). Its own calls are debounced, and never raise."""
        if self._protection is None:
            return
        with self._in_flight.lock:
            busy = bool(self._in_flight.futures)
        try:
            self._protection.update(busy=busy)
        except Exception as exc:  # noqa: BLE001 - protection must never stop the loop
            log.warning("worker.protection_failed", **describe_exception(exc))

    # -- receive ---------------------------------------------------------------------------
    def _receive(self) -> list[Message]:
        with self._in_flight.lock:
            running, parked = len(self._in_flight.futures), len(self._in_flight.parked)
        free = self._concurrency - running
        if free <= 0:
            return []
        blocked = self._protection is not None and self._protection.receiving_blocked
        if self._breaker.is_open or parked >= self._max_parked or blocked:
            if not self._paused_logged:
                log.warning(
                    "worker.receiving_paused",
                    parked=parked,
                    breaker_open=self._breaker.is_open,
                    deployment_blocked=blocked,
                )
                self._paused_logged = True
            self._stop.wait(min(1.0, self._breaker.seconds_to_next_probe() or 1.0))
            return []
        if self._paused_logged:
            log.info("worker.receiving_resumed", parked=parked)
            self._paused_logged = False
        # Long-poll only when idle, so finished work is settled promptly while busy, and never
        # past the moment a parked message is due.
        wait_s = self._poll_wait_s if not running else min(1, self._poll_wait_s)
        next_due = self._next_parked_due()
        if next_due is not None:
            wait_s = max(0, min(wait_s, int(next_due - time.monotonic())))
        try:
            messages = self._queue.receive(free, wait_s, self._visibility_s)
        except Exception as exc:  # noqa: BLE001 - retries spent: back off, never crash the loop
            log.error("worker.receive_failed", **describe_exception(exc))
            self._stop.wait(5)
            return []
        self.stats.received += len(messages)
        return messages

    # -- parked messages ---------------------------------------------------------------------
    def _park(self, result: MessageResult) -> None:
        now = time.monotonic()
        due = now + (result.park_s or 0.0)
        with self._in_flight.lock:
            self._in_flight.parked[result.message.message_id] = _Parked(result.message, due, result.outage)
        self.stats.parked += 1

    def _due_parked(self) -> list[Message]:
        """Parked messages whose time has come (or whose dependency is back), as many as threads."""
        now = time.monotonic()
        with self._in_flight.lock:
            free = self._concurrency - len(self._in_flight.futures)
            due = [
                p
                for p in self._in_flight.parked.values()
                if p.due <= now and (p.outage is None or self._breaker.is_closed_for(p.outage))
            ]
            due.sort(key=lambda p: p.due)
            taken = due[: max(0, free)]
            for parked in taken:
                del self._in_flight.parked[parked.message.message_id]
        return [p.message for p in taken]

    def _next_parked_due(self) -> float | None:
        with self._in_flight.lock:
            waiting = [p.due for p in self._in_flight.parked.values() if p.outage is None]
        return min(waiting) if waiting else None

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
        """One way to settle the message for all its objects (objects already done are
        acknowledged as duplicates when the message runs again)."""
        waiting = [o for o in outcomes if not o.ack]
        if not waiting:
            return MessageResult(message, ack=True)
        if any(o.leave for o in waiting):  # the delivery holding the job settles the message
            return MessageResult(message, ack=False, leave=True)
        outage = next((o.outage for o in waiting if o.outage is not None), None)
        if outage is not None:
            return MessageResult(message, ack=False, outage=outage)
        retries = [o for o in waiting if o.park_s is None]
        if retries:  # a real retry: the message comes back, which counts as a delivery
            delays = [
                o.delay_s if o.delay_s is not None else self._backoff.delay_s(message.receive_count)
                for o in retries
            ]
            return MessageResult(message, ack=False, delay_s=min(delays))
        return MessageResult(message, ack=False, park_s=min(o.park_s or 0.0 for o in waiting))

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
        retries = [(r.message, r.delay_s) for r in results if not r.ack and not r.leave and not r.parks]
        for result in results:
            if result.parks:
                if result.outage is not None:
                    self._breaker.trip(result.outage)
                self._park(result)
            elif result.leave:
                log.info("worker.message_left_to_lease_holder", message_id=result.message.message_id)
                self.stats.left += 1
        self._acks.add(acks)  # deleted in batches by the loop (service/acks.py)
        try:
            if retries:
                self._queue.change_visibility(retries)
        except Exception as exc:  # noqa: BLE001 - the messages simply come back; processing is idempotent
            log.error("worker.settle_failed", **describe_exception(exc))
        self.stats.acknowledged += len(acks)
        self.stats.retried += len(retries)
        self.stats.malformed += sum(r.malformed for r in results)
        self.stats.objects += sum(r.objects for r in results)

    def _idle(self) -> bool:
        with self._in_flight.lock:
            return not self._in_flight.futures

    def _send_acks(self, *, force: bool) -> None:
        try:
            self._acks.flush(force=force)
        except Exception as exc:  # noqa: BLE001 - the messages simply come back; processing is idempotent
            log.error("worker.settle_failed", **describe_exception(exc))

    def _outbox_loop(self) -> None:
        """Every ``OUTBOX_INTERVAL_S``, and once more when the worker stops, send what finished
        jobs queued (``flush_outbox`` logs what it could not send; nothing here may end the thread)."""
        if self._flush_outbox is None:
            return
        while True:
            stopping = self._outbox_stop.wait(OUTBOX_INTERVAL_S)
            try:
                self._flush_outbox()
            except Exception as exc:  # noqa: BLE001 - a lost notice must not stop the next ones
                log.error("worker.outbox_failed", **describe_exception(exc))
            if stopping:
                return

    # -- heartbeat and shutdown -------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """Every third of the visibility timeout, on its own thread: a slow receive, settle or
        probe on the loop's thread never delays a renewal."""
        while not self._heartbeat_stop.wait(self._heartbeat_s):
            self._heartbeat()

    def _heartbeat(self) -> None:
        """Renew what this worker holds: the messages' visibility, then their jobs' leases.

        Each step on its own: a failed visibility call (SQS throttling, say) must not leave the
        job leases to run out, or another worker would take over jobs that are still running.
        A renewal that crosses a settle is harmless (a deleted message's entry fails; a retry
        delay is stretched by at most one heartbeat).
        """
        now = time.monotonic()
        with self._in_flight.lock:
            running = [m for f, m in self._in_flight.futures.items() if not f.done()]
            parked = list(self._in_flight.parked.values())
            expired = [p.message for p in parked if now - p.message.received_at > MAX_HOLD_S]
            for message in expired:
                del self._in_flight.parked[message.message_id]
        held = running + [p.message for p in parked if p.message not in expired]
        if expired:
            log.warning("worker.parked_released", count=len(expired), reason="held for 11.5 h")
            self._release(expired)
        if not held:
            return
        try:
            self._queue.change_visibility([(m, self._visibility_s) for m in held])
        except Exception as exc:  # noqa: BLE001 - a missed renewal is retried on the next beat
            log.warning("worker.heartbeat_failed", step="visibility", **describe_exception(exc))
        if self._renew_leases is None:
            return
        try:
            self._renew_leases([Delivery(m.message_id, m.receive_count, None).owner for m in held])
        except Exception as exc:  # noqa: BLE001 - a missed renewal is retried on the next beat
            log.warning("worker.heartbeat_failed", step="leases", **describe_exception(exc))

    def _release(self, messages: list[Message]) -> None:
        try:
            self._queue.change_visibility([(m, 0) for m in messages])
        except Exception as exc:  # noqa: BLE001 - the messages come back when their lease ends
            log.error("worker.release_failed", **describe_exception(exc))

    def _drain(self) -> None:
        deadline = time.monotonic() + self._grace_s
        with self._in_flight.lock:
            pending = list(self._in_flight.futures)
        if pending:
            log.info("worker.draining", in_flight=len(pending), grace_s=self._grace_s)
        while pending and time.monotonic() < deadline:
            # The heartbeat thread keeps the running jobs' leases during the grace.
            _, not_done = wait(pending, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._beat()  # draining is progress
            self._settle(self._collect_done())
            self._send_acks(force=False)
            pending = list(not_done)
        self._settle(self._collect_done())
        self._send_acks(force=True)
        self._heartbeat_stop.set()  # no renewal may follow the release below
        with self._in_flight.lock:
            unfinished = list(self._in_flight.futures.values())
            self._in_flight.futures.clear()
            parked = [p.message for p in self._in_flight.parked.values()]
            self._in_flight.parked.clear()
        self.stats.abandoned = len(unfinished)
        if unfinished:
            log.warning("worker.released_unfinished", count=len(unfinished), error_code="ERRL8004")
        if parked:
            log.info("worker.released_parked", count=len(parked))
        if unfinished or parked:
            self._release(unfinished + parked)
            self._let_go_of_jobs(unfinished + parked)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _let_go_of_jobs(self, messages: list[Message]) -> None:
        """End the released messages' job leases now, so the next delivery need not wait for
        them to run out (an abandoned job thread can no longer change its job after that)."""
        if self._release_leases is None:
            return
        try:
            self._release_leases([Delivery(m.message_id, m.receive_count, None).owner for m in messages])
        except Exception as exc:  # noqa: BLE001 - the leases then run out on their own
            log.warning("worker.lease_release_failed", **describe_exception(exc))

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
            "parked": s.parked,
            "left": s.left,
            "abandoned": s.abandoned,
        }


def _result_of(future: Future[MessageResult], message: Message, delay: Callable[[int], int]) -> MessageResult:
    exc = future.exception()
    if exc is None:
        return future.result()
    log.error("worker.process_crashed", message_id=message.message_id, **describe_exception(exc))
    return MessageResult(message, ack=False, delay_s=delay(message.receive_count))
