"""The tracking store's job lease: one delivery at a time, and a loser never overwrites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.db import Database
from service.errors import ErrorEntry
from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.quarantine import IntegrityRecord
from service.tracking import JobResult, LeaseLostError, TrackingStore
from tests.stackfixtures import PIPELINE_CODE, TestStack

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)
LEASE = timedelta(seconds=300)
_PRINT = Fingerprint(10, "0" * 64)
NOTHING = JobResult((), IntegrityRecord(_PRINT, _PRINT, None), 1, 0, 0)


@pytest.fixture
def store(stack: TestStack) -> TrackingStore:
    db = Database(stack.pipeline_url, max_connections=2)
    return TrackingStore(db)


def _job_id(store: TrackingStore) -> int:
    pipeline = store.pipeline_by_code(PIPELINE_CODE)
    assert pipeline is not None
    source = ObjectCreated("src", "subjecteventcrffile/1/101/CT Scan/v1.dcm", None, "etag1", 10, T0)
    first = store.open_job(pipeline, source, "v1.dcm", T0)
    again = store.open_job(pipeline, source, "v1.dcm", T0 + timedelta(minutes=5))
    assert first.id == again.id and again.created_at == T0  # one job per object version
    return first.id


def test_a_live_lease_is_not_taken_even_by_a_redelivery_of_the_same_message(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    assert not store.claim_job(job, "msg-1:2", T0 + timedelta(seconds=10), LEASE)
    assert not store.claim_job(job, "msg-2:1", T0 + timedelta(seconds=10), LEASE)
    # Once the lease has run out (the first delivery died), the next delivery takes over.
    assert store.claim_job(job, "msg-1:2", T0 + LEASE + timedelta(seconds=1), LEASE)


def test_the_heartbeat_keeps_a_long_job_leased(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    assert store.renew_leases(["msg-1:1"], T0 + timedelta(seconds=250), LEASE) == 1
    assert not store.claim_job(job, "msg-2:1", T0 + timedelta(seconds=400), LEASE)


def test_a_delivery_that_lost_its_lease_cannot_settle_the_job(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    later = T0 + LEASE + timedelta(seconds=1)
    assert store.claim_job(job, "msg-2:1", later, LEASE)
    store.complete_job(job, "msg-2:1", [], later, NOTHING)
    with pytest.raises(LeaseLostError):
        store.fail_job(job, "msg-1:1", "ERRL8003", [ErrorEntry("ERRL8003", "x", "worker")], later)
    with pytest.raises(LeaseLostError):
        store.release_job(job, "msg-1:1", later, waiting_for_edc=False)
    fields = store.job_fields(job)
    assert (fields["status"], fields["error_code"]) == ("Completed", None)


def test_the_destination_key_is_reserved_once(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    assert store.reserve_destination(job, "msg-1:1", "dst", "quarantine/a.dcm") == ("dst", "quarantine/a.dcm")
    store.release_job(job, "msg-1:1", T0, waiting_for_edc=False)
    assert store.claim_job(job, "msg-1:2", T0 + timedelta(seconds=30), LEASE)
    # The EDC values and DESTINATION_BUCKET changed between attempts: the retry still writes
    # where the first one did.
    assert store.reserve_destination(job, "msg-1:2", "dst2", "quarantine/b.dcm") == (
        "dst",
        "quarantine/a.dcm",
    )


def test_a_job_failed_by_exhausted_deliveries_can_run_again_after_a_redrive(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:2", T0, LEASE)
    store.fail_job(job, "msg-1:2", "ERRL8003", [ErrorEntry("ERRL8003", "x", "worker")], T0)
    assert store.claim_job(job, "msg-9:1", T0 + timedelta(seconds=1), LEASE)
    store.complete_job(job, "msg-9:1", [], T0 + timedelta(seconds=2), NOTHING)
    assert not store.claim_job(job, "msg-10:1", T0 + timedelta(hours=2), LEASE)  # settled for good


def test_the_holder_of_a_live_lease_may_claim_again_in_place(store: TrackingStore) -> None:
    """A parked message runs again with the same delivery: its own live lease does not stop it."""
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    assert store.claim_job(job, "msg-1:1", T0 + timedelta(seconds=30), LEASE)
    assert store.lease_remaining_s(job, T0 + timedelta(seconds=30)) == LEASE.total_seconds()


def test_a_worker_shutting_down_ends_its_leases_for_the_next_delivery(store: TrackingStore) -> None:
    job = _job_id(store)
    assert store.claim_job(job, "msg-1:1", T0, LEASE)
    assert store.expire_leases(["msg-1:1", "msg-9:1"], T0 + timedelta(seconds=5)) == 1
    assert store.claim_job(job, "msg-1:2", T0 + timedelta(seconds=6), LEASE)
    # The abandoned delivery cannot change the job any more.
    with pytest.raises(LeaseLostError):
        store.complete_job(job, "msg-1:1", [], T0 + timedelta(seconds=7), NOTHING)


def test_the_pool_keeps_its_connections_instead_of_reconnecting(stack: TestStack) -> None:
    """Threads beyond the first must not open a new PostgreSQL session for every statement."""
    import threading

    db = Database(stack.pipeline_url, max_connections=3)
    backends: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(3)

    def work() -> None:
        start.wait()
        for _ in range(5):
            with db.transaction() as cur:
                cur.execute("SELECT pg_backend_pid(), pg_sleep(0.02)")
                row = cur.fetchone()
                assert row is not None
                with lock:
                    backends.append(int(row[0]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close()
    assert len(backends) == 15 and len(set(backends)) <= 3
