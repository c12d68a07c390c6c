"""The digest over a real pipeline database, sent through moto's SES and SNS and a local Slack webhook.

What the labs receive is read back from where it lands: SES's sent mail from moto's
``/moto-api/data.json`` (the raw MIME, parsed with the email package), SNS through an SQS queue
subscribed to the digest topic, Slack from a local HTTP server standing in for the webhook.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import io
import json
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from service.cli import main as cli_main
from service.db import Database
from service.digestcommand import register_digest_command
from service.digestsend import EmailChannel
from service.digestslack import MAX_BLOCKS, MAX_SECTION_CHARS
from service.digestwindow import SCOPE_ALL, DigestWindows, window_end
from service.errors import meaning_of
from service.local.samples import bundled_file, write_mixed_zip, write_series_zip
from tests.stackfixtures import PIPELINE_CODE, TestStack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
MRI_ZIP_KEY = "subjecteventcrffile/2/102/MRI Series/v1.zip"  # EDC row 1002
BAD_KEY = "subjecteventcrffile/1/101/CT Scan/v2.dcm"  # EDC row 1003
MIXED_KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # EDC row 1004
# Patient-like values that must never reach a lab: in the DICOM headers, the uploaded file's name
# and the error messages of seeded jobs.
PHI = ("ROE^JANE", "19650312", "MRN-4471923", "Roe Jane")


# -- the channels' far ends -----------------------------------------------------------------
@dataclass
class SlackServer:
    """A local stand-in for a Slack incoming webhook: records bodies, answers ``status``."""

    status: int = 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def serve(self) -> Iterator[SlackServer]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                owner.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(owner.status)
                self.end_headers()
                self.wfile.write(b"ok" if owner.status == 200 else b"server_error")

            def log_message(self, *_args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


@dataclass
class Lab:
    """One test's digest setup: the stack, its digest channels and how to read what they got."""

    stack: TestStack
    slack: SlackServer
    env: dict[str, str]
    sender: str
    inbox_url: str

    def run(self, *argv: str, now: datetime, **overrides: str) -> tuple[int, str, str]:
        """``python -m service digest ARGV`` at ``now``; (exit code, stdout, stderr)."""
        parser = argparse.ArgumentParser(prog="python -m service")
        register_digest_command(parser.add_subparsers(dest="command"), clock=lambda: now)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            args = parser.parse_args(["digest", *argv])
            code = int(args.run(args, self.stack.settings(**{**self.env, **overrides})))
        return code, out.getvalue(), err.getvalue()

    def emails(self) -> list[Message]:
        data = requests.get(f"{self.stack.endpoint}/moto-api/data.json", timeout=10).json()
        raw = [m for m in data["ses"]["RawMessage"] if m["source"] == self.sender]
        return [email.message_from_string(m["raw_data"], policy=email.policy.default) for m in raw]

    def sns(self) -> list[dict[str, str]]:
        found = []
        sqs = self.stack.client("sqs")
        while True:
            got = sqs.receive_message(QueueUrl=self.inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            if not got.get("Messages"):
                return found
            for message in got["Messages"]:
                envelope = json.loads(message["Body"])
                found.append({"subject": envelope.get("Subject", ""), "text": envelope["Message"]})
                sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def lab(stack: TestStack) -> Iterator[Lab]:
    sender = f"digest-{stack.names.admin_topic}@lab.example"
    ses = stack.client("ses")
    ses.verify_email_identity(EmailAddress=sender)
    sns, sqs = stack.client("sns"), stack.client("sqs")
    topic = sns.create_topic(Name=f"{stack.names.admin_topic}-digest")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"{stack.names.admin_topic}-digest-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    for slack in SlackServer().serve():
        env = {
            "DIGEST_EMAIL_FROM": sender,
            "DIGEST_EMAIL_TO": "imaging-lab@lab.example, coordinator@lab.example",
            "DIGEST_TOPIC_ARN": topic,
            "SLACK_WEBHOOK_URL": slack.url,
        }
        yield Lab(stack, slack, env, sender, inbox)


# -- seeding --------------------------------------------------------------------------------
def seed_completed(lab: Lab, now: datetime, **columns: Any) -> Any:
    """A job created 3 h before ``now`` and in quarantine (``quarantine_key(1)``) since 2 h before."""
    return seed_job(
        lab.stack,
        "Completed",
        now - timedelta(hours=3),
        completed_at=now - timedelta(hours=2),
        key=quarantine_key(1),
        **columns,
    )


def seed_job(
    stack: TestStack,
    status: str,
    created_at: datetime,
    *,
    completed_at: datetime | None = None,
    code: str | None = None,
    key: str | None = None,
    series: int = 0,
    instances: int = 0,
    size: int = 1_000,
    edc: bool = True,
    updated_at: datetime | None = None,
) -> int:
    """A job row in ``status`` (and its series and error rows), as the worker leaves them."""
    (row,) = stack.query(
        "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, subject_event_crf_file_id, source_bucket,"
        " source_key, source_version, event_time, file_name, status, has_error, error_code, created_at,"
        " updated_at, completed_at, destination_key, quarantine_bytes, participant_code)"
        " SELECT id, %s, 'uploads', %s, md5(random()::text), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'P-001'"
        " FROM pipeline.edc_pipeline WHERE code = %s RETURNING id",
        (
            1001 if edc else None,
            f"subjecteventcrffile/1/101/CT Scan/{PHI[3]} {PHI[1]}.dcm",
            created_at,
            f"{PHI[3]} {PHI[1]}.dcm",
            status,
            code is not None,
            code,
            created_at,
            updated_at or completed_at or created_at,
            completed_at,
            key,
            size if key else None,
            PIPELINE_CODE,
        ),
    )
    job = int(row["id"])
    for n in range(series):
        stack.query(
            "INSERT INTO pipeline.edc_pipeline_file_dicom (edc_pipeline_file_id, atri_uid, study_uid,"
            " series_uid, series_number, number_of_instances) VALUES (%s, %s, %s, %s, %s, %s)",
            (job, f"{job}.{n + 1}", "1.2.3", f"1.2.3.{job}.{n}", n + 1, instances // series),
        )
    if code:
        stack.query(
            "INSERT INTO pipeline.edc_pipeline_error (edc_pipeline_file_id, error_code, message, stage,"
            " created_at) VALUES (%s, %s, %s, 'process', %s)",
            (job, code, f"PatientName {PHI[0]} born {PHI[1]} id {PHI[2]}", completed_at or created_at),
        )
    return job


def quarantine_key(job: int) -> str:
    return f"quarantine/Imaging_CTScan/Imaging_CTScan_P-001_SCREENING_101_1_{job}_20261202_010000.dcm"


def patient_like_ct(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(bundled_file("CT_small.dcm"))
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = PHI[0], PHI[1], PHI[2]
    path = tmp_path / f"{PHI[3]} {PHI[1]}.dcm"
    ds.save_as(path)
    return path


def everything_received(lab: Lab) -> dict[str, str]:
    texts: dict[str, str] = {}
    for n, mail in enumerate(lab.emails()):
        texts[f"email {n} subject"] = str(mail["Subject"])
        for part in mail.walk():
            if part.get_content_maintype() == "text":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                texts[f"email {n} {part.get_content_type()}"] = payload.decode("utf-8")
    for n, note in enumerate(lab.sns()):
        texts[f"sns {n}"] = note["subject"] + "\n" + note["text"]
    for n, body in enumerate(lab.slack.bodies):
        texts[f"slack {n}"] = json.dumps(body, ensure_ascii=False)
    return texts


def parts(mail: Message) -> dict[str, str]:
    """The e-mail's text parts; the HTML one as the text it shows (tags dropped, entities read)."""
    found = {}
    for part in mail.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[part.get_content_type()] = payload.decode("utf-8")
    assert "text/html" in found and "text/plain" in found, sorted(found)
    reader = _TextOf()
    reader.feed(found["text/html"])
    found["html as shown"] = "".join(reader.chunks)
    return found


class _TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def later(minutes: int = 20) -> datetime:
    """A clock past the jobs just settled (a window ends at now - 1 min, floored to 15 min)."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


# -- tests ----------------------------------------------------------------------------------
def test_the_digest_of_real_jobs_reaches_every_channel_with_the_same_facts_and_no_phi(
    lab: Lab, tmp_path: Path
) -> None:
    stack = lab.stack
    with stack.worker():
        stack.upload(CT_KEY, patient_like_ct(tmp_path))
        stack.upload(MRI_ZIP_KEY, write_series_zip(tmp_path / "series.zip"))
        stack.upload(MIXED_KEY, write_mixed_zip(tmp_path / "mixed.zip"))
        stack.upload(BAD_KEY, bundled_file("MR_truncated.dcm"))
        jobs = stack.wait_settled(4)
    now = later()
    waiting = seed_job(stack, "Started", now - timedelta(minutes=1), edc=False)  # not yet stuck
    # A failed job whose error row's message carries every PHI value (seed_job writes it with a code).
    phi_failed = seed_job(
        stack,
        "Failed",
        now - timedelta(minutes=40),
        completed_at=now - timedelta(minutes=30),
        code="ERRL4002",
    )
    (error_row,) = stack.query(
        "SELECT message FROM pipeline.edc_pipeline_error WHERE edc_pipeline_file_id = %s", (phi_failed,)
    )
    assert all(value in error_row["message"] for value in PHI[:3])
    in_quarantine = [j for j in jobs if j["status"] == "Completed"]
    names = [j["destination_key"] for j in in_quarantine]
    assert len(names) == 3 and all(n.startswith("quarantine/") for n in names)
    (failed,) = [j for j in jobs if j["status"] == "Failed"]
    (mixed,) = [j for j in jobs if j["has_error"] and j["status"] == "Completed"]
    instances = sum(s["number_of_instances"] for s in stack.series())
    uids = [s["atri_uid"] for s in stack.series()]

    code, out, err = lab.run(now=now)
    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == ["email: sent", "sns: sent", "slack: sent"]
    assert "3 new in quarantine, 1 with problems, 2 failed, 1 waiting for the EDC, 0 stuck" in out

    (mail,) = lab.emails()
    assert mail.get_content_type() == "multipart/alternative"
    assert mail["To"] == "imaging-lab@lab.example, coordinator@lab.example"
    assert "3 new in quarantine, 2 failed, 1 with problems" in str(mail["Subject"])
    body = parts(mail)
    assert set(body) == {"text/plain", "text/html", "html as shown"}
    for part in (body["text/plain"], body["html as shown"]):
        for name in names:
            assert name in part
        for uid in uids[:3]:
            assert uid in part
        assert failed["error_code"] in part and meaning_of(failed["error_code"]) in part
        assert "ERRS1013" in part  # the mixed zip: in quarantine with a problem
        assert "ERRL4002" in part and meaning_of("ERRL4002") in part  # the seeded failure with PHI
        assert any(f"python -m service jobs show {job}" in part for job in (failed["id"], phi_failed))
    assert f"new in quarantine: 3 file(s), {len(uids)} series, {instances} instance(s)" in body["text/plain"]
    assert f"job {mixed['id']} ERRS1013:" in body["text/plain"]
    assert f"job {waiting} ({PIPELINE_CODE})" in body["text/plain"]
    assert f"ERRL4002 x1: {meaning_of('ERRL4002')} (jobs {phi_failed})" in body["text/plain"]
    assert "dead-letter queue: 0" in body["text/plain"]

    (note,) = lab.sns()
    assert note["subject"] == str(mail["Subject"])[:100]
    assert note["text"] == body["text/plain"]

    (payload,) = lab.slack.bodies
    slack_text = json.dumps(payload)
    for name in names:
        assert name in slack_text
    assert f"{instances} instance(s)" in slack_text

    # No PHI in anything a lab received (checked again across every channel, subjects included).
    lab.slack.bodies.clear()
    assert lab.run("--since", "2h", now=now)[0] == 0
    texts = everything_received(lab)
    assert len(texts) >= 6
    # Every channel and part was read, and each body carries the PHI job's code: it was in the digest.
    kinds = {where.split(" ")[0] for where in texts} | {w.rsplit(" ", 1)[-1] for w in texts}
    assert {"email", "sns", "slack", "text/html", "text/plain", "subject"} <= kinds
    assert all("ERRL4002" in text for where, text in texts.items() if "subject" not in where)
    leaks = [(where, value) for where, text in texts.items() for value in PHI if value in text]
    assert leaks == []


def test_stuck_jobs_and_dead_letters_reach_every_channel_with_their_next_steps(lab: Lab) -> None:
    stack = lab.stack
    now = later()
    # Unsettled, no live lease, untouched for 3 h: no worker will come back for it.
    stuck = seed_job(stack, "In Progress", now - timedelta(hours=4), updated_at=now - timedelta(hours=3))
    recent = seed_job(stack, "In Progress", now - timedelta(minutes=2))  # may still be running
    stack.query(
        "UPDATE pipeline.edc_pipeline_file SET lease_until = %s WHERE id = %s",
        (now + timedelta(minutes=1), recent),
    )
    for n in range(2):
        stack.client("sqs").send_message(QueueUrl=stack.env["PIPELINE_DLQ_URL"], MessageBody=f"poison {n}")

    code, out, err = lab.run("--since", "6h", now=now)
    assert (code, err) == (0, "")
    assert "0 failed, 0 waiting for the EDC, 1 stuck" in out

    (mail,) = lab.emails()
    body = parts(mail)
    text = body["text/plain"]
    assert "stuck: 1" in text and "dead-letter queue: 2" in text
    assert f"  job {stuck} ({PIPELINE_CODE}) In Progress, last change" in text
    assert f"job {recent} " not in text
    for shown in (text, body["html as shown"]):
        assert "1 job(s) are stuck (no worker holds them)." in shown
        assert "2 message(s) wait in the dead-letter queue (python -m service redrive)." in shown
        assert "python -m service jobs list --stuck" in shown
    (note,) = lab.sns()
    assert note["text"] == text
    (payload,) = lab.slack.bodies
    slack_text = json.dumps(payload)
    assert "stuck" in slack_text and "redrive" in slack_text


def test_running_twice_for_the_same_window_sends_once(lab: Lab) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    job = seed_completed(lab, now, series=1, instances=1)
    first = lab.run(now=now)
    second = lab.run(now=now + timedelta(minutes=5))  # the same slot: the same window
    assert first[0] == 0 and second[0] == 0
    assert second[1].splitlines()[1:] == [
        "email: skipped (already sent)",
        "sns: skipped (already sent)",
        "slack: skipped (already sent)",
    ]
    assert len(lab.emails()) == 1 and len(lab.sns()) == 1 and len(lab.slack.bodies) == 1
    assert quarantine_key(1) in json.dumps(lab.slack.bodies[0]) and job > 0
    windows = lab.stack.query("SELECT * FROM pipeline.digest_window")
    assert len(windows) == 1
    assert windows[0]["window_end"] == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    assert windows[0]["window_start"] == datetime(2029, 12, 31, 8, 0, tzinfo=UTC)


def test_a_failing_slack_is_reported_does_not_stop_the_others_and_retry_failed_sends_only_slack(
    lab: Lab,
) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    seed_completed(lab, now, series=1, instances=4)
    lab.slack.status = 500
    code, out, _ = lab.run(now=now)
    assert code == 1
    assert out.splitlines()[1:] == [
        "email: sent",
        "sns: sent",
        "slack: failed (HTTP 500: Slack kept answering with an error)",
    ]
    assert len(lab.slack.bodies) == 4  # tenacity's attempts, then the one line
    assert len(lab.emails()) == 1 and len(lab.sns()) == 1
    (claim,) = lab.stack.query("SELECT * FROM pipeline.digest_delivery WHERE channel = 'slack'")
    assert (claim["status"], claim["error_code"]) == ("failed", "HTTP 500")

    # A plain rerun in the same slot does not resend it; --retry-failed does, and only it.
    assert lab.run(now=now + timedelta(minutes=3))[1].splitlines()[3] == (
        "slack: skipped (failed earlier (digest --retry-failed resends it))"
    )
    lab.slack.status = 200
    lab.slack.bodies.clear()
    code, out, _ = lab.run("--retry-failed", now=now + timedelta(hours=1))
    assert code == 0 and out.splitlines()[1:] == ["slack: sent"]
    assert len(lab.slack.bodies) == 1 and quarantine_key(1) in json.dumps(lab.slack.bodies[0])
    assert len(lab.emails()) == 1 and lab.sns() == []
    assert lab.run("--retry-failed", now=now + timedelta(hours=1))[1].startswith("nothing to retry")


def test_a_second_fire_just_past_a_slot_boundary_sends_nothing_and_the_next_run_covers_the_span(
    lab: Lab,
) -> None:
    first = datetime(2030, 1, 1, 6, 0, 30, tzinfo=UTC)  # window ends 05:45
    second = first + timedelta(seconds=70)  # 06:01:40: the next slot would end 06:00
    for n, done in enumerate((first - timedelta(minutes=40), first - timedelta(minutes=10)), start=1):
        seed_job(
            lab.stack, "Completed", done - timedelta(minutes=5), completed_at=done, key=quarantine_key(n)
        )
    assert lab.run(now=first)[1].splitlines()[1:] == ["email: sent", "sns: sent", "slack: sent"]

    for argv in ((), ("--dry-run",)):
        code, out, err = lab.run(*argv, now=second)
        prefix = "dry run: " if argv else ""
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            f"{prefix}nothing sent (all pipelines): only 15 min since the last window ended at "
            "2030-01-01 05:45 UTC, under DIGEST_MIN_WINDOW_MINUTES=60; the next run covers it"
        ]
    assert len(lab.emails()) == 1 and len(lab.sns()) == 1 and len(lab.slack.bodies) == 1
    (window,) = lab.stack.query("SELECT * FROM pipeline.digest_window")
    assert window["window_end"] == datetime(2030, 1, 1, 5, 45, tzinfo=UTC)  # not moved
    assert len(lab.stack.query("SELECT * FROM pipeline.digest_delivery")) == 3

    # An hour on, the run sends everything since 05:45: the job the short span held, and later ones.
    seed_job(lab.stack, "Completed", first, completed_at=first + timedelta(minutes=30), key=quarantine_key(3))
    code, out, _ = lab.run(now=first + timedelta(hours=1))
    assert (
        code == 0
        and out.startswith("digest window ")
        and out.splitlines()[1:]
        == [
            "email: sent",
            "sns: sent",
            "slack: sent",
        ]
    )
    texts = [parts(mail)["text/plain"] for mail in lab.emails()]
    assert len(texts) == 2
    assert quarantine_key(1) in texts[0] and quarantine_key(2) not in texts[0]
    assert (
        quarantine_key(2) in texts[1] and quarantine_key(3) in texts[1] and quarantine_key(1) not in texts[1]
    )
    older, newer = lab.stack.query("SELECT * FROM pipeline.digest_window ORDER BY window_end")
    assert older["window_end"] == newer["window_start"] == datetime(2030, 1, 1, 5, 45, tzinfo=UTC)
    assert newer["window_end"] == datetime(2030, 1, 1, 6, 45, tzinfo=UTC)


def test_a_lower_minimum_window_lets_a_short_window_go_out(lab: Lab) -> None:
    first = datetime(2030, 1, 1, 6, 0, 30, tzinfo=UTC)
    assert lab.run(now=first)[0] == 0
    code, out, _ = lab.run(now=first + timedelta(minutes=15), DIGEST_MIN_WINDOW_MINUTES="15")
    assert code == 0 and out.splitlines()[1:] == ["email: sent", "sns: sent", "slack: sent"]
    assert len(lab.emails()) == 2


def test_an_unexpected_exception_in_the_first_channel_does_not_stop_the_others(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    seed_completed(lab, now)

    def broken(self: EmailChannel, raw: bytes) -> None:
        raise KeyError(f"{PHI[0]} {raw[:20]!r}")  # a bug, not a ChannelError; its text must not show

    monkeypatch.setattr(EmailChannel, "_send", broken)
    code, out, err = lab.run(now=now)
    assert code == 1
    assert out.splitlines()[1:] == ["email: failed (unexpected KeyError)", "sns: sent", "slack: sent"]
    assert PHI[0] not in out + err
    assert lab.emails() == [] and len(lab.sns()) == 1 and len(lab.slack.bodies) == 1
    claims = {r["channel"]: r for r in lab.stack.query("SELECT * FROM pipeline.digest_delivery")}
    assert {c: r["status"] for c, r in claims.items()} == {"email": "failed", "sns": "sent", "slack": "sent"}
    assert claims["email"]["error_code"] == "KeyError"

    # Its claim is not left 'sending': --retry-failed resends the e-mail, and only it.
    monkeypatch.undo()
    code, out, _ = lab.run("--retry-failed", now=now + timedelta(minutes=30))
    assert code == 0 and out.splitlines()[1:] == ["email: sent"]
    assert len(lab.emails()) == 1 and lab.sns() == [] and len(lab.slack.bodies) == 1


def test_ses_refusing_an_unverified_sender_does_not_stop_sns_and_slack(lab: Lab) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    code, out, _ = lab.run(now=now, DIGEST_EMAIL_FROM="unverified@lab.example")
    assert code == 1
    email_line, *others = out.splitlines()[1:]
    assert email_line.startswith("email: failed (") and "SES refused the message" in email_line
    assert others == ["sns: sent", "slack: sent"]
    assert len(lab.sns()) == 1 and len(lab.slack.bodies) == 1


def test_consecutive_windows_share_their_boundary_and_each_job_is_in_exactly_one(lab: Lab) -> None:
    start = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    boundary = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    before = seed_job(
        lab.stack,
        "Completed",
        boundary - timedelta(hours=1),
        completed_at=boundary - timedelta(microseconds=1),
        key=quarantine_key(1),
    )
    at = seed_job(
        lab.stack, "Completed", boundary - timedelta(hours=1), completed_at=boundary, key=quarantine_key(2)
    )
    assert lab.run(now=start)[0] == 0
    assert lab.run(now=start + timedelta(hours=24))[0] == 0
    first, second = lab.stack.query("SELECT * FROM pipeline.digest_window ORDER BY window_end")
    assert first["window_end"] == second["window_start"] == boundary
    assert second["window_end"] == boundary + timedelta(hours=24)
    texts = [parts(mail)["text/plain"] for mail in lab.emails()]
    assert len(texts) == 2
    assert quarantine_key(1) in texts[0] and quarantine_key(2) not in texts[0]
    assert quarantine_key(2) in texts[1] and quarantine_key(1) not in texts[1]
    assert before < at


def test_since_is_ad_hoc_and_records_nothing_and_a_dry_run_sends_nothing(lab: Lab, tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    seed_job(
        lab.stack, "Failed", now - timedelta(hours=3), completed_at=now - timedelta(hours=2), code="ERRS1012"
    )
    code, out, _ = lab.run("--since", "24h", now=now)
    assert code == 0 and out.startswith("ad-hoc digest 2029-12-31 08:07 to 2030-01-01 08:07 UTC")
    assert lab.stack.query("SELECT * FROM pipeline.digest_window") == []
    assert lab.stack.query("SELECT * FROM pipeline.digest_delivery") == []
    assert len(lab.slack.bodies) == 1

    lab.slack.bodies.clear()
    out_file = tmp_path / "digest.html"
    code, out, _ = lab.run("--dry-run", "--output", str(out_file), now=now)
    assert code == 0 and "dry run: nothing sent, nothing recorded (channels: email, sns, slack)" in out
    assert (
        lab.slack.bodies == []
        and len(lab.emails()) == 1
        and lab.stack.query("SELECT * FROM pipeline.digest_window") == []
    )
    assert "ERRS1012" in out_file.read_text() and "File is not DICOM" in Path(f"{out_file}.txt").read_text()
    slack = json.loads(Path(f"{out_file}.slack.json").read_text())
    assert slack["blocks"][0]["text"]["text"] == "EDC image pipeline digest"


def test_slack_stays_within_block_kit_limits_with_thousands_of_files(lab: Lab) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    done = now - timedelta(hours=2)
    lab.stack.query(
        "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, source_bucket, source_key, source_version,"
        " event_time, file_name, status, created_at, updated_at, completed_at, destination_key,"
        " quarantine_bytes)"
        " SELECT p.id, 'uploads', 'k' || n, 'v' || n, %s, 'f.dcm', 'Completed', %s, %s, %s,"
        " 'quarantine/Imaging_CTScan/Imaging_CTScan_P-' || lpad(n::text, 4, '0') || '_WEEK4_101_1_' || n"
        " || '_20300101_060000.dcm', 500000"
        " FROM pipeline.edc_pipeline p, generate_series(1, 3000) n WHERE p.code = %s",
        (done, done, done, done, PIPELINE_CODE),
    )
    for n in range(60):  # many failure codes too
        seed_job(lab.stack, "Failed", done, completed_at=done, code="ERRS1012" if n % 2 else "ERRL1003")
    code, out, _ = lab.run("--pipeline", PIPELINE_CODE, now=now)
    assert code == 0, out
    (payload,) = lab.slack.bodies
    assert len(payload["blocks"]) <= MAX_BLOCKS
    for block in payload["blocks"]:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= MAX_SECTION_CHARS
    files = next(
        b for b in payload["blocks"] if b.get("text", {}).get("text", "").startswith("*New in quarantine")
    )
    assert files["text"]["text"].startswith("*New in quarantine (3000)*")
    assert files["text"]["text"].endswith("… and 2975 more")
    assert "3000 file(s)" in json.dumps(payload)
    text = parts(lab.emails()[0])["text/plain"]
    assert "new in quarantine: 3000 file(s)" in text and "... and 2800 more" in text
    (window,) = lab.stack.query("SELECT scope FROM pipeline.digest_window")
    assert window["scope"] == PIPELINE_CODE


def test_no_channel_configured_is_one_line_and_exit_2(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(lab.stack.env)
    assert cli_main(["digest"], env) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("no digest channel configured")
    with pytest.raises(SystemExit) as exited:
        cli_main(["digest", "--since", "soon"], {**env, **lab.env})
    assert exited.value.code == 2
    assert "expected a duration like 7d" in capsys.readouterr().err
    half = {**env, "DIGEST_EMAIL_TO": "lab@lab.example"}
    assert cli_main(["digest"], half) == 2
    assert "missing setting DIGEST_EMAIL_FROM" in capsys.readouterr().err


def test_a_stale_sending_claim_is_taken_over_and_a_live_one_is_not(lab: Lab) -> None:
    now = datetime(2030, 1, 1, 8, 2, tzinfo=UTC)
    no_aws = {"DIGEST_EMAIL_FROM": "", "DIGEST_EMAIL_TO": "", "DIGEST_TOPIC_ARN": ""}
    assert lab.run(now=now, **no_aws)[1].splitlines()[1] == "slack: sent"
    # A run that claimed the channel a minute ago is still sending: leave it alone.
    lab.stack.query(
        "UPDATE pipeline.digest_delivery SET status = 'sending', attempted_at = %s",
        (now - timedelta(minutes=1),),
    )
    later_in_slot = now + timedelta(minutes=5)
    assert (
        lab.run(now=later_in_slot, **no_aws)[1].splitlines()[1]
        == "slack: skipped (being sent by another run)"
    )
    # One that claimed it 20 minutes ago crashed: take over (the one possible duplicate).
    lab.stack.query(
        "UPDATE pipeline.digest_delivery SET attempted_at = %s", (later_in_slot - timedelta(minutes=20),)
    )
    assert lab.run(now=later_in_slot, **no_aws)[1].splitlines()[1] == "slack: sent"
    assert len(lab.slack.bodies) == 2
    (claim,) = lab.stack.query("SELECT * FROM pipeline.digest_delivery")
    assert (claim["status"], claim["attempts"]) == ("sent", 2)


@pytest.mark.parametrize(
    ("now", "end"),
    [
        ("2030-01-01T08:00:59", "2030-01-01T07:45:00"),  # the settling minute belongs to the previous slot
        ("2030-01-01T08:01:00", "2030-01-01T08:00:00"),
        ("2030-01-01T08:16:30", "2030-01-01T08:15:00"),
        ("2030-01-01T00:00:10", "2029-12-31T23:45:00"),
    ],
)
def test_a_window_ends_a_minute_before_now_floored_to_15_minutes(now: str, end: str) -> None:
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert window_end(moment) == datetime.fromisoformat(end).replace(tzinfo=UTC)


def test_two_runs_at_once_create_one_window(stack: TestStack) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    found: list[int | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        db = Database(stack.pipeline_url, max_connections=1)
        try:
            barrier.wait()
            found.append(DigestWindows(db).open_window(SCOPE_ALL, now).id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(found) == 4 and len(set(found)) == 1
    assert len(stack.query("SELECT * FROM pipeline.digest_window")) == 1


def test_a_window_whose_run_died_before_sending_grows_instead_of_being_skipped(lab: Lab) -> None:
    now = datetime(2030, 1, 1, 8, 7, tzinfo=UTC)
    db = Database(lab.stack.pipeline_url, max_connections=1)
    try:
        orphan = DigestWindows(db).open_window(SCOPE_ALL, now)  # recorded, then the run died
    finally:
        db.close()
    seed_job(
        lab.stack,
        "Completed",
        now - timedelta(hours=1),
        completed_at=now - timedelta(hours=1),
        key=quarantine_key(1),
    )
    assert lab.run(now=now + timedelta(hours=2))[0] == 0
    (window,) = lab.stack.query("SELECT * FROM pipeline.digest_window")
    assert (window["id"], window["window_start"]) == (orphan.id, orphan.start)
    assert window["window_end"] == datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    assert quarantine_key(1) in parts(lab.emails()[0])["text/plain"]


def test_a_dry_run_needs_no_channel_and_retry_failed_refuses_since(
    stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["digest", "--dry-run"], stack.env) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dry run of window ") and out[0].endswith(
        "(all pipelines): 0 new in quarantine, 0 with problems, 0 failed, 0 waiting for the EDC, 0 stuck"
    )
    assert out[1] == "dry run: nothing sent, nothing recorded (channels: none configured)"
    assert stack.query("SELECT * FROM pipeline.digest_window") == []
    with pytest.raises(SystemExit) as exited:
        cli_main(
            ["digest", "--retry-failed", "--since", "1h"], {**stack.env, "SLACK_WEBHOOK_URL": "http://x"}
        )
    assert exited.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("error: --retry-failed cannot be combined with --since or --dry-run")
    )
    assert cli_main(["digest", "--dry-run", "--pipeline", "NOPE"], stack.env) == 2
    assert capsys.readouterr().err == "error: no pipeline 'NOPE' (registered: IMAGING)\n"
