"""Source key layout (CONTRACT section 2) and quarantine names (CONTRACT section 6)."""

from __future__ import annotations

import re
import string
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
    """The values a quarantine name is built from (``None``: the EDC had no value)."""

    ddcrf: str | None
    ddfile: str | None
    participant: str | None
    event: str | None
    subjecteventcrf_id: int | str | None
    revision: int | str | None
    pipeline_file_id: int
    created_at: datetime
    ext: str


def clean_field(value: object) -> str:
    """A name part: white space removed (CONTRACT section 6), "/" replaced so it adds no level."""
    return _WHITESPACE.sub("", str(value)).replace("/", "-")


def render_name(template: str, fields: QuarantineFields, missing: str | None = None) -> str:
    """Fill ``template`` (QUARANTINE_KEY_TEMPLATE) with cleaned fields; no prefix.

    A field the template uses that is empty raises ``PermanentError`` ERRL4001 (the design's
    "missing required input" for the copy), unless ``missing`` gives a stand-in (error logs: NA).
    """
    values: dict[str, object] = {
        "ddcrf": fields.ddcrf,
        "ddfile": fields.ddfile,
        "participant": fields.participant,
        "event": fields.event,
        "subjecteventcrf_id": fields.subjecteventcrf_id,
        "revision": fields.revision,
    }
    cleaned: dict[str, str] = {}
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    for name, value in values.items():
        text = clean_field(value) if value is not None else ""
        if not text and name in used:
            if missing is None:
                raise PermanentError("ERRL4001", f"EDC field {name} is empty", Stage.QUARANTINE)
            text = missing
        cleaned[name] = text
    stamp = fields.created_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    return template.format(
        **cleaned, pipeline_file_id=fields.pipeline_file_id, timestamp=stamp, ext=fields.ext
    )


def error_log_name(template: str, fields: QuarantineFields) -> str:
    """The quarantine-style file name (last path part, no extension) + ``_error_log.txt``; an
    empty EDC field reads NA."""
    name = render_name(template, fields, missing="NA")
    stem = name.rsplit("/", 1)[-1]
    if fields.ext and stem.endswith(fields.ext):
        stem = stem[: -len(fields.ext)]
    return f"{stem}_error_log.txt"
