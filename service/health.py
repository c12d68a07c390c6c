"""Health probes for the circuit breaker: quick, single-attempt checks that a dependency answers.

A probe opens its own short-lived connection rather than borrowing a pooled one (the pool's
connections may be the broken ones) and gives up within seconds, so the worker loop that runs
it never stalls for long.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import psycopg2

from service.breaker import Dependency, Probe
from service.retry import is_transient_aws_error

PROBE_TIMEOUT_S = 5


def database_probe(url: str) -> Probe:
    """True when PostgreSQL at ``url`` accepts a connection and answers ``SELECT 1``."""

    def probe() -> bool:
        try:
            conn = psycopg2.connect(url, connect_timeout=PROBE_TIMEOUT_S, application_name="edc-probe")
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    return probe


# What PostgreSQL says when it answers and turns the login down: a wrong URL, not an outage.
_LOGIN_REFUSALS = {
    "password authentication failed": "the password was refused",
    "authentication failed": "the login was refused",
    "does not exist": "its database or role does not exist",
    "pg_hba.conf": "the server does not accept this client (pg_hba.conf)",
}


def login_refused(url: str) -> str | None:
    """Why PostgreSQL at ``url`` refuses the login, or None when it accepts it or does not answer
    (an outage, which the breaker waits out). The reason names no user, database or host."""
    try:
        psycopg2.connect(url, connect_timeout=PROBE_TIMEOUT_S, application_name="edc-probe").close()
    except psycopg2.OperationalError as exc:
        text = str(exc)
        return next((reason for marker, reason in _LOGIN_REFUSALS.items() if marker in text), None)
    return None


def s3_probe(client: Any, *buckets: str) -> Probe:
    """True when S3 answers a HEAD of each of ``buckets`` (any answer but a transient fault: a 404
    or 403 is S3 answering; that a bucket is wrong is not an outage). The worker reads the source
    bucket and writes the destination, and either one not answering fails every job."""

    def answers(bucket: str) -> bool:
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            return not is_transient_aws_error(exc)
        except botocore.exceptions.BotoCoreError:
            return False
        return True

    def probe() -> bool:
        # all() stops at the first bucket that fails: one probe waits out at most one timeout.
        return all(answers(bucket) for bucket in buckets)

    return probe


def worker_probes(
    pipeline_database_url: str,
    edc_database_url: str,
    s3_client: Any,
    destination_bucket: str,
    source_bucket: str | None = None,
) -> dict[Dependency, Probe]:
    """The probes of the three dependencies the worker pauses for. S3's covers the source bucket
    too when it is known (SOURCE_BUCKET); without it, events may name any bucket."""
    buckets = [destination_bucket, *([source_bucket] if source_bucket else [])]
    return {
        Dependency.PIPELINE_DATABASE: database_probe(pipeline_database_url),
        Dependency.EDC_REPLICA: database_probe(edc_database_url),
        Dependency.S3: s3_probe(s3_client, *dict.fromkeys(buckets)),
    }
