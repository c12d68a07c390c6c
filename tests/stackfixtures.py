"""A per-test embedded stack: its own buckets, queues and databases on the shared servers."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from service.app import build_worker, utc_now
from service.config import Settings
from service.db import Database
from service.local.stack import (
    DEMO_EDC,
    StackNames,
    aws_client,
    create_database,
    provision_aws,
    seed_edc,
    stack_environment,
)
from service.logs import configure_logging
from service.migrate import migrate
from service.tracking import TrackingStore
from service.worker import Worker

PIPELINE_CODE = "IMAGING"
HANDLED_DDFILES = ("CT Scan", "MRI Series")
_counter = itertools.count(1)

# Test EDC: the demo rows plus a version code with a '+' and a duplicated record (ERRL1005).
TEST_EDC: dict[str, list[tuple[Any, ...]]] = {
    **DEMO_EDC,
    "subjecteventcrffile": [
        *DEMO_EDC["subjecteventcrffile"],
        (1005, 101, 1, "v1+x", 4),
        (1006, 101, 2, "dup", 1),
        (1007, 101, 2, "dup", 2),
        (1008, 102, 2, "v2", 1),
    ],
}


@dataclass
class TestStack:
    """One test's stack: env, settings, clients, and helpers to drive and inspect it."""

    __test__ = False  # not a test class, whatever its name

    env: dict[str, str]
    names: StackNames
    endpoint: str
    admin_inbox_url: str
    edc_url: str
    pipeline_url: str
    log: io.StringIO
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = aws_client(service, self.endpoint)
        return self.clients[service]

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env({**self.env, **overrides})

    # -- driving ---------------------------------------------------------------------------
    def upload(self, key: str, source: Path | bytes) -> None:
        body = source.read_bytes() if isinstance(source, Path) else source
        self.client("s3").put_object(Bucket=self.names.source_bucket, Key=key, Body=body)

    def send(self, body: str | dict[str, Any]) -> str:
        text = body if isinstance(body, str) else json.dumps(body)
        return str(
            self.client("sqs").send_message(QueueUrl=self.env["PIPELINE_QUEUE_URL"], MessageBody=text)[
                "MessageId"
            ]
        )

    @contextmanager
    def worker(self, clock: Callable[[], datetime] = utc_now, **overrides: str) -> Iterator[Worker]:
        """Run a worker in a thread for the duration of the block."""
        app = build_worker(self.settings(**overrides), clock=clock, poll_wait_s=1)
        thread = threading.Thread(target=app.worker.run, daemon=True)
        thread.start()
        try:
            yield app.worker
        finally:
            app.worker.stop()
            thread.join(timeout=30)
            app.close()
            assert not thread.is_alive(), "worker did not stop"

    # -- inspecting ------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = (), url: str | None = None) -> list[dict[str, Any]]:
        conn = psycopg2.connect(url or self.pipeline_url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                if cur.description is None:
                    return []
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def jobs(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM pipeline.edc_pipeline_file ORDER BY id")

    def errors(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM pipeline.edc_pipeline_error ORDER BY id")

    def series(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM pipeline.edc_pipeline_file_dicom ORDER BY id")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def quarantine_keys(self) -> list[str]:
        return self.keys(self.names.destination_bucket, "quarantine/")

    def read(self, bucket: str, key: str) -> bytes:
        return bytes(self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())

    def notifications(self) -> list[dict[str, str]]:
        """Admin notifications received so far (drains the inbox queue)."""
        found = []
        sqs = self.client("sqs")
        while True:
            response = sqs.receive_message(
                QueueUrl=self.admin_inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = response.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                envelope = json.loads(message["Body"])
                found.append({"subject": envelope.get("Subject", ""), "message": envelope["Message"]})
                sqs.delete_message(QueueUrl=self.admin_inbox_url, ReceiptHandle=message["ReceiptHandle"])

    def queue_depth(self, url_setting: str = "PIPELINE_QUEUE_URL") -> int:
        attributes = self.client("sqs").get_queue_attributes(
            QueueUrl=self.env[url_setting],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; jobs={self.jobs()} errors={self.errors()}"
                )
            time.sleep(0.2)

    def wait_settled(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` jobs are Completed or Failed and return all jobs."""

        def settled() -> bool:
            return sum(j["status"] in ("Completed", "Failed") for j in self.jobs()) >= count

        self.wait_for(settled, timeout, f"{count} settled jobs")
        return self.jobs()


def s3_event(bucket: str, key_encoded: str, etag: str, size: int = 1) -> dict[str, Any]:
    """An S3 ObjectCreated notification as S3 sends it (the key URL-encoded, "+" for a space)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": key_encoded, "eTag": etag, "size": size},
                },
            }
        ]
    }


def make_stack(endpoint: str, admin_url: str, *, max_receive_count: int = 40) -> TestStack:
    """Provision a fresh, uniquely named stack on the shared moto server and PostgreSQL."""
    n = next(_counter)
    suffix = f"t{n}-{int(time.time() * 1000) % 10**8}"
    names = StackNames.prefixed(suffix, max_receive_count=max_receive_count)
    aws = provision_aws(endpoint, names)
    db_suffix = suffix.replace("-", "_")
    edc_url = create_database(admin_url, f"edc_{db_suffix}")
    pipeline_url = create_database(admin_url, f"pipeline_{db_suffix}")
    seed_edc(edc_url, TEST_EDC)
    db = Database(pipeline_url, max_connections=1)
    try:
        migrate(db)
        TrackingStore(db).add_pipeline(PIPELINE_CODE, "Imaging uploads", HANDLED_DDFILES)
    finally:
        db.close()
    env = {
        **stack_environment(endpoint, names, aws, edc_url, pipeline_url),
        "REPLICA_LAG_INTERVAL_S": "1",
        "REPLICA_LAG_MAX_S": "4",
        "RETRY_BACKOFF_BASE_S": "1",
        "RETRY_BACKOFF_MAX_S": "2",
        "WORKER_CONCURRENCY": "2",
        "SHUTDOWN_GRACE_S": "10",
    }
    log = io.StringIO()
    configure_logging("INFO", "json", stream=log)
    return TestStack(env, names, endpoint, aws.admin_inbox_url, edc_url, pipeline_url, log)
