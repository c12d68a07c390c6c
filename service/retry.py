"""tenacity policies for single I/O calls (the first of two retry layers; SQS is the second).

Only faults that can pass are retried: throttling, 5xx, timeouts and connection errors. Attempts
and total time are bounded so a message never outlives its visibility lease inside one call.
``set_wait_enabled(False)`` removes the waits, for tests.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import botocore.exceptions
import psycopg2
import requests
import structlog
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

log = structlog.get_logger()

F = TypeVar("F", bound=Callable[..., Any])

_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "KMS.ThrottlingException",
    }
)
_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,  # includes EndpointConnectionError, ConnectTimeout
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)

_waits_enabled = True


def set_wait_enabled(enabled: bool) -> None:
    """Turn the backoff waits off (tests) or on again; attempts stay bounded either way."""
    global _waits_enabled
    _waits_enabled = enabled


def is_transient_aws_error(exc: BaseException) -> bool:
    """True for AWS errors that another attempt may fix."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error.get("Code", "") in _THROTTLING_CODES or status >= 500 or status == 429
    return False


def is_transient_db_error(exc: BaseException) -> bool:
    """True for PostgreSQL errors that another attempt may fix (connection lost, failover)."""
    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)


def _backoff_s(attempt: int) -> float:
    """The wait after the call's ``attempt``-th failure: 0.2 s doubling, plus up to 0.5 s of
    jitter, at most 10 s (tenacity's exponential-with-jitter shape, without its changing
    constructor arguments)."""
    if not _waits_enabled:
        return 0.0
    return min(10.0, 0.2 * 2.0 ** (attempt - 1) + random.uniform(0, 0.5))  # noqa: S311 - jitter, not secrecy


def _wait(retry_state: RetryCallState) -> float:
    # The tenacity loop starts at the call's second attempt (``_policy``).
    return _backoff_s(retry_state.attempt_number + 1)


def _log_retry(exc: BaseException | None, fn: object, attempt: int) -> None:
    log.warning(
        "retry.scheduled",
        call=getattr(fn, "__qualname__", "call"),
        attempt=attempt,
        error_type=type(exc).__name__ if exc else None,
    )


def _log_later_retry(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    _log_retry(exc, retry_state.fn, retry_state.attempt_number + 1)


def _policy(predicate: Callable[[BaseException], bool], attempts: int, seconds: float) -> Callable[[F], F]:
    """Up to ``attempts`` attempts within about ``seconds``, retrying what ``predicate`` accepts.

    The first attempt is a plain call: tenacity builds a copy of its state machine for every call
    it wraps, which cost ~0.1 ms of CPU each, a dozen times per file, for calls that almost always
    succeed. Only after a retryable failure (logged, waited for) does tenacity take over, for the
    remaining ``attempts - 1`` and what is left of ``seconds``, with the same waits and log lines
    the whole loop would have had.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not predicate(exc) or time.monotonic() - started >= seconds:
                    raise
                _log_retry(exc, fn, 1)
            time.sleep(_backoff_s(1))
            # The loop gets what is left of the call's time bound, not a fresh one.
            left = max(0.0, seconds - (time.monotonic() - started))
            remaining = retry(
                retry=retry_if_exception(predicate),
                stop=stop_after_attempt(attempts - 1) | stop_after_delay(left),
                wait=_wait,
                before_sleep=_log_later_retry,
                reraise=True,
            )
            return remaining(fn)(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate


aws_retry: Callable[[F], F] = _policy(is_transient_aws_error, attempts=5, seconds=60)
"""Decorator for one AWS call: up to 5 attempts within 60 s, on throttling/5xx/connection errors."""

db_retry: Callable[[F], F] = _policy(is_transient_db_error, attempts=4, seconds=30)
"""Decorator for one database connect/transaction: up to 4 attempts within 30 s."""


class TransientHttpError(Exception):
    """An HTTP answer another attempt may change (429 or 5xx); ``status`` is the answer's code."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def is_transient_http_error(exc: BaseException) -> bool:
    """True for a 429/5xx answer, a connection error or a timeout of a plain HTTP call."""
    return isinstance(exc, TransientHttpError | requests.ConnectionError | requests.Timeout)


http_retry: Callable[[F], F] = _policy(is_transient_http_error, attempts=4, seconds=30)
"""Decorator for one HTTP call (a Slack webhook): up to 4 attempts within 30 s, on 429/5xx/connection."""
