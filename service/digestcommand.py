"""``digest``: the lab digest, sent on every configured channel once per window.

Without ``--since`` a run covers the next window of its scope (``service.digestwindow``), records
it and claims each channel before sending, so a scheduler that fires twice sends once. One channel
failing (a ``ChannelError`` or any other exception) is reported with one line, does not stop the
others, and leaves its claim ``failed`` for ``--retry-failed``; the window still advances. A new
window shorter than ``DIGEST_MIN_WINDOW_MINUTES`` sends nothing (one line, exit 0) and is left to
the next run.
``--since`` is an ad-hoc digest that records nothing; ``--dry-run`` sends and records nothing.
Output: one summary line and one line per channel (sent / skipped / failed), never a PHI value, a
webhook URL or a response body.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
import requests
import structlog

from service.digestquery import DigestFacts, collect_facts, read_dlq_depth
from service.digestrender import render_html, render_text, subject_line, window_text
from service.digestsend import Channel, ChannelError, DigestMessage, EmailChannel, SlackChannel, SnsChannel
from service.digestslack import slack_payload
from service.digestwindow import ClaimResult, DigestWindow, DigestWindows, ShortSpan, scope_of
from service.errors import ConfigError
from service.jobquery import StuckRule
from service.logs import configure_logging
from service.timeargs import since_type

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Database
    from service.sqs import Queue

log = structlog.get_logger()

Clock = Callable[[], datetime]
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_NO_CHANNEL = (
    "no digest channel configured: set DIGEST_EMAIL_FROM and DIGEST_EMAIL_TO (SES), DIGEST_TOPIC_ARN (SNS) "
    "or SLACK_WEBHOOK_URL, or use --dry-run"
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def register_digest_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], clock: Clock = _utc_now
) -> None:
    """Add ``digest`` to the CLI's subcommands."""
    digest = commands.add_parser(
        "digest",
        help="send the lab digest (files new in quarantine, failures, waiting and stuck jobs)",
        description="Send the digest of the next window (from the end of the last window sent to now, "
        "floored to 15 minutes) on every configured channel: SES e-mail, the SNS topic, Slack. "
        "A window is sent once per channel, however often the command runs.",
    )
    digest.add_argument(
        "--since",
        type=since_type(clock),
        help="ad hoc: cover from this time (24h, 7d or a UTC date) to now; records no window",
    )
    digest.add_argument("--pipeline", metavar="CODE", help="only this pipeline (its own window sequence)")
    digest.add_argument("--dry-run", action="store_true", help="send nothing and record nothing")
    digest.add_argument(
        "--output", type=Path, metavar="FILE", help="also write FILE (HTML), FILE.txt and FILE.slack.json"
    )
    digest.add_argument(
        "--retry-failed",
        action="store_true",
        help="resend only the channels that failed for the latest window",
    )
    digest.set_defaults(run=partial(run_digest, clock=clock), parser=digest)


def run_digest(args: argparse.Namespace, settings: Settings, clock: Clock = _utc_now) -> int:
    """The command: choose the window, gather the facts, send on each channel."""
    if args.retry_failed and (args.since is not None or args.dry_run):
        args.parser.error("--retry-failed cannot be combined with --since or --dry-run")
    if args.output is not None and not args.output.parent.is_dir():
        print(f"error: no such directory {args.output.parent}", file=sys.stderr)
        return EXIT_USAGE
    # stdout carries the summary lines; logs go to stderr, errors only unless LOG_LEVEL=DEBUG
    # (as for the jobs commands), so the output stays one line per channel.
    configure_logging(
        "DEBUG" if settings.log_level == "DEBUG" else "ERROR", settings.log_format, stream=sys.stderr
    )
    channels = build_channels(settings)
    if not channels and not args.dry_run:
        print(_NO_CHANNEL, file=sys.stderr)
        return EXIT_USAGE
    settings.require("PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url
    from service.db import Database

    try:
        db = Database(settings.pipeline_database_url, max_connections=1)
    except psycopg2.OperationalError as exc:
        print(f"cannot reach the pipeline database ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _run(args, settings, db, channels, clock())
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        print(f"cannot reach the pipeline database ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.close()


def build_channels(settings: Settings) -> list[Channel]:
    """The channels the settings configure, in sending order (e-mail, SNS, Slack)."""
    from service.app import aws_client

    if bool(settings.digest_email_from) != bool(settings.digest_email_to):
        missing = "DIGEST_EMAIL_TO" if settings.digest_email_from else "DIGEST_EMAIL_FROM"
        raise ConfigError(
            f"missing setting {missing} (the digest e-mail needs both DIGEST_EMAIL_FROM and _TO)"
        )
    channels: list[Channel] = []
    if settings.digest_email_from and settings.digest_email_to:
        channels.append(
            EmailChannel(aws_client(settings, "ses"), settings.digest_email_from, settings.digest_email_to)
        )
    if settings.digest_topic_arn:
        channels.append(SnsChannel(aws_client(settings, "sns"), settings.digest_topic_arn))
    if settings.slack_webhook_url:
        channels.append(SlackChannel(requests.Session(), settings.slack_webhook_url))
    return channels


def _run(
    args: argparse.Namespace, settings: Settings, db: Database, channels: Sequence[Channel], now: datetime
) -> int:
    from service.jobquery import JobQueries

    if args.pipeline is not None and all(p.code != args.pipeline for p in JobQueries(db).pipelines()):
        known = ", ".join(p.code for p in JobQueries(db).pipelines()) or "none"
        print(f"error: no pipeline {args.pipeline!r} (registered: {known})", file=sys.stderr)
        return EXIT_USAGE
    windows = DigestWindows(db)
    scope = scope_of(args.pipeline)
    if args.retry_failed:
        latest = windows.latest(scope)
        failed = windows.failed_channels(latest) if latest is not None else []
        channels = [c for c in channels if c.name in failed]
        if latest is None or not channels:
            print(f"nothing to retry: no channel failed for the latest {scope_label(scope)} window")
            return EXIT_OK
        window = latest
    elif args.since is not None:
        window = DigestWindow(scope, args.since, now)
    else:
        minimum = timedelta(minutes=settings.digest_min_window_minutes)
        opened = (windows.next_window if args.dry_run else windows.open_window)(scope, now, minimum)
        if isinstance(opened, ShortSpan):
            log.info("digest.window_too_short", scope=scope, start=opened.start, end=opened.end)
            print(short_span_line(opened, dry_run=args.dry_run))
            return EXIT_OK
        window = opened

    facts = collect_facts(
        db,
        window,
        pipeline_code=args.pipeline,
        stuck_rule=StuckRule.from_settings(settings, now),
        dlq_depth=read_dlq_depth(_dlq(settings)),
    )
    message = build_message(facts)
    if args.output is not None:
        write_outputs(message, args.output)
    print(summary_line(facts, ad_hoc=window.id is None and not args.dry_run, dry_run=args.dry_run))
    if args.dry_run:
        names = ", ".join(c.name for c in channels) or "none configured"
        print(f"dry run: nothing sent, nothing recorded (channels: {names})")
        return EXIT_OK
    return _deliver(windows, window, channels, message, now, retry=args.retry_failed)


def _deliver(
    windows: DigestWindows,
    window: DigestWindow,
    channels: Sequence[Channel],
    message: DigestMessage,
    now: datetime,
    *,
    retry: bool,
) -> int:
    failed = False
    for channel in channels:
        if window.id is not None:
            claim = windows.claim(window, channel.name, now, retry=retry)
            if claim is not ClaimResult.CLAIMED:
                print(f"{channel.name}: skipped ({claim.value})")
                continue
        try:
            channel.send(message)
        except ChannelError as exc:
            failed = True
            if window.id is not None:
                windows.mark_failed(window, channel.name, exc.code, exc.text)
            log.error("digest.channel_failed", channel=channel.name, error_code=exc.code)
            print(f"{channel.name}: failed ({exc.code}: {exc.text})")
            continue
        except Exception as exc:  # noqa: BLE001 - a bug in one channel must not cost the others theirs
            # Only the type is shown: the exception's text may quote the payload or a URL. The claim
            # is marked failed (not left 'sending') so --retry-failed resends this channel.
            failed = True
            kind = type(exc).__name__
            if window.id is not None:
                windows.mark_failed(window, channel.name, kind, "unexpected error while sending")
            log.error("digest.channel_failed", channel=channel.name, error_code=kind)
            print(f"{channel.name}: failed (unexpected {kind})")
            continue
        if window.id is not None:
            windows.mark_sent(window, channel.name, now)
        log.info("digest.channel_sent", channel=channel.name, window_id=window.id)
        print(f"{channel.name}: sent")
    return EXIT_FAILED if failed else EXIT_OK


def build_message(facts: DigestFacts) -> DigestMessage:
    """The digest in every channel's format."""
    return DigestMessage(subject_line(facts), render_text(facts), render_html(facts), slack_payload(facts))


def write_outputs(message: DigestMessage, path: Path) -> None:
    """``path`` (HTML), ``path.txt`` (plain text) and ``path.slack.json`` (the Slack payload)."""
    path.write_text(message.html, encoding="utf-8")
    path.with_name(path.name + ".txt").write_text(message.text, encoding="utf-8")
    path.with_name(path.name + ".slack.json").write_text(
        json.dumps(message.slack, indent=2) + "\n", encoding="utf-8"
    )


def summary_line(facts: DigestFacts, *, ad_hoc: bool, dry_run: bool) -> str:
    """``digest window ... (all pipelines): 3 new in quarantine, 1 with problems, 2 failed``."""
    kind = (
        "dry run of window" if dry_run else "ad-hoc digest" if ad_hoc else f"digest window {facts.window.id}"
    )
    return (
        f"{kind} {window_text(facts)} ({scope_label(facts.window.scope)}): "
        f"{len(facts.files)} new in quarantine, "
        f"{len(facts.problems)} with problems, {facts.failed_total} failed, {len(facts.waiting)} waiting for "
        f"the EDC, {len(facts.stuck)} stuck"
    )


def short_span_line(span: ShortSpan, *, dry_run: bool) -> str:
    """One line: why nothing was sent, and that the next run covers the span."""
    minutes = int((span.end - span.start).total_seconds() // 60)
    minimum = int(span.minimum.total_seconds() // 60)
    since = span.start.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    prefix = "dry run: " if dry_run else ""
    return (
        f"{prefix}nothing sent ({scope_label(span.scope)}): only {minutes} min since the last window ended "
        f"at {since}, under DIGEST_MIN_WINDOW_MINUTES={minimum}; the next run covers it"
    )


def scope_label(scope: str) -> str:
    return "all pipelines" if scope == "*" else f"pipeline {scope}"


def _dlq(settings: Settings) -> Queue | None:
    from service.app import aws_client
    from service.sqs import Queue

    if not settings.pipeline_dlq_url:
        return None
    return Queue(aws_client(settings, "sqs"), settings.pipeline_dlq_url)
