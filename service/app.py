"""The one place that builds clients and wires the components from ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.config
import structlog

from service.config import Settings, redact_url
from service.db import Database
from service.edc import EdcLookup, load_lookup_sql
from service.migrate import pending_migrations
from service.notify import Notifier
from service.pipeline import Clock, HandlerOptions, ObjectHandler
from service.processors.base import ZipLimits
from service.reporting import Reporter, ReportTargets
from service.s3io import ObjectStore
from service.sqs import Queue
from service.tracking import TrackingStore
from service.worker import ExponentialBackoff, Worker

log = structlog.get_logger()


def utc_now() -> datetime:
    """The production clock."""
    return datetime.now(UTC)


def aws_client(settings: Settings, service: str, *, pool: int = 10) -> Any:
    """A boto3 client honouring AWS_REGION and AWS_ENDPOINT_URL; the credential chain is boto3's."""
    config = botocore.config.Config(
        # Our own tenacity layer retries; botocore's standard mode adds a little on top.
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=pool,
        connect_timeout=10,
        read_timeout=60,
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
    )
    reporter = Reporter(
        store,
        notifier,
        ReportTargets(settings.error_log_bucket, settings.error_log_prefix, settings.quarantine_key_template),
    )
    return ObjectHandler(tracking, edc, store, reporter, options, clock)


def build_worker(settings: Settings, clock: Clock = utc_now, *, poll_wait_s: int = 20) -> WorkerApp:
    """Everything the ``worker`` command runs. Raises ``ConfigError`` for missing settings and
    ``RuntimeError`` when the pipeline database has pending migrations."""
    settings.require("PIPELINE_QUEUE_URL", "DESTINATION_BUCKET", "EDC_DATABASE_URL", "PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url and settings.edc_database_url
    assert settings.pipeline_queue_url
    connections = settings.worker_concurrency + 2
    pipeline_db = Database(settings.pipeline_database_url, max_connections=connections)
    pending = pending_migrations(pipeline_db)
    if pending:
        pipeline_db.close()
        raise RuntimeError(f"pipeline database has pending migrations {pending}: run `migrate` first")
    edc_db = Database(settings.edc_database_url, max_connections=connections, read_only=True)
    s3 = aws_client(settings, "s3", pool=connections)
    store = ObjectStore(s3)
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
    )
    queue = Queue(aws_client(settings, "sqs", pool=4), settings.pipeline_queue_url)
    lease = timedelta(seconds=settings.visibility_timeout_s)
    max_receive = queue.max_receive_count()
    _warn_on_short_redrive(settings, max_receive)
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
    )
    return WorkerApp(worker, (pipeline_db, edc_db))


def _warn_on_short_redrive(settings: Settings, max_receive: int | None) -> None:
    if max_receive is None:
        log.warning("worker.no_redrive_policy", detail="failing messages are retried forever")
        return
    lag_deliveries = settings.replica_lag_max_s // max(1, settings.replica_lag_interval_s) + 1
    if lag_deliveries >= max_receive:
        log.warning(
            "worker.redrive_policy_shorter_than_replica_lag",
            max_receive_count=max_receive,
            deliveries_needed=lag_deliveries,
        )
