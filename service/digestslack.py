"""The digest as a Slack incoming-webhook payload (Block Kit), within Slack's limits.

Slack refuses a message of more than 50 blocks or a section whose text passes 3,000 characters.
Each list is one section, filled line by line while it fits and closed with "... and N more"
(the e-mail and ``inventory export`` carry the rest), so any number of files gives a valid
payload. Same facts as the other formats: codes, ids, counts and quarantine names only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.digestquery import DigestFacts
from service.digestrender import (
    TITLE,
    attention_lines,
    format_size,
    next_steps,
    scope_text,
    subject_line,
    window_text,
)

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
FILES_SHOWN = 25  # a chat message is a summary: the first files, then a count


def slack_payload(facts: DigestFacts) -> dict[str, Any]:
    """The webhook body: a fallback ``text`` and the blocks."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": TITLE[:MAX_HEADER_CHARS]}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{scope_text(facts)} · {window_text(facts)}"}],
        },
        {
            "type": "section",
            "fields": [
                _field(
                    "New in quarantine", f"{len(facts.files)} file(s), {facts.instances_total} instance(s)"
                ),
                _field("Series / size", f"{facts.series_total} / {format_size(facts.bytes_total)}"),
                _field("With problems", str(len(facts.problems))),
                _field("Failed", str(facts.failed_total)),
                _field("Waiting for the EDC / stuck", f"{len(facts.waiting)} / {len(facts.stuck)}"),
                _field("Dead-letter queue", "unknown" if facts.dlq_depth is None else str(facts.dlq_depth)),
            ],
        },
    ]
    attention = attention_lines(facts)
    if attention:
        blocks.append(_section("*Needs attention*", [f"• {line}" for line in attention]))
    blocks.append(
        _section(
            "*Per pipeline* (received / in quarantine / with problems / failed)",
            [
                f"`{p.code}` {p.received} / {p.quarantined} / {p.with_problems} / {p.failed}"
                for p in facts.pipelines
            ],
        )
    )
    blocks.append({"type": "divider"})
    file_lines = [
        f"`{_code(f.quarantine_key)}` {f.series} series, {f.instances} inst., {format_size(f.size)}"
        + (f" *problem {', '.join(f.problem_codes)}*" if f.problem_codes else "")
        for f in facts.files
    ]
    blocks.append(
        _section(f"*New in quarantine ({len(facts.files)})*", file_lines or ["none"], shown=FILES_SHOWN)
    )
    if facts.failures:
        blocks.append(
            _section(
                f"*Failed ({facts.failed_total})*",
                [f"`{f.code}` x{f.count} {_esc(f.meaning)} (jobs {_ids(f.job_ids)})" for f in facts.failures],
            )
        )
    if facts.problems:
        blocks.append(
            _section(
                f"*In quarantine with a problem ({len(facts.problems)})*",
                [f"job {f.job_id} `{', '.join(f.problem_codes)}`" for f in facts.problems],
            )
        )
    if facts.waiting or facts.stuck:
        lines = [f"job {w.job_id} ({w.pipeline_code}) waiting for the EDC" for w in facts.waiting]
        lines += [f"job {j.id} ({j.pipeline_code}) stuck, {j.status}" for j in facts.stuck]
        blocks.append(_section("*Waiting and stuck*", lines))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(" · ".join(next_steps(facts)), 2000)}],
        }
    )
    return {"text": subject_line(facts), "blocks": blocks[:MAX_BLOCKS]}


def _section(title: str, lines: Sequence[str], *, shown: int | None = None) -> dict[str, Any]:
    """One section: the title and as many lines as fit in 3,000 characters (or ``shown``)."""
    text = title
    limit = len(lines) if shown is None else min(shown, len(lines))
    used = 0
    for line in lines[:limit]:
        remaining = len(lines) - used - 1
        reserve = len(f"\n… and {len(lines)} more") if remaining else 0
        if len(text) + 1 + len(line) + reserve > MAX_SECTION_CHARS:
            break
        text += "\n" + line
        used += 1
    if used < len(lines):
        text += f"\n… and {len(lines) - used} more"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION_CHARS]}}


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{value}"}


def _code(text: str) -> str:
    # A backtick would end the code span; quarantine names never hold one, but stay safe.
    return _clip(_esc(text).replace("`", "'"), 300)


def _esc(text: str) -> str:
    """Slack's mrkdwn escapes: ``&``, ``<`` and ``>`` (``<...>`` would be read as a link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ids(ids: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")
