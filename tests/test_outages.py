"""Waiting without spending deliveries: parked messages, the circuit breaker, lease loss.

The worker runs against a real queue on moto's server; the end-to-end tests run the whole
pipeline on the test stack. A delivery is what SQS counts (``ApproximateReceiveCount``): a
replica-lag wait or an outage must not add to it, so a queue's ``maxReceiveCount`` of a few is
enough and a poison message still reaches the DLQ within it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import pytest

from service.breaker import CircuitBreaker, Dependency
from service.events import ObjectCreated
from service.local.samples import bundled_file
from service.local.stack import aws_client
from service.pipeline import Delivery, Outcome
from service.sqs import Message, Queue
from service.worker import ExponentialBackoff, Worker
from tests.faults.proxies import S3FaultProxy, TcpProxy
from tests.stackfixtures import TestStack
from tests.test_worker import event, running


class SequenceHandler:
    """Answers each call with the next outcome of a script (the last one repeats)."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, int, float]] = []

    def report_malformed(self, message_id: str, reason: str) -> None:
        raise AssertionError("not expected")

    def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        self.calls.append((source.key, delivery.receive_count, time.monotonic()))
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


class Switch:
    """A probe whose answer a test flips."""

    def __init__(self) -> None:
        self.up = True
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.up


def make_worker(stack: TestStack, handler: object, **kwargs: object) -> Worker:
    queue = Queue(aws_client("sqs", stack.endpoint), stack.env["PIPELINE_QUEUE_URL"])
    options: dict[str, object] = {
        "concurrency": 2,
        "visibility_timeout_s": 10,
        "shutdown_grace_s": 2,
        **kwargs,
    }
    return Worker(queue, handler, poll_wait_s=1, backoff=ExponentialBackoff(1, 2), **options)  # type: ignore[arg-type]


def visible(stack: TestStack) -> int:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.env["PIPELINE_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


# --- the breaker on its own -------------------------------------------------------------------


def test_the_breaker_probes_with_a_growing_interval_and_closes_when_the_dependency_answers() -> None:
    now = [100.0]
    probe = Switch()
    breaker = CircuitBreaker(
        {Dependency.S3: probe}, first_probe_s=2, max_probe_interval_s=8, clock=lambda: now[0]
    )
    probe.up = False
    breaker.trip(Dependency.S3)
    breaker.trip(Dependency.S3)  # idempotent
    assert breaker.is_open and not breaker.is_closed_for(Dependency.S3)
    assert breaker.probe_due() == [] and probe.asked == 0  # not due before 2 s
    intervals = []
    for _ in range(4):
        now[0] += breaker.seconds_to_next_probe() or 0.0
        before = now[0]
        assert breaker.probe_due() == []
        intervals.append((breaker.seconds_to_next_probe() or 0.0) + now[0] - before)
    assert intervals == [4, 8, 8, 8]
    probe.up = True
    now[0] += 8
    assert breaker.probe_due() == [Dependency.S3]
    assert not breaker.is_open


def test_a_probe_that_raises_is_a_dependency_that_does_not_answer() -> None:
    def broken() -> bool:
        raise OSError("connection refused")

    breaker = CircuitBreaker({Dependency.EDC_REPLICA: broken})
    assert breaker.reachable(Dependency.EDC_REPLICA) is False
    assert breaker.reachable(Dependency.S3) is True  # no probe: never an outage


# --- the worker loop ----------------------------------------------------------------------------


def test_a_parked_message_runs_again_in_place_without_a_new_delivery(stack: TestStack) -> None:
    handler = SequenceHandler(Outcome.park("wait", 1), Outcome.park("wait", 1), Outcome.done("ok"))
    worker = make_worker(stack, handler)
    stack.send(event("lagging"))
    with running(worker):
        stack.wait_for(lambda: stack.queue_depth() == 0 and len(handler.calls) == 3, what="three runs")
    assert [count for _, count, _ in handler.calls] == [1, 1, 1]  # one delivery, three runs
    gaps = [b - a for (_, _, a), (_, _, b) in zip(handler.calls, handler.calls[1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert worker.stats.parked == 2 and worker.stats.retried == 0


def test_during_an_outage_the_worker_stops_receiving_and_resumes_in_place(stack: TestStack) -> None:
    probe = Switch()
    breaker = CircuitBreaker({Dependency.PIPELINE_DATABASE: probe}, first_probe_s=0.5, max_probe_interval_s=1)
    handler = SequenceHandler(Outcome.paused(Dependency.PIPELINE_DATABASE), Outcome.done("ok"))
    worker = make_worker(stack, handler, breaker=breaker)
    probe.up = False
    stack.send(event("first"))
    with running(worker):
        stack.wait_for(lambda: breaker.is_open, what="breaker open")
        stack.send(event("second"))
        time.sleep(3)
        # Not received while the breaker is open: its deliveries are not spent on the outage.
        assert [key for key, _, _ in handler.calls] == ["first"]
        assert (visible(stack), stack.queue_depth()) == (1, 2)  # the first is parked, the second waits
        probe.up = True
        stack.wait_for(lambda: len(handler.calls) == 3 and stack.queue_depth() == 0, what="resumed")
    assert sorted((key, count) for key, count, _ in handler.calls) == [
        ("first", 1),
        ("first", 1),
        ("second", 1),
    ]
    log = stack.log.getvalue()
    for name in ("breaker.opened", "worker.receiving_paused", "breaker.closed", "worker.receiving_resumed"):
        assert f'"{name}"' in log, name


def test_a_delivery_that_lost_its_lease_leaves_the_message_alone(stack: TestStack) -> None:
    handler = SequenceHandler(Outcome.left("lease lost"), Outcome.done("ok"))
    worker = make_worker(stack, handler, visibility_timeout_s=10)
    stack.send(event("contested"))
    with running(worker):
        stack.wait_for(lambda: len(handler.calls) == 1, what="first run")
        time.sleep(3)
        # Neither deleted nor made visible: it belongs to the delivery holding the job.
        assert (visible(stack), stack.queue_depth()) == (0, 1)
        # The worker stopped renewing it: once its visibility runs out it is delivered again.
        stack.wait_for(lambda: len(handler.calls) == 2, timeout=30, what="redelivery")
    assert [count for _, count, _ in handler.calls] == [1, 2]
    assert worker.stats.left == 1


class FlakyVisibilityQueue(Queue):
    """A queue whose visibility calls fail: the job leases must be renewed all the same."""

    def change_visibility(self, messages: Sequence[tuple[Message, int]]) -> None:
        if any(seconds > 0 for _, seconds in messages):
            raise RuntimeError("throttled")
        super().change_visibility(messages)


def test_job_leases_are_renewed_even_when_a_visibility_call_fails(stack: TestStack) -> None:
    renewed: list[list[str]] = []
    release = threading.Event()

    class Holding:
        def report_malformed(self, message_id: str, reason: str) -> None: ...

        def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
            release.wait(10)
            return Outcome.done("ok")

    queue = FlakyVisibilityQueue(aws_client("sqs", stack.endpoint), stack.env["PIPELINE_QUEUE_URL"])
    worker = Worker(
        queue,
        Holding(),
        concurrency=1,
        visibility_timeout_s=10,
        shutdown_grace_s=2,
        poll_wait_s=1,
        renew_leases=renewed.append,
    )
    stack.send(event("long"))
    with running(worker):
        stack.wait_for(lambda: len(renewed) >= 2, timeout=20, what="two lease renewals")
        release.set()
    assert all(len(owners) == 1 and owners[0].endswith(":1") for owners in renewed)
    assert '"worker.heartbeat_failed"' in stack.log.getvalue()


# --- end to end: replica lag costs no delivery ---------------------------------------------------


def test_a_replica_lag_wait_longer_than_the_delivery_budget_completes(short_stack: TestStack) -> None:
    """maxReceiveCount 2, and the EDC row appears only after several lookups: the message is
    parked between lookups, so it neither reaches the DLQ nor fails."""
    stack = short_stack
    key = "subjecteventcrffile/1/101/CT Scan/lagging.dcm"
    with stack.worker(REPLICA_LAG_MAX_S="120"):
        stack.upload(key, bundled_file("CT_small.dcm"))
        stack.wait_for(
            lambda: stack.log.getvalue().count('"edc.not_found_yet"') >= 4, timeout=30, what="four lookups"
        )
        stack.query(
            "INSERT INTO edc.subjecteventcrffile VALUES (3002, 101, 1, 'lagging', 2)", url=stack.edc_url
        )
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["has_error"]) == ("Completed", False)
    assert stack.queue_depth("PIPELINE_DLQ_URL") == 0
    assert len(stack.quarantine_keys()) == 1


def test_a_poison_message_still_reaches_the_dlq_within_its_deliveries(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the probe cannot confirm (the database answers) is the message's own: retried,
    spending deliveries, and after maxReceiveCount in the DLQ with the job Failed."""
    import psycopg2

    from service.tracking import TrackingStore

    def broken(*_args: object) -> None:
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(TrackingStore, "record_edc", broken)
    stack = short_stack
    with stack.worker():
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1.dcm", bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
        stack.wait_for(lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="in the DLQ")
    assert (job["status"], job["error_code"], job["attempts"]) == ("Failed", "ERRL8003", 2)
    assert '"breaker.opened"' not in stack.log.getvalue()


# --- end to end: an outage of the EDC replica or of S3 pauses the job, spending no delivery -----


@pytest.fixture
def replica_proxy(stack: TestStack) -> Iterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the EDC replica's PostgreSQL, and the replica's URL through it."""
    parts = urlsplit(stack.edc_url)
    assert parts.port is not None
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port)
    netloc = parts.netloc.replace(f":{parts.port}", f":{proxy.port}")
    yield proxy, urlunsplit(parts._replace(netloc=netloc))
    proxy.close()


@pytest.fixture
def s3_proxy(moto_endpoint: str) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


def _paused_then_completed(stack: TestStack, dependency: str, restore: object) -> dict[str, object]:
    """Wait for the breaker to open on ``dependency`` with the job unsettled and nothing recorded,
    call ``restore``, and return the job once it settles."""
    stack.wait_for(lambda: '"breaker.opened"' in stack.log.getvalue(), timeout=30, what="breaker open")
    time.sleep(2)
    log = stack.log.getvalue()
    assert f'"dependency": "{dependency}"' in log or f'"dependency":"{dependency}"' in log
    (job,) = stack.jobs()
    assert job["status"] not in ("Completed", "Failed")
    assert stack.errors() == []  # an outage is nobody's error
    assert callable(restore)
    restore()
    (job,) = stack.wait_settled(1, timeout=60)
    assert '"breaker.closed"' in stack.log.getvalue()
    return job


def test_an_edc_replica_outage_pauses_the_job_and_spends_no_delivery(
    stack: TestStack, replica_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, proxied_url = replica_proxy
    proxy.cut()
    with stack.worker(EDC_DATABASE_URL=proxied_url):
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1.dcm", bundled_file("CT_small.dcm"))
        job = _paused_then_completed(stack, "edc_replica", proxy.restore)
    assert (job["status"], job["has_error"], job["attempts"]) == ("Completed", False, 1)
    assert len(stack.quarantine_keys()) == 1
    assert stack.queue_depth() == 0 and stack.queue_depth("PIPELINE_DLQ_URL") == 0


def test_an_s3_outage_pauses_the_job_and_spends_no_delivery(stack: TestStack, s3_proxy: S3FaultProxy) -> None:
    with stack.worker(AWS_ENDPOINT_URL=s3_proxy.endpoint):
        s3_proxy.s3_down = True
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1.dcm", bundled_file("CT_small.dcm"))

        def restore() -> None:
            s3_proxy.s3_down = False

        job = _paused_then_completed(stack, "s3", restore)
    assert (job["status"], job["has_error"], job["attempts"]) == ("Completed", False, 1)
    assert len(stack.quarantine_keys()) == 1
    assert stack.queue_depth() == 0 and stack.queue_depth("PIPELINE_DLQ_URL") == 0


def test_an_edc_url_the_replica_refuses_stops_start_up_but_an_unanswering_one_does_not(
    stack: TestStack, replica_proxy: tuple[TcpProxy, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    parts = urlsplit(stack.edc_url)
    wrong = urlunsplit(parts._replace(path="/no_such_database"))
    assert main(["worker"], {**stack.env, "EDC_DATABASE_URL": wrong}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["configuration error: EDC_DATABASE_URL: its database or role does not exist"]
    # Not answering at all is an outage: the worker starts and waits (shown end to end above).
    proxy, proxied_url = replica_proxy
    proxy.cut()
    with stack.worker(EDC_DATABASE_URL=proxied_url):  # raises if the worker cannot be built
        pass
    assert proxy.refused >= 1  # the start-up check asked, and found no answer


def test_a_job_whose_lease_another_delivery_took_leaves_the_message_to_it(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real pipeline: mid-job, another delivery holds the job (this one outlived its lease).
    The job's every later write is refused (LeaseLostError), nothing is recorded or written to
    quarantine, and the message is neither deleted nor made visible: it is the holder's."""
    from service.edc import EdcLookup

    real_lookup = EdcLookup.lookup_crf_file

    def lookup_then_lose_the_lease(self: EdcLookup, key: object) -> object:
        record = real_lookup(self, key)  # type: ignore[arg-type]
        stack.query(
            "UPDATE pipeline.edc_pipeline_file SET lease_owner = 'another-delivery',"
            " lease_until = now() + interval '10 minutes'"
        )
        return record

    monkeypatch.setattr(EdcLookup, "lookup_crf_file", lookup_then_lose_the_lease)
    with stack.worker():
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1.dcm", bundled_file("CT_small.dcm"))
        stack.wait_for(lambda: '"job.lease_lost"' in stack.log.getvalue(), what="lease lost")
        time.sleep(2)
        assert (visible(stack), stack.queue_depth()) == (0, 1)  # in flight, left to the holder
    (job,) = stack.jobs()
    assert (job["status"], job["lease_owner"], job["destination_key"]) == (
        "In Progress",
        "another-delivery",
        None,
    )
    assert stack.errors() == [] and stack.quarantine_keys() == []
