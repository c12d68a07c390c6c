"""Job metrics as CloudWatch Embedded Metric Format (EMF) lines on the log stream.

On Fargate the awslogs driver carries stdout to CloudWatch Logs, which turns every EMF line into
metrics: no agent, no ``PutMetricData`` permission, no library (``aws-embedded-metrics``' default
agent sink fails on Fargate without an agent). A line is one JSON object, written through the same
stream and lock as the structlog lines (``service.logs.write_line``), so the two never interleave
mid-line, and it carries ``event``/``level``/``timestamp`` like a log line, so the stream stays one
JSON object per line.

Dimensions are low-cardinality only: ``Study`` (the ``STUDY`` setting), ``PipelineCode`` and, on
failures, ``ErrorCode``. Never a key, an id or a header value: those would make one metric per
file, and keys carry subject ids.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from service.logs import write_line

NAMESPACE = "EDCImagePipeline"
# A file with no pipeline (a key that fits no layout) is counted under this pipeline code.
UNASSIGNED = "unassigned"

_UNITS = {
    "FilesCompleted": "Count",
    "FilesFailed": "Count",
    "ProcessingDurationMs": "Milliseconds",
    "UploadToQuarantineLatencyMs": "Milliseconds",
    "BytesProcessed": "Bytes",
}


class Metrics(Protocol):
    """Where the pipeline reports a job's end. Implementations never raise."""

    def job_completed(
        self, pipeline_code: str, *, duration_ms: int, latency_ms: int | None, bytes_processed: int | None
    ) -> None: ...

    def job_failed(self, pipeline_code: str, error_code: str, *, duration_ms: int | None) -> None: ...


class NoMetrics:
    """``METRICS=off``: nothing is written."""

    def job_completed(
        self, pipeline_code: str, *, duration_ms: int, latency_ms: int | None, bytes_processed: int | None
    ) -> None:
        return None

    def job_failed(self, pipeline_code: str, error_code: str, *, duration_ms: int | None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class EmfMetrics:
    """``METRICS=emf``: one EMF line per settled job.

    A completed job: ``FilesCompleted`` 1, ``ProcessingDurationMs``, ``UploadToQuarantineLatencyMs``
    (S3 event time to the quarantine object written), ``BytesProcessed`` (the source version's
    size), by [Study] and [Study, PipelineCode]. A failed job: ``FilesFailed`` 1 and
    ``ProcessingDurationMs``, by [Study], [Study, PipelineCode] and [Study, PipelineCode, ErrorCode].
    """

    study: str
    write: Callable[[str], None] = write_line
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000)

    def job_completed(
        self, pipeline_code: str, *, duration_ms: int, latency_ms: int | None, bytes_processed: int | None
    ) -> None:
        values: dict[str, int | None] = {
            "FilesCompleted": 1,
            "ProcessingDurationMs": duration_ms,
            "UploadToQuarantineLatencyMs": latency_ms,
            "BytesProcessed": bytes_processed,
        }
        self._emit({"Study": self.study, "PipelineCode": pipeline_code}, values)

    def job_failed(self, pipeline_code: str, error_code: str, *, duration_ms: int | None) -> None:
        values: dict[str, int | None] = {"FilesFailed": 1, "ProcessingDurationMs": duration_ms}
        self._emit({"Study": self.study, "PipelineCode": pipeline_code, "ErrorCode": error_code}, values)

    def _emit(self, dimensions: dict[str, str], values: dict[str, int | None]) -> None:
        # A metric must never fail a job (stdout is the log itself: nowhere else to say so).
        with contextlib.suppress(Exception):
            self.write(emf_line(dimensions, values, self.now_ms()))


def emf_line(dimensions: dict[str, str], values: dict[str, int | None], timestamp_ms: int) -> str:
    """One EMF JSON object (no newline). ``dimensions`` in order: every prefix from [first] on is a
    dimension set. Values that are ``None`` are left out."""
    names = list(dimensions)
    metrics = {name: value for name, value in values.items() if value is not None}
    document: dict[str, object] = {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [names[:n] for n in range(1, len(names) + 1)],
                    "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in metrics],
                }
            ],
        },
        **dimensions,
        **metrics,
        "event": "metrics.job",
        "level": "info",
        "timestamp": datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(document, separators=(",", ":"))
