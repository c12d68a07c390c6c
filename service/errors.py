"""The pipeline's error codes and the exception family the worker acts on.

The worker decides what happens to a message from the exception *type* alone:
``PermanentError`` is recorded and the message deleted (it never loops), ``RetryableError`` leaves
the message to come back after a visibility timeout (and, after ``maxReceiveCount`` deliveries, to
the dead-letter queue). Messages are built by this service from codes, UIDs and counts: never put
an exception's text from a DICOM library into one, it may quote a header value (PHI).

The dictionary is the design's (CONTRACT section 7): a situation the design names keeps its code;
new situations take the next free number of their stage. Whether a code is retried is its
``outcome``, never its letter.
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


class Outcome(StrEnum):
    """What the worker does with a job that raised the code (a column of the README table)."""

    PERMANENT = "permanent"  # recorded, the message acknowledged: it never loops
    RETRIED = "retried"  # the message comes back (after a backoff, or parked in place); see ``status``
    RECORDED = "recorded"  # an error row and report only: the job goes on (or is already settled)


# What the job and its message end as, when the code's entry does not say more (README column).
_DEFAULT_STATUS = {
    Outcome.PERMANENT: "Failed",
    Outcome.RETRIED: "retried; Failed with ERRL8003 when deliveries run out",
}


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One entry of the error dictionary: the code, what it means, and what happens to the job."""

    code: str
    meaning: str
    outcome: Outcome = Outcome.PERMANENT
    design: bool = False  # the design's own dictionary names this situation (CONTRACT section 7)
    status: str = ""  # what becomes of the job and its message, where the outcome's default is wrong

    @property
    def retryable(self) -> bool:
        return self.outcome is Outcome.RETRIED

    @property
    def job_status(self) -> str:
        """The README table's outcome column: what becomes of the job and its message."""
        return self.status or _DEFAULT_STATUS[self.outcome]


_P, _R, _D = Outcome.PERMANENT, Outcome.RETRIED, Outcome.RECORDED

# Numbered by the stage that raises them (CONTRACT section 7): L1 the EDC read-replica query and
# its input (the key), L2 starting the processing (download, local space), L3 the processing's
# outcome, L4 the copy to the destination and recording the result, L8 the pipeline job and its
# deliveries; S the DICOM processing itself. ``design=True``: the design's code for that situation.
_CODES = (
    ErrorCode(
        "ERRL1001",
        "Missing expected input: the source key does not match"
        " subjecteventcrffile/{subject}/{crf}/{ddfile}/{version}{ext}",
        design=True,
        status="Failed (no job when no ddfile can be read from the key)",
    ),
    ErrorCode("ERRL1002", "Failed to connect to the EDC read replica", _R, design=True),
    ErrorCode(
        "ERRL1003", "EDC record not found in the read replica within the replica-lag window", design=True
    ),
    ErrorCode(
        "ERRL1004", "Failed to query the EDC record (query error, or the lookup lacks columns)", _R, True
    ),
    ErrorCode("ERRL1005", "EDC lookup returned more than one record for the file"),
    ErrorCode(
        "ERRL2001", "Error starting the processing: the source object could not be downloaded", _R, True
    ),
    ErrorCode("ERRL2002", "Missing required input: the source object version no longer exists", design=True),
    ErrorCode("ERRL2003", "Object is larger than MAX_OBJECT_BYTES"),
    ErrorCode("ERRL2004", "Object cannot fit in WORK_DIR (its file system is too small for it)"),
    ErrorCode("ERRL2005", "Local temporary storage full or unwritable", _R),
    ErrorCode("ERRL3002", "No instance of the upload could be stamped; nothing was put in quarantine"),
    ErrorCode(
        "ERRL4001",
        "Missing required input for the copy: an EDC field the quarantine name needs is empty",
        design=True,
    ),
    ErrorCode("ERRL4002", "Error copying the file to the destination bucket (S3 unavailable)", _R, True),
    ErrorCode("ERRL4003", "Call to record the result failed (pipeline database)", _R, design=True),
    ErrorCode("ERRL4004", "Quarantine object exists and belongs to another job; not overwritten"),
    ErrorCode("ERRL4005", "Quarantine key or object metadata is too long for S3"),
    ErrorCode("ERRL4006", "Notification topic unavailable", _D, status="logged; the error rows stand"),
    ErrorCode("ERRL4007", "Error log could not be written", _D, status="logged; the error rows stand"),
    ErrorCode(
        "ERRL8001",
        "Call to create the pipeline job failed (pipeline database)",
        _R,
        design=True,
        # The worker's catch-all around a message's object: there is no job row to mark Failed.
        status="logged only (`worker.object_failed`), no job or error row; the message returns with"
        " backoff and reaches the DLQ after maxReceiveCount deliveries (an outage of the pipeline"
        " database parks it instead)",
    ),
    ErrorCode(
        "ERRL8002",
        "Job is being processed by another delivery",
        _R,
        # pipeline.py parks the message: it is looked at again in place, no delivery is spent.
        status="logged only (`job.claimed_elsewhere`), no error row; the message is parked in the"
        " worker and looked at again within 5 s, spending no delivery: acknowledged once the holder"
        " settles the job (`job.duplicate_delivery`), run once the holder's lease has run out",
    ),
    ErrorCode(
        "ERRL8003",
        "Delivery attempts exhausted; the message moves to the dead-letter queue",
        status="Failed; the message moves to the DLQ; a redrive runs the job again",
    ),
    ErrorCode(
        "ERRL8004",
        "Processing interrupted by worker shutdown; released for another task",
        _R,
        status="logged only (`worker.released_unfinished`); the message is made visible at once and"
        " the job's lease let go, for another task (its receive counts as a delivery)",
    ),
    ErrorCode("ERRL8005", "Unexpected internal error", _R),
    ErrorCode(
        "ERRS1001",
        "Missing expected input parameter: the message is not a recognised S3 event",
        _R,
        True,
        # worker.py leaves a malformed body for the redrive policy rather than deleting it.
        status="not processed; recorded on the first delivery (error row, error log under"
        " `unassigned/`, notification); the message returns with backoff and reaches the DLQ after"
        " maxReceiveCount deliveries, where an operator can read it. A reprocess message naming no"
        " job that exists is recorded and acknowledged",
    ),
    ErrorCode(
        "ERRS1002",
        "Failed to read the DICOM file: corrupt or truncated",
        design=True,
        status="Failed (single file, or a zip none of whose DICOM members can be read); a zip member"
        " is carried over and recorded (Completed + has_error)",
    ),
    ErrorCode(
        "ERRS1003",
        "The tracking answer does not match the input (pipeline_file_id)",
        _R,
        design=True,
        status="retried; Failed with ERRL8003 when deliveries run out. A reprocess message naming"
        " another object version's job is recorded and acknowledged (no job)",
    ),
    ErrorCode("ERRS1004", "Failed to call the tracking API: the pipeline database is unavailable", _R, True),
    ErrorCode("ERRS1005", "The tracking API returned a failed response (a statement was refused)", _R, True),
    ErrorCode("ERRS1006", "The ATRIUID is an empty string in the tracking response", _R, design=True),
    ErrorCode("ERRS1007", "No ATRIUID in the tracking response for a study_uid / series_uid", _R, True),
    ErrorCode(
        "ERRS1008",
        "ATRIUID insert failed for an image: the instance could not be stamped",
        design=True,
        status="Failed (single file); a zip member is carried over and recorded",
    ),
    ErrorCode(
        "ERRS1009",
        "Failed to read the DICOM file during the ATRIUID insert",
        design=True,
        status="as ERRS1008",
    ),
    ErrorCode(
        "ERRS1010",
        "Invalid input folder location: a zip member is absolute, escapes the archive or is a link",
        design=True,
    ),
    ErrorCode("ERRS1011", "Input files missing: the zip archive contains no DICOM instance", design=True),
    ErrorCode("ERRS1012", "File is not DICOM"),
    ErrorCode(
        "ERRS1013", "Zip member is not DICOM; carried over unchanged", _D, status="Completed + has_error"
    ),
    ErrorCode("ERRS1014", "DICOM instance lacks a Study or Series Instance UID", status="as ERRS1002"),
    ErrorCode("ERRS1015", "Zip archive is corrupt or unreadable"),
    ErrorCode(
        "ERRS1016",
        "Zip archive exceeds a limit: member count, expanded size, ratio, or members that overlap",
    ),
    ErrorCode("ERRS1017", "Zip archive contains a nested archive"),
    ErrorCode("ERRS1018", "Zip archive is encrypted"),
    ErrorCode(
        "ERRS1019",
        "Two zip members share one name (one overwrites the other when unzipped)",
        _D,
        status="Completed + has_error",
    ),
    ErrorCode(
        "ERRS1020", "Instance too large for the in-memory rewrite (MAX_IN_MEMORY_BYTES)", status="as ERRS1002"
    ),
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
    """A fault that can pass: leave the message for another delivery.

    ``dependency`` names the service that failed to answer (``service.breaker.Dependency``
    values), when the fault is one: if that service then fails a health probe too, the worker
    pauses instead of spending the message's deliveries on an outage.
    """

    def __init__(
        self, code: str, message: str, stage: Stage | None = None, *, dependency: str | None = None
    ) -> None:
        super().__init__(code, message, stage)
        self.dependency = dependency


class ConfigError(Exception):
    """A setting is missing or malformed; start-up stops with this one-line message."""
