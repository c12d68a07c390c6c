"""The pipeline's error codes and the exception family the worker acts on.

The worker decides what happens to a message from the exception *type* alone:
``PermanentError`` is recorded and the message deleted (it never loops), ``RetryableError`` leaves
the message to come back after a visibility timeout (and, after ``maxReceiveCount`` deliveries, to
the dead-letter queue). Messages are built by this service from codes, UIDs and counts: never put
an exception's text from a DICOM library into one, it may quote a header value (PHI).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Where in the flow an error happened (CONTRACT section 1)."""

    EVENT = "event"
    KEY = "key"
    EDC_LOOKUP = "edc_lookup"
    TRACKING = "tracking"
    DOWNLOAD = "download"
    PROCESS = "process"
    QUARANTINE = "quarantine"
    NOTIFY = "notify"
    WORKER = "worker"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One entry of the error dictionary: the code, what it means, and whether it can pass."""

    code: str
    meaning: str
    retryable: bool = False


_CODES = (
    # ERRL: the file or its record is the problem. Permanent unless marked.
    ErrorCode(
        "ERRL1001", "Source key does not match subjecteventcrffile/{subject}/{crf}/{ddfile}/{version}{ext}"
    ),
    ErrorCode("ERRL1002", "Source object version no longer exists in the source bucket"),
    ErrorCode("ERRL1003", "EDC record not found in the read replica within the replica-lag window"),
    ErrorCode("ERRL1004", "EDC lookup returned more than one record for the file"),
    ErrorCode("ERRL2001", "File is not DICOM"),
    ErrorCode("ERRL2002", "DICOM file is corrupt or truncated"),
    ErrorCode("ERRL2003", "DICOM instance lacks a Study or Series Instance UID"),
    ErrorCode("ERRL2004", "DICOM instance could not be stamped; carried over unchanged"),
    ErrorCode("ERRL3001", "Zip archive is corrupt or unreadable"),
    ErrorCode("ERRL3002", "Zip member name is absolute or escapes the archive (path traversal)"),
    ErrorCode("ERRL3003", "Zip archive exceeds the member count, expanded size or ratio limits"),
    ErrorCode("ERRL3004", "Zip archive contains a nested archive"),
    ErrorCode("ERRL3005", "Zip member is not DICOM; carried over unchanged"),
    ErrorCode("ERRL3006", "Zip archive contains no DICOM instance"),
    ErrorCode("ERRL3007", "Zip archive is encrypted"),
    ErrorCode("ERRL4001", "Quarantine object exists and belongs to another job; not overwritten"),
    ErrorCode("ERRL5001", "Object is larger than the configured maximum size"),
    ErrorCode("ERRL8001", "Unexpected internal error", retryable=True),
    # ERRS: the system around the file is the problem. Retried; recorded when retries run out.
    ErrorCode("ERRS1001", "Message body is not a recognised S3 event"),
    ErrorCode("ERRS1002", "Source bucket unavailable (network, throttling, 5xx)", retryable=True),
    ErrorCode("ERRS1003", "Destination bucket unavailable (network, throttling, 5xx)", retryable=True),
    ErrorCode("ERRS1004", "EDC read replica unavailable", retryable=True),
    ErrorCode("ERRS1005", "Pipeline database unavailable", retryable=True),
    ErrorCode("ERRS1006", "Notification topic unavailable", retryable=True),
    ErrorCode("ERRS1007", "Local temporary storage full or unwritable", retryable=True),
    ErrorCode("ERRS1008", "Processing interrupted by worker shutdown", retryable=True),
    ErrorCode("ERRS1009", "Job is being processed by another delivery", retryable=True),
    ErrorCode("ERRS1010", "Delivery attempts exhausted; message moves to the dead-letter queue"),
    ErrorCode("ERRS1011", "Error log could not be written", retryable=True),
)

@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One recorded error: code, our own message (no header values), stage, optional member."""

    code: str
    message: str
    stage: str
    member: str | None = None


ERROR_CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _CODES}


def meaning_of(code: str) -> str:
    """The dictionary meaning of ``code`` (``KeyError`` for an unknown code is a bug)."""
    return ERROR_CODES[code].meaning


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose; carries a dictionary code."""

    def __init__(self, code: str, message: str, stage: Stage | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stage = stage


class PermanentError(PipelineError):
    """The input itself is wrong: record it, acknowledge the message, never retry."""


class RetryableError(PipelineError):
    """A fault that can pass: leave the message for another delivery."""


class ConfigError(Exception):
    """A setting is missing or malformed; start-up stops with this one-line message."""
