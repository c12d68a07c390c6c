"""Settings: read from the environment once, at start-up, and validated there.

Nothing else in the service reads ``os.environ``. A missing or malformed setting raises
``ConfigError`` with one line naming it; the CLI prints that line and exits 2.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag, Tag

from service.errors import ConfigError
from service.processors.splice import check_tracking_tag

DEFAULT_QUARANTINE_TEMPLATE = (
    "{ddcrf}_{ddfile}/{ddcrf}_{ddfile}_{participant}_{event}_{subjecteventcrf_id}_{revision}"
    "_{pipeline_file_id}_{timestamp}{ext}"
)
QUARANTINE_FIELDS = frozenset(
    {
        "ddcrf",
        "ddfile",
        "participant",
        "event",
        "subjecteventcrf_id",
        "revision",
        "pipeline_file_id",
        "timestamp",
        "ext",
    }
)

# VRs that can carry an ATRIUID ("{job}.{row}", up to 64 characters) as what it is: an identifier.
_UID_CAPABLE_VRS = frozenset({"LO", "UI", "ST", "LT", "UC", "UT"})

# What each required-by-a-command setting is for, so the error line tells the operator why.
_PURPOSE = {
    "PIPELINE_QUEUE_URL": "the SQS queue the worker reads S3 events from",
    "PIPELINE_DLQ_URL": "the dead-letter queue that redrive reads",
    "DESTINATION_BUCKET": "the bucket whose quarantine prefix receives stamped files",
    "EDC_DATABASE_URL": "the EDC read replica the worker looks files up in",
    "PIPELINE_DATABASE_URL": "the pipeline tracking database",
    "SOURCE_BUCKET": "the upload bucket that reprocess --prefix lists",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of CONTRACT section 9, typed. ``None`` means not set."""

    aws_region: str | None  # AWS_REGION; None leaves it to the standard boto3 chain
    aws_endpoint_url: str | None  # AWS_ENDPOINT_URL: moto/LocalStack; None on real AWS
    pipeline_queue_url: str | None  # PIPELINE_QUEUE_URL
    pipeline_dlq_url: str | None  # PIPELINE_DLQ_URL
    source_bucket: str | None  # SOURCE_BUCKET: events for other buckets are acknowledged, ignored
    destination_bucket: str | None  # DESTINATION_BUCKET
    quarantine_prefix: str  # QUARANTINE_PREFIX, ends with "/" (or is empty)
    quarantine_key_template: str  # QUARANTINE_KEY_TEMPLATE: str.format fields, see README
    error_log_bucket: str | None  # ERROR_LOG_BUCKET; defaults to DESTINATION_BUCKET
    error_log_prefix: str  # ERROR_LOG_PREFIX
    edc_database_url: str | None  # EDC_DATABASE_URL (read replica, opened read-only)
    pipeline_database_url: str | None  # PIPELINE_DATABASE_URL
    edc_lookup_sql: Path | None  # EDC_LOOKUP_SQL: a replacement for service/sql/edc_lookup.sql
    admin_topic_arn: str | None  # ADMIN_TOPIC_ARN: errors (and completions) are published here
    digest_topic_arn: str | None  # DIGEST_TOPIC_ARN
    digest_email_from: str | None  # DIGEST_EMAIL_FROM
    digest_email_to: tuple[str, ...]  # DIGEST_EMAIL_TO, comma separated
    slack_webhook_url: str | None  # SLACK_WEBHOOK_URL
    digest_min_window_minutes: int  # DIGEST_MIN_WINDOW_MINUTES: a shorter new window waits for the next run
    notify_on_completion: bool  # NOTIFY_ON_COMPLETION: also announce successful jobs
    worker_concurrency: int  # WORKER_CONCURRENCY: messages processed at once per task
    visibility_timeout_s: int  # VISIBILITY_TIMEOUT_S: lease on a message, renewed while it runs
    replica_lag_interval_s: int  # REPLICA_LAG_INTERVAL_S: re-show delay while the EDC row is missing
    replica_lag_max_s: int  # REPLICA_LAG_MAX_S: give up (ERRL1003) this long after the S3 event
    shutdown_grace_s: int  # SHUTDOWN_GRACE_S: in-flight work gets this long after SIGTERM
    retry_backoff_base_s: int  # RETRY_BACKOFF_BASE_S: first re-show delay after a transient fault
    retry_backoff_max_s: int  # RETRY_BACKOFF_MAX_S: cap of the doubling re-show delay
    dicom_tracking_tag: BaseTag  # DICOM_TRACKING_TAG: "gggg,eeee" or a keyword
    work_dir: Path | None  # WORK_DIR: temp space for downloads and outputs
    max_object_bytes: int  # MAX_OBJECT_BYTES: larger uploads fail with ERRL2003
    max_in_memory_bytes: int  # MAX_IN_MEMORY_BYTES: larger files may not take the in-memory rewrite
    s3_transfer_threads: int  # S3_TRANSFER_THREADS: connections per job for one large object
    s3_part_size: int  # S3_PART_SIZE_MB (in bytes): a ranged GET's or an upload part's size
    s3_copy_min_bytes: int  # S3_COPY_MIN_MB (in bytes; 0 = off): single files stamped inside S3
    zip_max_members: int  # ZIP_MAX_MEMBERS
    zip_max_expanded_bytes: int  # ZIP_MAX_EXPANDED_BYTES
    zip_max_ratio: float  # ZIP_MAX_RATIO: expanded/compressed size of one member
    log_level: str  # LOG_LEVEL
    log_format: str  # LOG_FORMAT: json | console
    metrics: str  # METRICS: emf (CloudWatch Embedded Metric Format lines on stdout) | off
    study: str  # STUDY: the metrics' Study dimension; defaults to SOURCE_BUCKET, else "default"
    ecs_agent_uri: str | None  # ECS_AGENT_URI: set by ECS; enables task scale-in protection
    task_protection_minutes: int  # TASK_PROTECTION_MINUTES: protection length, renewed while busy
    heartbeat_file: Path  # HEARTBEAT_FILE: touched by the worker loop, read by `health`

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse and validate ``environ``; raise ``ConfigError`` naming the first bad setting."""
        env = _Reader(environ)
        destination = env.text("DESTINATION_BUCKET")
        source = env.text("SOURCE_BUCKET")
        work_dir = env.directory("WORK_DIR")
        return cls(
            aws_region=env.text("AWS_REGION") or env.text("AWS_DEFAULT_REGION"),
            aws_endpoint_url=env.url("AWS_ENDPOINT_URL", ("http", "https")),
            pipeline_queue_url=env.url("PIPELINE_QUEUE_URL", ("http", "https")),
            pipeline_dlq_url=env.url("PIPELINE_DLQ_URL", ("http", "https")),
            source_bucket=source,
            destination_bucket=destination,
            quarantine_prefix=env.prefix("QUARANTINE_PREFIX", "quarantine/"),
            quarantine_key_template=env.template("QUARANTINE_KEY_TEMPLATE"),
            error_log_bucket=env.text("ERROR_LOG_BUCKET") or destination,
            error_log_prefix=env.prefix("ERROR_LOG_PREFIX", "image_pipelines/error_logs/"),
            edc_database_url=env.url("EDC_DATABASE_URL", ("postgresql", "postgres")),
            pipeline_database_url=env.url("PIPELINE_DATABASE_URL", ("postgresql", "postgres")),
            edc_lookup_sql=env.existing_file("EDC_LOOKUP_SQL"),
            admin_topic_arn=env.arn("ADMIN_TOPIC_ARN"),
            digest_topic_arn=env.arn("DIGEST_TOPIC_ARN"),
            digest_email_from=env.text("DIGEST_EMAIL_FROM"),
            digest_email_to=env.csv("DIGEST_EMAIL_TO"),
            slack_webhook_url=env.url("SLACK_WEBHOOK_URL", ("https", "http")),
            # A scheduler's second fire just past a 15-minute boundary must not send a sliver.
            digest_min_window_minutes=env.integer("DIGEST_MIN_WINDOW_MINUTES", 60, low=0, high=7 * 1440),
            notify_on_completion=env.boolean("NOTIFY_ON_COMPLETION", default=True),
            worker_concurrency=env.integer("WORKER_CONCURRENCY", 4, low=1, high=64),
            visibility_timeout_s=env.integer("VISIBILITY_TIMEOUT_S", 60, low=10, high=43_200),
            replica_lag_interval_s=env.integer("REPLICA_LAG_INTERVAL_S", 30, low=0, high=43_200),
            replica_lag_max_s=env.integer("REPLICA_LAG_MAX_S", 900, low=0, high=14 * 86_400),
            shutdown_grace_s=env.integer("SHUTDOWN_GRACE_S", 90, low=0, high=3_600),
            retry_backoff_base_s=env.integer("RETRY_BACKOFF_BASE_S", 15, low=0, high=43_200),
            retry_backoff_max_s=env.integer("RETRY_BACKOFF_MAX_S", 900, low=0, high=43_200),
            dicom_tracking_tag=env.dicom_tag("DICOM_TRACKING_TAG", "0012,0071"),
            work_dir=work_dir,
            max_object_bytes=env.integer("MAX_OBJECT_BYTES", 50 * 1024**3, low=1),
            max_in_memory_bytes=env.integer("MAX_IN_MEMORY_BYTES", 256 * 1024**2, low=1024**2),
            # 10 connections, as ``aws s3 cp`` uses.
            s3_transfer_threads=env.integer("S3_TRANSFER_THREADS", 10, low=1, high=64),
            # S3 refuses parts under 5 MiB (but the last); 10,000 parts of 512 MiB pass 5 TB.
            s3_part_size=env.integer("S3_PART_SIZE_MB", 8, low=5, high=512) * 1024**2,
            # Below a few parts the bytes saved do not pay for the extra requests.
            s3_copy_min_bytes=env.integer("S3_COPY_MIN_MB", 64, low=0, high=10**7) * 1024**2,
            zip_max_members=env.integer("ZIP_MAX_MEMBERS", 20_000, low=1),
            zip_max_expanded_bytes=env.integer("ZIP_MAX_EXPANDED_BYTES", 50 * 1024**3, low=1),
            zip_max_ratio=float(env.integer("ZIP_MAX_RATIO", 200, low=1)),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("LOG_FORMAT", "json", ("json", "console")),
            metrics=env.choice("METRICS", "emf", ("emf", "off")),
            study=env.dimension("STUDY") or source or "default",
            ecs_agent_uri=env.url("ECS_AGENT_URI", ("http", "https")),
            task_protection_minutes=env.integer("TASK_PROTECTION_MINUTES", 60, low=2, high=2_880),
            heartbeat_file=Path(
                env.text("HEARTBEAT_FILE") or Path(work_dir or tempfile.gettempdir()) / "edc-worker.heartbeat"
            ),
        )

    def require(self, *names: str) -> None:
        """Raise ``ConfigError`` for the first of ``names`` (environment names) that is unset."""
        by_env = {f.name.upper(): f.name for f in fields(self)}
        for name in names:
            if getattr(self, by_env[name]) in (None, "", ()):
                purpose = _PURPOSE.get(name, "required by this command")
                raise ConfigError(f"missing setting {name} ({purpose})")


def redact_url(url: str | None) -> str:
    """``url`` without its password (in the authority or as a ``password`` parameter)."""
    if not url:
        return ""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, host = netloc.rpartition("@")
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class _Reader:
    """Typed accessors over the environment; each raises ``ConfigError`` naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            # Never echo the value: a database URL may hold a password.
            raise ConfigError(f"malformed setting {name}: expected a {'/'.join(schemes)} URL")
        return value

    def dimension(self, name: str) -> str | None:
        """A CloudWatch dimension value: 1-255 printable characters."""
        value = self.text(name)
        if value is not None and (len(value) > 255 or not value.isprintable()):
            raise ConfigError(f"malformed setting {name}: 1-255 printable characters")
        return value

    def arn(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not value.startswith("arn:"):
            raise ConfigError(f"malformed setting {name}: expected an ARN (arn:...), got {value!r}")
        return value

    def prefix(self, name: str, default: str) -> str:
        value = self._env.get(name, default).strip().lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    def csv(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self._env.get(name, "").split(",") if part.strip())

    def boolean(self, name: str, *, default: bool) -> bool:
        value = (self.text(name) or "").lower()
        if not value:
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"malformed setting {name}: expected true/false, got {value!r}")

    def integer(self, name: str, default: int, *, low: int, high: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"malformed setting {name}: expected an integer, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"malformed setting {name}: must be {bounds}, got {value}")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name) or default
        normalised = value.upper() if allowed[0].isupper() else value.lower()
        if normalised not in allowed:
            raise ConfigError(f"malformed setting {name}: one of {', '.join(allowed)}, got {value!r}")
        return normalised

    def existing_file(self, name: str) -> Path | None:
        value = self.text(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"malformed setting {name}: no such file {value}")
        return path

    def directory(self, name: str) -> Path | None:
        value = self.text(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_dir():
            raise ConfigError(f"malformed setting {name}: no such directory {value}")
        return path

    def dicom_tag(self, name: str, default: str) -> BaseTag:
        raw = self.text(name) or default
        try:
            if "," in raw:
                group, element = (int(part.strip(" ()"), 16) for part in raw.split(","))
                tag = Tag(group, element)
            else:
                tag = Tag(raw)
            dictionary_VR(tag)
        except (ValueError, KeyError):
            raise ConfigError(
                f"malformed setting {name}: expected a DICOM dictionary tag like 0012,0071, got {raw!r}"
            ) from None
        if tag.group % 2 or tag.group < 0x0008 or tag >= Tag(0x7FE0, 0x0008):
            raise ConfigError(f"malformed setting {name}: must be a public dataset tag before pixel data")
        # The processor's own check, at start-up rather than on every job; and a VR that holds
        # a UID of up to 64 characters (SH, CS or a date would overflow or misstate it).
        try:
            vr = check_tracking_tag(tag)
        except ValueError:
            vr = dictionary_VR(tag)
        if vr not in _UID_CAPABLE_VRS:
            raise ConfigError(
                f"malformed setting {name}: {raw} has VR {vr}; the ATRIUID needs one of "
                f"{', '.join(sorted(_UID_CAPABLE_VRS))}"
            )
        return tag

    def template(self, name: str) -> str:
        value = self.text(name) or DEFAULT_QUARANTINE_TEMPLATE
        try:
            used = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        except ValueError:
            raise ConfigError(f"malformed setting {name}: not a valid format string") from None
        unknown = used - QUARANTINE_FIELDS
        if unknown or "pipeline_file_id" not in used:
            raise ConfigError(
                f"malformed setting {name}: fields must be among {sorted(QUARANTINE_FIELDS)} "
                "and include {pipeline_file_id} (it makes every name unique)"
            )
        return value
