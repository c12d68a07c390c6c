"""The one place that builds clients and wires the components from ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import structlog

from service.breaker import CircuitBreaker
from service.config import Settings, redact_url
from service.db import Database
from service.edc import EdcLookup, load_lookup_sql
from service.errors import ConfigError
from service.health import PROBE_TIMEOUT_S, login_refused, worker_probes
from service.liveness import HeartbeatFile
from service.metrics import EmfMetrics, Metrics, NoMetrics
from service.migrate import pending_migrations
from service.notify import Notifier
from service.pipeline import Clock, HandlerOptions, ObjectHandler, Reachability
from service.processors.base import ZipLimits
from service.protection import TaskProtection
from service.reporting import Reporter, ReportTargets
from service.s3io import ObjectStore
from service.sqs import Queue
from service.tracking import TrackingStore
from service.worker import ExponentialBackoff, Worker

log = structlog.get_logger()


def utc_now() -> datetime:
    """The production clock."""
    return datetime.now(UTC)


def aws_client(settings: Settings, service: str, *, pool: int = 10, probe: bool = False) -> Any:
    """A boto3 client honouring AWS_REGION and AWS_ENDPOINT_URL; the credential chain is boto3's.

    ``probe``: one attempt with short timeouts, for the circuit breaker's health probes.
    """
    config = botocore.config.Config(
        # Our own tenacity layer retries; botocore's standard mode adds a little on top.
        retries={"max_attempts": 1 if probe else 2, "mode": "standard"},
        max_pool_connections=pool,
        connect_timeout=PROBE_TIMEOUT_S if probe else 10,
        read_timeout=PROBE_TIMEOUT_S if probe else 60,
        # S3 bodies carry their own checksum headers, which S3 verifies; over HTTPS botocore then
        # already sends UNSIGNED-PAYLOAD. Over plain HTTP (the emulators) it would hash every body
        # again for the signature: ~0.5 ms of CPU per 0.5 MB file that production never pays.
        s3={"payload_signing_enabled": False},
    )
    make_client: Any = boto3.client  # the service name is a variable; the stubs want a literal
    return make_client(
        service, region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url, config=config
    )


@dataclass(slots=True)
class WorkerApp:
    """A wired worker and what must be closed after it stops."""

    worker: Worker
    databases: tuple[Database, ...]

    def close(self) -> None:
        for db in self.databases:
            db.close()


def build_handler(
    settings: Settings,
    tracking: TrackingStore,
    edc: EdcLookup,
    store: ObjectStore,
    notifier: Notifier,
    clock: Clock,
    health: Reachability | None = None,
) -> ObjectHandler:
    """The object handler with its options taken from ``settings``."""
    assert settings.destination_bucket
    options = HandlerOptions(
        destination_bucket=settings.destination_bucket,
        quarantine_prefix=settings.quarantine_prefix,
        name_template=settings.quarantine_key_template,
        replica_lag_interval_s=settings.replica_lag_interval_s,
        replica_lag_max_s=settings.replica_lag_max_s,
        lease_s=settings.visibility_timeout_s,
        max_object_bytes=settings.max_object_bytes,
        notify_on_completion=settings.notify_on_completion,
        tracking_tag=settings.dicom_tracking_tag,
        zip_limits=ZipLimits(
            settings.zip_max_members, settings.zip_max_expanded_bytes, settings.zip_max_ratio
        ),
        work_dir=settings.work_dir,
        source_bucket=settings.source_bucket,
        max_in_memory_bytes=settings.max_in_memory_bytes,
        copy_min_bytes=settings.s3_copy_min_bytes,
    )
    reporter = Reporter(
        store,
        notifier,
        ReportTargets(settings.error_log_bucket, settings.error_log_prefix, settings.quarantine_key_template),
    )
    metrics: Metrics = EmfMetrics(settings.study) if settings.metrics == "emf" else NoMetrics()
    return ObjectHandler(tracking, edc, store, reporter, options, clock, health, metrics)


def build_worker(settings: Settings, clock: Clock = utc_now, *, poll_wait_s: int = 20) -> WorkerApp:
    """Everything the ``worker`` command runs. Raises ``ConfigError`` for missing settings and
    ``RuntimeError`` when the pipeline database has pending migrations."""
    settings.require("PIPELINE_QUEUE_URL", "DESTINATION_BUCKET", "EDC_DATABASE_URL", "PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url and settings.edc_database_url
    assert settings.pipeline_queue_url and settings.destination_bucket
    connections = settings.worker_concurrency + 2
    pipeline_db = Database(settings.pipeline_database_url, max_connections=connections)
    pending = pending_migrations(pipeline_db)
    if pending:
        pipeline_db.close()
        raise RuntimeError(f"pipeline database has pending migrations {pending}: run `migrate` first")
    # The replica may be down now (the breaker waits that out), but a URL it refuses is a mistake.
    refused = login_refused(settings.edc_database_url)
    if refused:
        pipeline_db.close()
        raise ConfigError(f"EDC_DATABASE_URL: {refused}")
    edc_db = Database(settings.edc_database_url, max_connections=connections, read_only=True)
    # Every job may move one large object over S3_TRANSFER_THREADS connections at once.
    s3 = aws_client(settings, "s3", pool=settings.worker_concurrency * settings.s3_transfer_threads + 2)
    store = ObjectStore(
        s3,
        # In parallel parts, an object of a few parts already goes up faster than in one PUT.
        multipart_threshold=2 * settings.s3_part_size if settings.s3_transfer_threads > 1 else 64 * 1024**2,
        part_size=settings.s3_part_size,
        transfer_threads=settings.s3_transfer_threads,
    )
    try:
        _check_destination(s3, settings.destination_bucket)
    except ConfigError:
        pipeline_db.close()
        edc_db.close()
        raise
    breaker = CircuitBreaker(
        worker_probes(
            settings.pipeline_database_url,
            settings.edc_database_url,
            aws_client(settings, "s3", pool=1, probe=True),
            settings.destination_bucket,
            settings.source_bucket,
        )
    )
    notifier = Notifier(
        aws_client(settings, "sns") if settings.admin_topic_arn else None, settings.admin_topic_arn
    )
    if not settings.admin_topic_arn:
        log.warning("worker.no_admin_topic", detail="ADMIN_TOPIC_ARN unset: errors are not notified")
    tracking = TrackingStore(pipeline_db)
    handler = build_handler(
        settings,
        tracking,
        EdcLookup(edc_db, load_lookup_sql(settings.edc_lookup_sql)),
        store,
        notifier,
        clock,
        breaker,
    )
    queue = Queue(aws_client(settings, "sqs", pool=4), settings.pipeline_queue_url)
    lease = timedelta(seconds=settings.visibility_timeout_s)
    max_receive = queue.max_receive_count()
    if max_receive is None:
        log.warning("worker.no_redrive_policy", detail="failing messages are retried forever")
    log.info(
        "worker.configured",
        pipeline_database=redact_url(settings.pipeline_database_url),
        edc_database=redact_url(settings.edc_database_url),
        queue_url=settings.pipeline_queue_url,
    )
    worker = Worker(
        queue,
        handler,
        concurrency=settings.worker_concurrency,
        visibility_timeout_s=settings.visibility_timeout_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        max_receive_count=max_receive,
        backoff=ExponentialBackoff(settings.retry_backoff_base_s, settings.retry_backoff_max_s),
        poll_wait_s=poll_wait_s,
        renew_leases=lambda owners: tracking.renew_leases(owners, clock(), lease),
        release_leases=lambda owners: tracking.expire_leases(owners, clock()),
        breaker=breaker,
        protection=(
            TaskProtection(settings.ecs_agent_uri, expires_minutes=settings.task_protection_minutes)
            if settings.ecs_agent_uri
            else None
        ),
        liveness=HeartbeatFile(settings.heartbeat_file),
        flush_outbox=notifier.flush,
    )
    return WorkerApp(worker, (pipeline_db, edc_db))


def _check_destination(s3: Any, bucket: str) -> None:
    """Refuse to start on a destination bucket S3 says is missing or forbidden: every job would
    fail at its last step. S3 not answering is an outage, which the breaker rides out."""
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status in (403, 404):
            reason = "does not exist" if status == 404 else "is not accessible to this task's role"
            raise ConfigError(f"DESTINATION_BUCKET {bucket} {reason} (HeadBucket: {status})") from None
        log.warning("worker.destination_check_failed", status=status)
    except botocore.exceptions.BotoCoreError as exc:
        log.warning("worker.destination_check_failed", error_type=type(exc).__name__)
