"""Source key layout (CONTRACT section 2) and quarantine names (CONTRACT section 6)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from service.errors import PermanentError, Stage

SOURCE_ROOT = "subjecteventcrffile"
_ID = re.compile(r"^[0-9]{1,18}$")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SourceKey:
    """The parts of a source key.

    ``subjecteventcrffile/{subject_id}/{subjecteventcrf_id}/{ddfile_name}/{version_code}{ext}``
    """

    subject_id: int
    subjecteventcrf_id: int
    ddfile_name: str
    version_code: str
    ext: str  # with the dot, lower case; "" when the file name has none


def ddfile_name_of(key: str) -> str | None:
    """The ``{ddfile_name}`` part of a key, or None if the key has no such part.

    Used to choose the pipeline before anything else is validated.
    """
    parts = key.split("/")
    return parts[3] if len(parts) == 5 and parts[0] == SOURCE_ROOT and parts[3] else None


def parse_source_key(key: str) -> SourceKey:
    """Split a decoded source key; raise ``PermanentError`` ERRL1001 if it breaks the layout."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != SOURCE_ROOT:
        raise PermanentError("ERRL1001", f"expected 5 path parts under {SOURCE_ROOT}/", Stage.KEY)
    _, subject_id, crf_id, ddfile_name, file_name = parts
    if not _ID.match(subject_id) or not _ID.match(crf_id):
        raise PermanentError("ERRL1001", "subject and subjecteventcrf ids must be integers", Stage.KEY)
    if not ddfile_name.strip() or not file_name.strip():
        raise PermanentError("ERRL1001", "ddfile name and file name must not be empty", Stage.KEY)
    suffix = PurePosixPath(file_name).suffix
    version_code = file_name[: -len(suffix)] if suffix else file_name
    if not version_code:
        raise PermanentError("ERRL1001", "version code is empty", Stage.KEY)
    return SourceKey(int(subject_id), int(crf_id), ddfile_name, version_code, suffix.lower())


@dataclass(frozen=True, slots=True)
class QuarantineFields:
    """The values a quarantine name is built from."""

    ddcrf: str
    ddfile: str
    participant: str
    event: str
    subjecteventcrf_id: int | str
    revision: int | str
    pipeline_file_id: int
    created_at: datetime
    ext: str


def clean_field(value: object) -> str:
    """A name part: white space removed (CONTRACT section 6), "/" replaced so it adds no level."""
    return _WHITESPACE.sub("", str(value)).replace("/", "-")


def render_name(template: str, fields: QuarantineFields) -> str:
    """Fill ``template`` (QUARANTINE_KEY_TEMPLATE) with cleaned fields; no prefix."""
    stamp = fields.created_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    return template.format(
        ddcrf=clean_field(fields.ddcrf),
        ddfile=clean_field(fields.ddfile),
        participant=clean_field(fields.participant),
        event=clean_field(fields.event),
        subjecteventcrf_id=clean_field(fields.subjecteventcrf_id),
        revision=clean_field(fields.revision),
        pipeline_file_id=fields.pipeline_file_id,
        timestamp=stamp,
        ext=fields.ext,
    )


def error_log_name(template: str, fields: QuarantineFields) -> str:
    """The quarantine-style file name (last path part, no extension) + ``_error_log.txt``."""
    name = render_name(template, fields)
    stem = name.rsplit("/", 1)[-1]
    if fields.ext and stem.endswith(fields.ext):
        stem = stem[: -len(fields.ext)]
    return f"{stem}_error_log.txt"
