"""``redrive``: move the dead-letter queue's messages back to the source queue, so the worker runs
them again (a job that failed only because its deliveries ran out, ERRL8003, is claimable again).

Two paths. **Native** (no ``--max``, no ``--dry-run``): SQS's own StartMessageMoveTask, followed
with ListMessageMoveTasks until it ends; a call that fails is retried, and a task that cannot be
followed ends the run with an error, never the manual path beside it. **Manual** (``--max``, or
where the first StartMessageMoveTask answers that the API is missing, as on moto): receive from
the DLQ under a long visibility timeout, send copies to the source queue, and delete from the DLQ
only what SQS confirmed sent; a message whose send failed stays in the DLQ and is made visible
again at the end. A manual run is bounded: by ``--max``, by the DLQ's depth at the start, by an
empty receive, and it never takes the same DLQ message id twice, so messages the worker sends
back to the DLQ meanwhile cannot keep it going. A duplicate is harmless (the worker runs one job
per object version); a lost message is not, so nothing is deleted before its copy is confirmed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import botocore.exceptions

from service.events import MalformedMessageError, parse_message
from service.sqs import Message, MoveTask, MoveTasks, MoveTaskUnsupportedError, Queue, send_groups

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

    from service.config import Settings

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2
MANUAL_VISIBILITY_S = 300  # far longer than one batch's receive + send + delete, retries included
PEEK_VISIBILITY_S = 30  # a dry run's messages are released at once; this only covers a crash
RECEIVE_WAIT_S = 2  # a long poll asks every SQS server, so an empty answer means empty
POLL_INTERVAL_S = 5.0  # between ListMessageMoveTasks calls
DRY_RUN_DEFAULT_MAX = 10
_STILL_GOING = frozenset({"RUNNING", "CANCELLING"})
_MISSING_POLLS = 5  # a task just started may not be listed yet; after this many polls it is lost


class RedriveError(Exception):
    """The redrive cannot start or go on; the text is the one line the operator sees."""

    def __init__(self, message: str, exit_code: int = EXIT_INCOMPLETE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    """What the operator asked for, and the timings (tests shorten them)."""

    max_messages: int | None = None  # --max: move at most this many (manual path)
    dry_run: bool = False  # --dry-run: count and peek, change nothing
    visibility_s: int = MANUAL_VISIBILITY_S
    receive_wait_s: int = RECEIVE_WAIT_S
    poll_interval_s: float = POLL_INTERVAL_S


@dataclass(frozen=True, slots=True)
class QueuePair:
    """The DLQ and its source queue, checked to belong together."""

    dlq_url: str
    dlq_arn: str
    source_url: str
    source_arn: str
    depth: int  # the DLQ's ApproximateNumberOfMessages (visible) when the run started
    in_flight: int  # ApproximateNumberOfMessagesNotVisible at the start


@dataclass(slots=True)
class Summary:
    """The outcome of one run, and the summary line that says it."""

    path: str  # native | manual | dry-run
    moved: int = 0
    failed: int = 0  # not moved: still in the DLQ
    skipped: int = 0  # received again in the same run, left alone
    not_deleted: int = 0  # moved, but the DLQ delete failed: a copy is still there
    listed: int = 0  # dry run: messages peeked at
    depth: int = 0
    status: str | None = None  # the native task's last status
    stopped: str | None = None  # why a manual run ended early (one line)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when everything asked for was moved (or there was nothing), 1 otherwise."""
        incomplete = self.failed or self.not_deleted or self.stopped
        ended_badly = self.status is not None and self.status != "COMPLETED"
        return EXIT_INCOMPLETE if incomplete or ended_badly else EXIT_OK

    def line(self) -> str:
        if self.path == "dry-run":
            return (
                f"redrive --dry-run: {self.depth} message(s) in the DLQ, {self.listed} listed, "
                f"nothing moved, {self.duration_s:.1f} s"
            )
        text = (
            f"redrive: moved {self.moved}, failed {self.failed} (left in the DLQ), "
            f"skipped {self.skipped}, path {self.path}"
        )
        if self.status:
            text += f" (task {self.status})"
        text += f", {self.duration_s:.1f} s"
        if self.not_deleted:
            text += (
                f"; {self.not_deleted} moved but still in the DLQ (delete failed: "
                "a later redrive sends a harmless duplicate)"
            )
        return text


@dataclass(slots=True)
class Output:
    """Where a run writes: audit records (JSON lines), the operator's report, a dry run's listing."""

    audit: TextIO
    report: TextIO
    listing: TextIO

    def record(self, fields: dict[str, Any]) -> None:
        self.audit.write(json.dumps(fields) + "\n")
        self.audit.flush()  # each line stands even if the run is killed

    def say(self, text: str) -> None:
        print(text, file=self.report, flush=True)

    def peeked(self, fields: dict[str, Any]) -> None:
        print(json.dumps(fields), file=self.listing, flush=True)


def redrive(
    client: SQSClient,
    dlq_url: str,
    source_url: str,
    options: RedriveOptions,
    out: Output,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Summary:
    """Check the queues, then dry-run, native or manual redrive; return the summary.

    Raises ``RedriveError`` (its ``exit_code`` 2 for queues that do not belong together or cannot
    be read, 1 for a failure once moving began) with one line naming what failed.
    """
    started = clock()
    dlq, source = Queue(client, dlq_url), Queue(client, source_url)
    pair = check_queues(dlq, source)
    if options.dry_run:
        summary = peek(dlq, pair, options.max_messages or DRY_RUN_DEFAULT_MAX, out)
    elif options.max_messages is None:
        try:
            summary = run_native(MoveTasks(client, pair.dlq_arn), pair, out, options, sleep=sleep, now=now)
        except MoveTaskUnsupportedError as exc:
            out.say(f"redrive: native move task unavailable ({exc}); using the manual path")
            summary = ManualRedrive(dlq, source, out, options, now).run(pair.depth)
    else:
        summary = ManualRedrive(dlq, source, out, options, now).run(min(options.max_messages, pair.depth))
    summary.duration_s = clock() - started
    return summary


def check_queues(dlq: Queue, source: Queue) -> QueuePair:
    """Read both queues and check that ``dlq`` is the dead-letter target of ``source``.
    Raises ``RedriveError`` (exit code 2) otherwise."""
    with _aws_step(f"reading the attributes of PIPELINE_DLQ_URL {dlq.url}", EXIT_USAGE):
        dlq_attributes = dlq.read_attributes(
            ["QueueArn", "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
    with _aws_step(f"reading the attributes of PIPELINE_QUEUE_URL {source.url}", EXIT_USAGE):
        source_attributes = source.read_attributes(["QueueArn", "RedrivePolicy"])
    not_its_dlq = (
        f"PIPELINE_DLQ_URL {dlq.url} is not the dead-letter queue of PIPELINE_QUEUE_URL {source.url}"
    )
    try:
        target = json.loads(source_attributes.get("RedrivePolicy") or "{}").get("deadLetterTargetArn")
    except (json.JSONDecodeError, AttributeError):
        target = None
    if not target:
        raise RedriveError(f"{not_its_dlq}: that queue has no redrive policy", EXIT_USAGE)
    if target != dlq_attributes.get("QueueArn"):
        raise RedriveError(f"{not_its_dlq}: its redrive policy names {target}", EXIT_USAGE)
    return QueuePair(
        dlq_url=dlq.url,
        dlq_arn=str(target),
        source_url=source.url,
        source_arn=source_attributes["QueueArn"],
        depth=int(dlq_attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(dlq_attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


# -- native: SQS's message move task -------------------------------------------------------------


def run_native(
    tasks: MoveTasks,
    pair: QueuePair,
    out: Output,
    options: RedriveOptions,
    *,
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
) -> Summary:
    """Start a move task (or join the one already running) and follow it to its end.

    Raises ``MoveTaskUnsupportedError`` only when the first StartMessageMoveTask attempt says the
    endpoint lacks the API (nothing started, nothing moved); ``RedriveError`` when a call fails
    after its retries or the task cannot be found. Once a task is started or joined, every failure
    is a ``RedriveError``: the manual path must not run beside a task that may still be moving.
    """
    with _aws_step(f"ListMessageMoveTasks for {pair.dlq_url}"):
        # None: answered as if the API were missing; only StartMessageMoveTask may conclude that.
        before = tasks.recent_before_start() or []
    running = next((t for t in before if t.status == "RUNNING" and t.handle), None)
    if running and running.handle:
        out.say(
            f"redrive: a move task is already running for {pair.dlq_url} (task {running.handle}): "
            "not starting a second; following it"
        )
        handle = running.handle
    elif pair.depth == 0:
        out.say(f"redrive: {pair.dlq_url} holds no visible message; nothing to move")
        return Summary("native")
    else:
        with _aws_step(f"StartMessageMoveTask from {pair.dlq_url}"):
            handle = tasks.start(pair.source_arn)
        out.say(f"redrive: started move task {handle} for about {pair.depth} message(s)")
    # Tasks that ended before this one: once ours has ended too, it must not be taken for one of them.
    earlier = {t.started_at_ms for t in before if t.handle != handle and t.started_at_ms is not None}
    seen: list[MoveTask] = []
    try:
        task = _follow(tasks, handle, earlier, pair, out, options.poll_interval_s, sleep, seen)
    except RedriveError as exc:
        # The task may still be moving: say how far it got, in the report and the audit trail.
        last = seen[-1] if seen else MoveTask("UNKNOWN", handle, 0, None, None)
        out.record(_task_record(handle, last, pair, now(), error=str(exc)))
        raise RedriveError(
            f"lost track of move task {handle} (last seen {last.status}, moved {last.moved} of "
            f"{last.to_move if last.to_move is not None else '?'}): {exc}; it may still be running, "
            "and `redrive` run again follows it"
        ) from None
    moved, to_move = task.moved, task.to_move
    if task.status == "FAILED":
        out.say(f"redrive: move task {handle} FAILED: {task.failure_reason or 'no reason given'}")
    elif task.status != "COMPLETED":
        out.say(f"redrive: move task {handle} ended {task.status}; the rest stays in the DLQ")
    out.record(_task_record(handle, task, pair, now()))
    left = max(0, (to_move or 0) - moved) if task.status != "COMPLETED" else 0
    return Summary("native", moved=moved, failed=left, status=task.status)


def _task_record(
    handle: str, task: MoveTask, pair: QueuePair, at: datetime, error: str | None = None
) -> dict[str, Any]:
    return {
        "record": "redrive.task",
        "task_handle": handle,
        "status": task.status,
        "moved": task.moved,
        "to_move": task.to_move,
        "failure_reason": task.failure_reason,
        "source_arn": pair.dlq_arn,
        "destination_arn": task.destination_arn or pair.source_arn,
        "at": _iso(at),
        "error": error,
    }


def _follow(
    tasks: MoveTasks,
    handle: str,
    earlier: set[int],
    pair: QueuePair,
    out: Output,
    poll_s: float,
    sleep: Callable[[float], None],
    seen: list[MoveTask],
) -> MoveTask:
    """Poll until the task leaves RUNNING/CANCELLING; print progress whenever it changes. Each
    answer is appended to ``seen``, so a caller whose polling failed knows how far the task got."""
    last: tuple[str, int, int | None] | None = None
    to_move: int | None = None
    missing = 0
    while True:
        with _aws_step(f"ListMessageMoveTasks for {pair.dlq_url}"):
            task = _find_task(tasks.recent(), handle, earlier)
        if task is None:
            missing += 1
            if missing >= _MISSING_POLLS:
                raise RedriveError(f"move task {handle} is not listed by ListMessageMoveTasks any more")
        else:
            missing = 0
            to_move = task.to_move if task.to_move is not None else to_move
            seen.append(
                MoveTask(task.status, handle, task.moved, to_move, task.destination_arn, task.failure_reason)
            )
            progress = (task.status, task.moved, to_move)
            if progress != last:
                out.say(f"redrive: task {task.status}: moved {task.moved} of {to_move or '?'}")
                last = progress
            if task.status not in _STILL_GOING:
                return seen[-1]
        sleep(poll_s)


def _find_task(recent: Sequence[MoveTask], handle: str, earlier: set[int]) -> MoveTask | None:
    # SQS lists the handle of running tasks only: once ours has ended it is the newest task
    # without one that had not ended before it started (one active task per queue).
    for task in recent:
        if task.handle == handle:
            return task
    return next((t for t in recent if t.handle is None and t.started_at_ms not in earlier), None)


# -- manual: receive -> send -> delete what was sent ---------------------------------------------


class ManualRedrive:
    """Moves messages one batch at a time; deletes from the DLQ only what SQS confirmed sent."""

    def __init__(
        self, dlq: Queue, source: Queue, out: Output, options: RedriveOptions, now: Callable[[], datetime]
    ) -> None:
        self._dlq = dlq
        self._source = source
        self._out = out
        self._options = options
        self._now = now
        self._held: list[Message] = []  # received but not moved: made visible again at the end

    def run(self, limit: int) -> Summary:
        """Move up to ``limit`` distinct messages; a failure stops the run and is in ``stopped``."""
        summary = Summary("manual")
        seen: set[str] = set()
        try:
            while len(seen) < limit and summary.stopped is None:
                try:
                    batch = self._dlq.receive(
                        min(10, limit - len(seen)), self._options.receive_wait_s, self._options.visibility_s
                    )
                except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                    summary.stopped = f"ReceiveMessage from {self._dlq.url} failed: {_describe(exc)}"
                    break
                fresh = [m for m in batch if m.message_id not in seen]
                summary.skipped += len(batch) - len(fresh)
                self._held.extend(m for m in batch if m.message_id in seen)
                if not fresh:
                    break  # empty, or only messages this run has had already
                seen.update(m.message_id for m in fresh)
                self._move(fresh, summary)
        finally:
            self._release()
        if summary.stopped:
            self._out.say(f"redrive stopped: {summary.stopped}")
        return summary

    def _move(self, messages: list[Message], summary: Summary) -> None:
        groups = send_groups(messages)
        for n, group in enumerate(groups):
            try:
                result = self._source.send_copies(group)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                summary.stopped = f"SendMessageBatch to {self._source.url} failed: {_describe(exc)}"
                for unsent in groups[n:]:
                    for m in unsent:
                        self._not_sent(m, _describe(exc), summary)
                return
            sent = [m for m in group if m.message_id in result.sent]
            for m in group:
                if m.message_id in result.failed:
                    self._not_sent(m, result.failed[m.message_id], summary)
            try:
                not_deleted = {m.message_id for m in self._dlq.delete(sent)}
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                summary.stopped = f"DeleteMessageBatch on {self._dlq.url} failed: {_describe(exc)}"
                not_deleted = {m.message_id for m in sent}
            for m in sent:
                deleted = m.message_id not in not_deleted
                self._out.record(self._audit(m, result.sent[m.message_id], deleted=deleted, error=None))
                summary.moved += 1
                summary.not_deleted += not deleted
            if summary.stopped:
                for rest in groups[n + 1 :]:
                    for m in rest:
                        self._not_sent(m, "run stopped", summary)
                return

    def _not_sent(self, message: Message, code: str, summary: Summary) -> None:
        self._held.append(message)
        summary.failed += 1
        self._out.say(f"redrive: message {message.message_id} was not sent ({code}); it stays in the DLQ")
        self._out.record(self._audit(message, None, deleted=False, error=code))

    def _audit(self, m: Message, new_id: str | None, *, deleted: bool, error: str | None) -> dict[str, Any]:
        return {
            "record": "redrive.message",
            "outcome": "moved" if new_id else "not_sent",
            "dlq_message_id": m.message_id,
            "message_id": new_id,
            "receive_count": m.receive_count,
            "sent_at": _iso_ms(m.sent_at_ms),
            "keys": _keys(m.body),
            "body_md5": _md5(m.body),
            "moved_at": _iso(self._now()) if new_id else None,
            "dlq_deleted": deleted,
            "error": error,
        }

    def _release(self) -> None:
        if not self._held:
            return
        try:
            self._dlq.change_visibility([(m, 0) for m in self._held])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._out.say(
                f"redrive: could not release {len(self._held)} message(s) ({_describe(exc)}); they become "
                f"visible again within {self._options.visibility_s} s"
            )
        self._held.clear()


# -- dry run ----------------------------------------------------------------------------------


def peek(dlq: Queue, pair: QueuePair, limit: int, out: Output) -> Summary:
    """Print the DLQ's depth and up to ``limit`` of its messages (never their bodies); every
    message peeked at is made visible again at once. Nothing is sent or deleted (receiving does
    add one to each peeked message's receive count, as any look at an SQS message does)."""
    out.say(
        f"redrive --dry-run: {pair.dlq_url} holds {pair.depth} message(s), {pair.in_flight} in flight; "
        "nothing is changed"
    )
    seen: set[str] = set()
    held: list[Message] = []
    try:
        while len(seen) < limit:
            with _aws_step(f"ReceiveMessage from {pair.dlq_url}"):
                batch = dlq.receive(min(10, limit - len(seen)), 1, PEEK_VISIBILITY_S)
            held.extend(batch)
            fresh = [m for m in batch if m.message_id not in seen]
            if not fresh:
                break
            for m in fresh:
                seen.add(m.message_id)
                out.peeked(
                    {
                        "dlq_message_id": m.message_id,
                        "receive_count": m.receive_count,
                        "sent_at": _iso_ms(m.sent_at_ms),
                        "keys": _keys(m.body),
                        "body_md5": _md5(m.body),
                    }
                )
    finally:
        if held:
            with _aws_step(f"ChangeMessageVisibilityBatch on {pair.dlq_url}"):
                dlq.change_visibility([(m, 0) for m in held])
    return Summary("dry-run", listed=len(seen), depth=pair.depth)


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def _aws_step(what: str, exit_code: int = EXIT_INCOMPLETE) -> Iterator[None]:
    """Turn an AWS failure (after the retries) into a one-line ``RedriveError`` naming ``what``."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise RedriveError(f"{what} failed: {_describe(exc)}", exit_code) from None


def _describe(exc: Exception) -> str:
    # An AWS error's code and message, or a botocore error's type and text; neither carries credentials.
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", "")).splitlines()[0][:200] if error.get("Message") else ""
        return " ".join(part for part in (str(error.get("Code", "")), f"(HTTP {status})", message) if part)
    return f"{type(exc).__name__}: {exc}"


def _keys(body: str) -> list[str] | None:
    """The S3 keys an event body names; None when the body is not an event we can read."""
    try:
        return [o.key for o in parse_message(body).objects]
    except MalformedMessageError:
        return None


def _md5(body: str) -> str:
    # SQS's own MD5OfBody: lets an audit line be matched to a message without keeping its body.
    return hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_ms(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else _iso(datetime.fromtimestamp(epoch_ms / 1000, UTC))


# -- the command --------------------------------------------------------------------------------

_DESCRIPTION = """\
Move the messages of the dead-letter queue (PIPELINE_DLQ_URL) back to the source queue
(PIPELINE_QUEUE_URL), so the worker runs them again. The DLQ must be the source queue's
dead-letter target (its RedrivePolicy), or nothing happens (exit 2).

Without --max: SQS's own move task (StartMessageMoveTask), followed until it ends, with its
progress printed; a task already running for the DLQ is followed, never doubled. Where the
endpoint lacks that API (StartMessageMoveTask answers an unsupported operation, or HTTP 500
without an AWS error code, as moto does) the manual path runs instead, and says so. Once a task
is started, failing calls are retried; if they go on failing, the run ends (exit 1) naming the
task and how far it got, and never falls back to the manual path while the task may be moving.

With --max N (or as that fallback): the manual path. Batches of 10 are received under a
300 s visibility timeout, copied (body and message attributes) to the source queue, and deleted
from the DLQ only once SQS confirmed the copy; a message whose copy failed stays in the DLQ and
is made visible again. The run stops at N, at the DLQ's depth when it started, at an empty
receive, and never takes one message twice.
"""

_EPILOG = """\
output:
  audit records, one JSON line per message (manual path): record, outcome (moved | not_sent),
  dlq_message_id, message_id (the copy's id), receive_count, sent_at, keys (the S3 keys the
  body names, or null when it is no event), body_md5, moved_at, dlq_deleted, error; the native
  path writes one line for its task (task_handle, status, moved, to_move, failure_reason, error;
  error is set when the task could not be followed to its end, status and moved are then the
  last seen).
  Never a message body. With --audit FILE the records are appended to FILE and the report
  (progress, summary) goes to stdout; without it the records go to stdout, the report to stderr.

exit status:
  0  everything moved (or nothing to move); a dry run that could read the DLQ
  1  some messages could not be moved, the run stopped on an AWS error, the move task
     FAILED or was cancelled, or it could not be followed to its end
  2  configuration or usage: a missing setting, a DLQ that is not the queue's DLQ, an
     unreadable queue or audit file
"""


def register_redrive_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``redrive`` command to the CLI's subcommands."""
    parser = commands.add_parser(
        "redrive",
        help="move the dead-letter queue's messages back to the source queue",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--max",
        type=_positive_int,
        dest="max_messages",
        metavar="N",
        help="move at most N messages (manual path); with --dry-run, list at most N (default 10)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the DLQ's depth and list messages (id, receive count, sent time, keys, MD5; never "
        "the body); nothing is sent or deleted, peeked messages are made visible again at once",
    )
    parser.add_argument(
        "--audit", type=Path, metavar="FILE", help="append the audit records to FILE (JSON lines)"
    )
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """The ``redrive`` command: exit 0, 1 or 2 as its help says. Raises ``ConfigError`` for a
    missing setting (the CLI prints it)."""
    from service.app import aws_client  # the wiring module; imported when the command runs
    from service.logs import configure_logging

    settings.require("PIPELINE_QUEUE_URL", "PIPELINE_DLQ_URL")
    assert settings.pipeline_queue_url and settings.pipeline_dlq_url
    # stdout may carry the audit records: log lines (retries, ...) go to stderr.
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    audit_file: TextIO | None = None
    if args.audit is not None and not args.dry_run:  # a dry run moves nothing, so records nothing
        try:
            audit_file = open(args.audit, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            print(f"redrive: cannot open the audit file {args.audit}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    out = Output(
        audit=audit_file or sys.stdout,
        report=sys.stdout if args.audit is not None else sys.stderr,
        listing=sys.stdout,
    )
    options = RedriveOptions(max_messages=args.max_messages, dry_run=args.dry_run)
    try:
        summary = redrive(
            aws_client(settings, "sqs"), settings.pipeline_dlq_url, settings.pipeline_queue_url, options, out
        )
    except RedriveError as exc:
        print(f"redrive: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if audit_file is not None:
            audit_file.close()
    out.say(summary.line())
    return summary.exit_code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
