"""Build the embedded stack: moto's HTTP server, AWS resources on it, databases, seed data.

The same functions serve ``python -m service local`` and the test fixtures, so the tests run
against exactly what a developer sees.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import psycopg2
import psycopg2.sql
import structlog

log = structlog.get_logger()

REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto only


class MotoServer:
    """moto's HTTP server on a free loopback port; boto3 reaches it over the network."""

    def __init__(self) -> None:
        self.endpoint = ""
        self._server: Any = None

    def start(self) -> str:
        """Start the server and return its endpoint URL."""
        from moto.server import ThreadedMotoServer

        # One access-log line per request would drown the demo output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        log.info("local.moto_started", endpoint=self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass(frozen=True, slots=True)
class StackNames:
    """Names of the AWS resources one stack uses (tests give each test its own)."""

    source_bucket: str = "edc-uploads"
    destination_bucket: str = "imaging-labs"
    error_log_bucket: str = "edc-pipeline-logs"
    queue: str = "edc-image-pipeline"
    dlq: str = "edc-image-pipeline-dlq"
    admin_topic: str = "edc-pipeline-admin"
    admin_inbox: str = "edc-pipeline-admin-inbox"  # an SQS subscription to read notifications
    max_receive_count: int = 5

    @classmethod
    def prefixed(cls, prefix: str, *, max_receive_count: int = 5) -> StackNames:
        """Names for a separate stack on the same server (tests, benchmarks): ``{prefix}-...``."""
        return cls(
            source_bucket=f"{prefix}-uploads",
            destination_bucket=f"{prefix}-labs",
            error_log_bucket=f"{prefix}-logs",
            queue=f"{prefix}-queue",
            dlq=f"{prefix}-dlq",
            admin_topic=f"{prefix}-admin",
            admin_inbox=f"{prefix}-inbox",
            max_receive_count=max_receive_count,
        )


@dataclass(frozen=True, slots=True)
class AwsResources:
    """What ``provision_aws`` created."""

    queue_url: str
    dlq_url: str
    admin_topic_arn: str
    admin_inbox_url: str


def aws_client(service: str, endpoint: str) -> Any:
    """A client for the embedded stack (fake credentials, fixed region)."""
    make_client: Any = boto3.client  # the service name is a variable; the stubs want a literal
    return make_client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def provision_aws(endpoint: str, names: StackNames) -> AwsResources:
    """Buckets, queue + DLQ (redrive policy), admin topic with an SQS inbox, S3 -> SQS events."""
    s3, sqs, sns = (aws_client(s, endpoint) for s in ("s3", "sqs", "sns"))
    for bucket in {names.source_bucket, names.destination_bucket, names.error_log_bucket}:
        s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=names.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=names.queue,
        Attributes={
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(names.max_receive_count)}
            ),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    topic_arn = sns.create_topic(Name=names.admin_topic)["TopicArn"]
    inbox_url = sqs.create_queue(QueueName=names.admin_inbox)["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "false"}
    )
    s3.put_bucket_notification_configuration(
        Bucket=names.source_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "subjecteventcrffile/"}]}},
                }
            ]
        },
    )
    return AwsResources(queue_url, dlq_url, topic_arn, inbox_url)


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` (dropping any old one) and return its URL."""
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg2.sql.Identifier(name)
                )
            )
            cur.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name)))
    finally:
        conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


# The demo's EDC: two participants, one imaging form with two file fields.
DEMO_EDC: dict[str, list[tuple[Any, ...]]] = {
    "subject": [(1, "P-001"), (2, "P-002")],
    "event": [(1, "SCREENING"), (2, "WEEK 4")],
    "ddcrf": [(1, "Imaging")],
    "ddfile": [(1, 1, "CT Scan"), (2, 1, "MRI Series")],
    "subjecteventcrf": [(101, 1, 1, 1), (102, 2, 2, 1)],
    "subjecteventcrffile": [
        (1001, 101, 1, "v1", 1),
        (1002, 102, 2, "v1", 2),
        (1003, 101, 1, "v2", 1),
        (1004, 102, 1, "v1", 3),
    ],
}


def seed_edc(url: str, rows: dict[str, list[tuple[Any, ...]]] | None = None) -> None:
    """Create the reference EDC schema at ``url`` and insert ``rows`` (default: ``DEMO_EDC``)."""
    schema = resources.files("service.sql").joinpath("edc_reference_schema.sql").read_text("utf-8")
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(schema)
            for table, values in (rows if rows is not None else DEMO_EDC).items():
                for row in values:
                    marks = ", ".join(["%s"] * len(row))
                    cur.execute(
                        psycopg2.sql.SQL("INSERT INTO edc.{} VALUES (" + marks + ")").format(
                            psycopg2.sql.Identifier(table)
                        ),
                        row,
                    )
    finally:
        conn.close()


def stack_environment(
    endpoint: str, names: StackNames, aws: AwsResources, edc_url: str, pipeline_url: str
) -> dict[str, str]:
    """The contract's environment variables for a worker on this stack."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "PIPELINE_QUEUE_URL": aws.queue_url,
        "PIPELINE_DLQ_URL": aws.dlq_url,
        "SOURCE_BUCKET": names.source_bucket,
        "DESTINATION_BUCKET": names.destination_bucket,
        "ERROR_LOG_BUCKET": names.error_log_bucket,
        "EDC_DATABASE_URL": edc_url,
        "PIPELINE_DATABASE_URL": pipeline_url,
        "ADMIN_TOPIC_ARN": aws.admin_topic_arn,
    }
