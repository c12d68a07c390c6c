"""How ``jobs list``, ``jobs show`` and ``inventory export`` look: tables and text for operators,
JSON and CSV for tools, and the next step an admin can take for a job.

Pure formatting over the rows of ``service.jobquery``: nothing here queries or decides what is
selected. Times are printed in UTC (ISO 8601 in JSON and CSV).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from service.jobquery import (
    INVENTORY_FILE_COLUMNS,
    SERIES_COLUMNS,
    InventoryFile,
    JobDetail,
    JobSummary,
    PipelineInfo,
    StuckRule,
)
from service.tracking import COMPLETED, EXHAUSTED_CODE, FAILED, IN_PROGRESS

REPROCESS = "python -m service reprocess --file-id {id}"
REDRIVE = "python -m service redrive"
SHOW = "python -m service jobs show {id}"
_LIST_HEADINGS = (
    "id",
    "pipeline",
    "status",
    "error",
    "attempts",
    "created (UTC)",
    "updated (UTC)",
    "reprocess_of",
    "file",
    "size",
)
_RIGHT_ALIGNED = frozenset({"id", "attempts", "reprocess_of", "size"})


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _plain(value: object) -> Any:
    """A JSON-ready value: datetimes as ISO 8601 UTC, the rest as they are."""
    return _iso(value) if isinstance(value, datetime) else value


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def describe_stuck_rule(rule: StuckRule) -> str:
    """One line saying which jobs count as stuck, with the threshold and where it comes from."""
    return (
        f"stuck: Started or In Progress, no live lease, not updated for more than "
        f"{int(rule.grace.total_seconds())} s ({_duration(rule.grace)}; {rule.basis}),"
        f" i.e. before {_when(rule.untouched_before)} UTC"
    )


# -- jobs list -----------------------------------------------------------------------------------
def _list_cells(job: JobSummary) -> tuple[str, ...]:
    error = job.error_code or ("yes" if job.has_error else "-")
    return (
        str(job.id),
        job.pipeline_code,
        job.status,
        error,
        str(job.attempts),
        _when(job.created_at),
        _when(job.updated_at),
        "" if job.reprocess_of is None else str(job.reprocess_of),
        job.file_name,
        "" if job.size is None else str(job.size),
    )


def write_job_table(jobs: Sequence[JobSummary], out: TextIO, stuck: StuckRule | None = None) -> None:
    """``jobs list`` as a table (and, for ``--stuck``, the rule and each job's way out)."""
    if stuck is not None:
        print(describe_stuck_rule(stuck), file=out)
    if not jobs:
        print("no jobs match", file=out)
        return
    rows = [_LIST_HEADINGS, *(_list_cells(job) for job in jobs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_LIST_HEADINGS))]
    for row in rows:
        cells = (
            cell.rjust(width) if heading in _RIGHT_ALIGNED else cell.ljust(width)
            for cell, width, heading in zip(row, widths, _LIST_HEADINGS, strict=True)
        )
        print("  ".join(cells).rstrip(), file=out)
    if stuck is not None:
        print("to finish a stuck job:", file=out)
        for job in jobs:
            print(f"  {_finish(job)}", file=out)


def _finish(job: JobSummary) -> str:
    """The command that finishes a stuck job (a job is reprocessed at most once: after that, the
    newer execution is the one to look at)."""
    if job.reprocessed_by is not None:
        return (
            f"job {job.id} was reprocessed by job {job.reprocessed_by}: {SHOW.format(id=job.reprocessed_by)}"
        )
    return REPROCESS.format(id=job.id)


def write_jobs_json(jobs: Sequence[JobSummary], out: TextIO, stuck: StuckRule | None = None) -> None:
    """``jobs list --format json``: ``{"jobs": [...]}``, plus the stuck rule and next steps."""
    document: dict[str, Any] = {}
    if stuck is not None:
        document["stuck_older_than_s"] = int(stuck.grace.total_seconds())
        document["stuck_basis"] = stuck.basis
    document["jobs"] = [
        {
            **{name: _plain(value) for name, value in asdict(job).items()},
            **({"next_step": _finish(job)} if stuck is not None else {}),
        }
        for job in jobs
    ]
    json.dump(document, out, indent=2)
    out.write("\n")


# -- jobs show -----------------------------------------------------------------------------------
def next_steps(job: JobDetail, stuck: StuckRule) -> list[str]:
    """What an admin can do about ``job`` now, one line each (commands to run, or why to wait)."""
    if job.reprocessed_by is not None:
        # A job is reprocessed at most once; further runs start from the newest execution.
        return [f"already reprocessed by job {job.reprocessed_by}: {SHOW.format(id=job.reprocessed_by)}"]
    reprocess = REPROCESS.format(id=job.id)
    if stuck.applies(job.status, job.lease_until, job.updated_at):
        return [f"stuck (no live lease, untouched since {_when(job.updated_at)} UTC): {reprocess}"]
    if job.status == FAILED and job.error_code == EXHAUSTED_CODE:
        return [
            f"deliveries ran out; its message is in the dead-letter queue: {REDRIVE}",
            f"or run the file again as a new execution: {reprocess}",
        ]
    if job.status == FAILED:
        return [f"not in quarantine; once the cause is fixed, run the file again: {reprocess}"]
    if job.status == COMPLETED and job.has_error:
        return ["in quarantine with the problems listed under errors; nothing to run"]
    if job.status == COMPLETED:
        return ["in quarantine; nothing to do"]
    if job.status == IN_PROGRESS and job.lease_until is not None and job.lease_until >= stuck.now:
        return [f"being processed (lease until {_when(job.lease_until)} UTC); nothing to do yet"]
    return [
        f"waiting for a retry or the EDC replica; stuck if untouched after "
        f"{_when(job.updated_at + stuck.grace)} UTC"
    ]


def _value(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def write_job_text(job: JobDetail, steps: Sequence[str], out: TextIO) -> None:
    """``jobs show`` for an operator."""
    error = f" ({job.error_code})" if job.error_code else " (has_error)" if job.has_error else ""
    lease = (
        "none"
        if job.lease_owner is None and job.lease_until is None
        else f"owner {_value(job.lease_owner)} until {_when(job.lease_until) or '-'} UTC"
    )
    quarantine = f"s3://{job.destination_bucket}/{job.destination_key}" if job.destination_key else "-"
    lines = [
        f"job {job.id}: {job.status}{error}",
        f"pipeline        {job.pipeline_code} ({job.pipeline_label}), kind {job.pipeline_kind}",
        f"attempts        {job.attempts}",
        f"created         {_when(job.created_at)} UTC   updated {_when(job.updated_at)} UTC"
        f"   completed {_when(job.completed_at) + ' UTC' if job.completed_at else '-'}",
        f"source          s3://{job.source_bucket}/{job.source_key}",
        f"  version       {job.source_version} (version id {_value(job.source_version_id)},"
        f" etag {_value(job.source_etag)}); event {_when(job.event_time)} UTC,"
        f" size {_value(job.source_size)}",
        f"file name       {job.file_name}",
        f"EDC             subject_event_crf_file_id {_value(job.subject_event_crf_file_id)},"
        f" subjecteventcrf_id {_value(job.subjecteventcrf_id)},"
        f" revision_number {_value(job.revision_number)}",
        f"                ddcrf {_value(job.ddcrf_name)}, ddfile {_value(job.ddfile_name)},"
        f" event {_value(job.event_code)}",
        f"lease           {lease}",
        f"quarantine      {quarantine}",
        f"integrity       source_bytes {_value(job.source_bytes)}  source_sha256 {_value(job.source_sha256)}",
        f"                quarantine_bytes {_value(job.quarantine_bytes)}"
        f"  quarantine_sha256 {_value(job.quarantine_sha256)}",
        f"                quarantine_s3_checksum {_value(job.quarantine_s3_checksum)}",
        f"counts          members {_value(job.members)}, instances_stamped {_value(job.instances_stamped)},"
        f" system_files {_value(job.system_files)}",
        f"reprocess       of job {_value(job.reprocess_of)}; reprocessed by job {_value(job.reprocessed_by)}",
        f"series ({len(job.series)})",
    ]
    lines.extend(
        f"  {s.atri_uid}  series {_value(s.series_number)}  instances {s.number_of_instances}"
        f"  study {s.study_uid}  series_uid {s.series_uid}"
        for s in job.series
    )
    lines.append(f"errors ({len(job.errors)})")
    for e in job.errors:
        where = f" {e.member}" if e.member else ""
        lines.append(f"  {_when(e.created_at)} UTC  {e.code}  {e.stage}{where}: {e.message}")
        lines.append(f"      {e.code}: {e.meaning}")
    lines.append("next")
    lines.extend(f"  {step}" for step in steps)
    print("\n".join(lines), file=out)


def write_job_json(job: JobDetail, steps: Sequence[str], stuck: bool, out: TextIO) -> None:
    """``jobs show --format json``: the row, its series and errors (with meanings), next steps."""
    document = {
        name: _plain(value) for name, value in asdict(job).items() if name not in ("series", "errors")
    }
    document["series"] = [asdict(s) for s in job.series]
    document["errors"] = [
        {**{name: _plain(value) for name, value in asdict(e).items()}, "meaning": e.meaning}
        for e in job.errors
    ]
    document["stuck"] = stuck
    document["next_steps"] = list(steps)
    json.dump(document, out, indent=2)
    out.write("\n")


# -- inventory export ----------------------------------------------------------------------------
def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _plain(value)


def write_inventory_csv(files: Iterable[InventoryFile], out: TextIO) -> int:
    """One row per series, the file's columns repeated; a file without series gets one row with
    empty series columns. Streams; returns the number of files written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((*INVENTORY_FILE_COLUMNS, *SERIES_COLUMNS))
    count = 0
    for item in files:
        file_cells = [_csv_cell(getattr(item, name)) for name in INVENTORY_FILE_COLUMNS]
        for series in item.series or (None,):
            series_cells = [
                "" if series is None else _csv_cell(getattr(series, name)) for name in SERIES_COLUMNS
            ]
            writer.writerow((*file_cells, *series_cells))
        count += 1
    return count


def write_inventory_json(
    pipelines: Sequence[PipelineInfo], files: Iterable[InventoryFile], generated_at: datetime, out: TextIO
) -> int:
    """``{"generated_at", "pipelines": [...], "files": [{..., "series": [...]}]}``, written one
    file at a time (the document is never built whole). Returns the number of files written."""
    head = {"generated_at": _iso(generated_at), "pipelines": [asdict(p) for p in pipelines]}
    out.write(json.dumps(head)[:-1] + ', "files": [')
    count = 0
    for item in files:
        record = {name: _plain(getattr(item, name)) for name in INVENTORY_FILE_COLUMNS}
        record["series"] = [asdict(s) for s in item.series]
        out.write(("\n" if count == 0 else ",\n") + json.dumps(record))
        count += 1
    out.write("\n]}\n")
    return count
