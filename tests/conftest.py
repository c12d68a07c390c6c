"""Shared servers for the whole run: one moto HTTP server and one PostgreSQL.

PostgreSQL is a throwaway cluster started here, unless TEST_POSTGRES_ADMIN_URL (or else
PIPELINE_DATABASE_URL) names a server the tests may create databases on: each test creates and
drops only databases named edc_t*/pipeline_t*. Each test gets its own buckets, queues and databases.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

from service.local.postgres import ThrowawayPostgres
from service.local.stack import FAKE_CREDENTIALS, MotoServer
from service.logs import configure_logging
from service.retry import set_wait_enabled
from tests.stackfixtures import TestStack, make_stack


@pytest.fixture(scope="session", autouse=True)
def _fake_aws_credentials() -> Iterator[None]:
    # The worker's clients use the standard credential chain, as in production.
    saved = {k: os.environ.get(k) for k in (*FAKE_CREDENTIALS, "AWS_DEFAULT_REGION")}
    os.environ.update(FAKE_CREDENTIALS)
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    set_wait_enabled(False)
    yield
    set_wait_enabled(True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    # A test that ran the CLI may have pointed the logs at pytest's (now closed) capture stream.
    configure_logging("INFO", "json", stream=io.StringIO())


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = MotoServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    given = os.environ.get("TEST_POSTGRES_ADMIN_URL") or os.environ.get("PIPELINE_DATABASE_URL")
    if given:
        yield given
        return
    with ThrowawayPostgres() as postgres:
        yield postgres.url


@pytest.fixture
def stack(moto_endpoint: str, postgres_admin_url: str) -> TestStack:
    return make_stack(moto_endpoint, postgres_admin_url)


@pytest.fixture
def short_stack(moto_endpoint: str, postgres_admin_url: str) -> TestStack:
    """A stack whose queue sends a message to the DLQ after 2 deliveries."""
    return make_stack(moto_endpoint, postgres_admin_url, max_receive_count=2)
