"""structlog set-up: one JSON object per line on stdout (CONTRACT section 10)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

# Defence in depth: if a field with one of these names is ever logged, its value is replaced.
# The code never logs header values; this guards against a future slip.
_PHI_FIELDS = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "patientname",
        "patientid",
        "patientbirthdate",
        "referring_physician_name",
        "other_patient_ids",
        "participant_code",
    }
)


def _redact_phi_fields(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict.keys() & _PHI_FIELDS:
        event_dict[key] = "[redacted]"
    return event_dict


# The stream ``configure_logging`` was given (None: sys.stdout at the time of each line).
_stream: TextIO | None = None


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (stdout) at ``level``; stdlib loggers (boto3...) to stderr."""
    global _stream  # one log stream per process, chosen at start-up
    _stream = stream
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_phi_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # Without a stream, each line goes to whatever sys.stdout is at the time it is written.
        logger_factory=structlog.PrintLoggerFactory(stream) if stream else structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries stay quiet unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")


def write_line(line: str) -> None:
    """Write one ready-made line (an EMF metrics object) to the log stream, whatever the level.

    Through structlog's ``PrintLogger`` for the same stream, so it takes the same per-stream lock
    as the log lines: a line from another thread never lands in the middle of this one.
    """
    structlog.PrintLogger(_stream or sys.stdout).msg(line)


def describe_exception(exc: BaseException) -> dict[str, str]:
    """Log fields for an unexpected exception: its type and where it was raised, never its text.

    Exception messages from parsing libraries can quote header values (PHI), so they stay out.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown"
    return {"error_type": type(exc).__name__, "raised_at": where}
