"""The digest's channels: SES e-mail, an SNS topic, a Slack incoming webhook.

Each channel sends one ``DigestMessage`` and raises ``ChannelError`` (a code and our own one-line
text, never a payload or a response body) when it cannot; the command records that and goes on
with the other channels. Single calls are retried by the service's tenacity policies (AWS:
throttling, 5xx, connection errors; Slack: 429, 5xx, connection errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions
import requests

from service.retry import TransientHttpError, aws_retry, http_retry

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sns import SNSClient

SNS_LIMIT_BYTES = 250_000  # SNS refuses more than 256 KB (subject and attributes included)
SNS_SUBJECT_LIMIT = 99  # SNS: "must be less than 100 characters"
SLACK_TIMEOUT_S = 15


@dataclass(frozen=True, slots=True)
class DigestMessage:
    """One digest in every format."""

    subject: str
    text: str
    html: str
    slack: dict[str, Any]


class ChannelError(Exception):
    """A channel could not deliver: ``code`` (an AWS error code, ``HTTP 500``...) and a line."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class Channel(Protocol):
    """Something that delivers a digest."""

    name: str

    def send(self, message: DigestMessage) -> None:
        """Deliver ``message``; raise ``ChannelError`` when it cannot."""


class EmailChannel:
    """SES: one multipart/alternative message (plain text, then HTML) to every recipient."""

    name = "email"

    def __init__(self, client: SESClient, sender: str, recipients: tuple[str, ...]) -> None:
        self._ses = client
        self._sender = sender
        self._recipients = recipients

    def send(self, message: DigestMessage) -> None:
        mime = build_mime(message, self._sender, self._recipients)
        try:
            self._send(mime.as_bytes())
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            raise ChannelError(code, "SES refused the message") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ChannelError(type(exc).__name__, "SES did not answer") from exc

    @aws_retry
    def _send(self, raw: bytes) -> None:
        self._ses.send_raw_email(
            Source=self._sender, Destinations=list(self._recipients), RawMessage={"Data": raw}
        )


def build_mime(message: DigestMessage, sender: str, recipients: tuple[str, ...]) -> MIMEMultipart:
    """The e-mail: text first, HTML last (a client shows the last part it can render)."""
    mime = MIMEMultipart("alternative")
    mime["Subject"] = message.subject
    mime["From"] = sender
    mime["To"] = ", ".join(recipients)
    mime["Date"] = formatdate(usegmt=True)
    mime["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mime.attach(MIMEText(message.text, "plain", "utf-8"))
    mime.attach(MIMEText(message.html, "html", "utf-8"))
    return mime


class SnsChannel:
    """SNS: the plain text (e-mail subscriptions get plain text only), within 256 KB."""

    name = "sns"

    def __init__(self, client: SNSClient, topic_arn: str) -> None:
        self._sns = client
        self._topic_arn = topic_arn

    def send(self, message: DigestMessage) -> None:
        try:
            self._publish(message.subject[:SNS_SUBJECT_LIMIT].replace("\n", " "), fit_sns(message.text))
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            raise ChannelError(code, "SNS refused the message") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ChannelError(type(exc).__name__, "SNS did not answer") from exc

    @aws_retry
    def _publish(self, subject: str, text: str) -> None:
        self._sns.publish(TopicArn=self._topic_arn, Subject=subject, Message=text)


def fit_sns(text: str, limit: int = SNS_LIMIT_BYTES) -> str:
    """``text``, or as many of its lines as fit and a line saying how many were left out."""
    if len(text.encode("utf-8")) <= limit:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    size = 0
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if size > limit - 300:
            break
        kept.append(line)
    left = len(lines) - len(kept)
    return "\n".join(
        [*kept, f"... {left} more line(s) not shown: the e-mail digest and inventory export list all"]
    )


class SlackChannel:
    """A Slack incoming webhook: POST the Block Kit payload; 2xx is delivered."""

    name = "slack"

    def __init__(self, session: requests.Session, url: str) -> None:
        self._session = session
        self._url = url

    def send(self, message: DigestMessage) -> None:
        try:
            self._post(json.dumps(message.slack))
        except TransientHttpError as exc:
            raise ChannelError(f"HTTP {exc.status}", "Slack kept answering with an error") from exc
        except requests.RequestException as exc:
            raise ChannelError(type(exc).__name__, "Slack did not answer") from exc

    @http_retry
    def _post(self, body: str) -> None:
        response = self._session.post(
            self._url, data=body, headers={"Content-Type": "application/json"}, timeout=SLACK_TIMEOUT_S
        )
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientHttpError(status)
        if status >= 300:
            # 400 invalid_blocks, 403/404 a revoked webhook: another attempt will not help.
            raise ChannelError(f"HTTP {status}", "Slack refused the message")
