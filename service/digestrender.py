"""The digest as an HTML e-mail and as plain text carrying the same facts.

The HTML is what the common mail clients render: nested tables, inline CSS only (no style sheet,
no script, no image or font from elsewhere), at most 640 px wide, long names allowed to wrap.
Both formats list the same files, counts and codes; long lists stop at ``MAX_LISTED`` rows and
say how many more there are and the command that lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from service.digestquery import DigestFacts, QuarantinedFile
from service.digestwindow import SCOPE_ALL

MAX_LISTED = 200  # rows per list in the e-mail; the rest are counted, not shown
UIDS_SHOWN = 3  # ATRIUIDs per file before "+N more"
TITLE = "EDC image pipeline digest"

# Inline styles, one place (mail clients ignore <style> blocks, Gmail strips them outright).
_FONT = "font-family:Arial,Helvetica,sans-serif;"
_CELL = "border:1px solid #d0d7de;padding:6px 8px;vertical-align:top;font-size:13px;line-height:18px;"
_HEAD = _CELL + "background:#f2f4f7;text-align:left;font-weight:bold;color:#24292f;"
_NUM = _CELL + "text-align:right;white-space:nowrap;"
# Long names break at their own separators first (<wbr> after "/" and "_"), anywhere if they must.
_WRAP = _CELL + "overflow-wrap:anywhere;word-break:break-word;"
_BADGE = (
    "display:inline-block;margin-top:3px;padding:0 5px;border-radius:3px;background:#fff1c2;color:#7d4e00;"
)
_BADGE += "font-family:Arial,Helvetica,sans-serif;font-size:11px;line-height:16px;font-weight:bold;"
_MONO = "font-family:Consolas,Menlo,monospace;font-size:12px;"
_H2 = _FONT + "font-size:16px;line-height:22px;color:#24292f;margin:22px 0 8px 0;font-weight:bold;"
_TABLE = "border-collapse:collapse;width:100%;table-layout:fixed;"
_NOTE = _FONT + "font-size:13px;line-height:18px;color:#57606a;margin:6px 0;"


def subject_line(facts: DigestFacts) -> str:
    """One line: what the digest covers and its headline figures (no PHI)."""
    scope = "" if facts.pipeline_code is None else f" {facts.pipeline_code}"
    head = f"{TITLE}{scope} {_day(facts.window.end)}: {len(facts.files)} new in quarantine"
    if facts.failed_total:
        head += f", {facts.failed_total} failed"
    if facts.problems:
        head += f", {len(facts.problems)} with problems"
    return head


def window_text(facts: DigestFacts) -> str:
    """``2026-12-01 07:00 to 2026-12-02 07:00 UTC``."""
    return f"{_when(facts.window.start)} to {_when(facts.window.end)} UTC"


def scope_text(facts: DigestFacts) -> str:
    return "all pipelines" if facts.window.scope == SCOPE_ALL else f"pipeline {facts.window.scope}"


def attention_lines(facts: DigestFacts) -> list[str]:
    """What someone has to look at, as short sentences; empty when nothing needs anyone."""
    lines = []
    if facts.failed_total:
        lines.append(f"{facts.failed_total} file(s) failed and are not in quarantine.")
    if facts.problems:
        lines.append(f"{len(facts.problems)} file(s) reached quarantine with a problem.")
    if facts.stuck:
        lines.append(f"{len(facts.stuck)} job(s) are stuck (no worker holds them).")
    if facts.dlq_depth:
        lines.append(
            f"{facts.dlq_depth} message(s) wait in the dead-letter queue (python -m service redrive)."
        )
    return lines


# -- plain text -----------------------------------------------------------------------------
def render_text(facts: DigestFacts, max_listed: int = MAX_LISTED) -> str:
    """The digest as plain text (the e-mail's alternative part, and the SNS message)."""
    out = [
        f"{TITLE}: {scope_text(facts)}",
        f"window: {window_text(facts)}",
        "",
        f"new in quarantine: {len(facts.files)} file(s), {facts.series_total} series, "
        f"{facts.instances_total} instance(s), {format_size(facts.bytes_total)}",
        f"with problems: {len(facts.problems)}",
        f"failed: {facts.failed_total}",
        f"waiting for the EDC: {len(facts.waiting)}",
        f"stuck: {len(facts.stuck)}",
        f"dead-letter queue: {_dlq(facts)}",
    ]
    attention = attention_lines(facts)
    if attention:
        out += ["", "needs attention:", *(f"  - {line}" for line in attention)]
    out += ["", "per pipeline (received / in quarantine / with problems / failed):"]
    out += [
        f"  {p.code}: {p.received} / {p.quarantined} / {p.with_problems} / {p.failed}"
        for p in facts.pipelines
    ] or ["  (no pipeline registered)"]
    out += ["", f"files new in quarantine ({len(facts.files)}):"]
    out += _capped((_file_line(f) for f in facts.files), len(facts.files), max_listed, _more_files(facts))
    if not facts.files:
        out.append("  none")
    if facts.failures:
        out += ["", "failures by code:"]
        out += [f"  {f.code} x{f.count}: {f.meaning} (jobs {_ids(f.job_ids)})" for f in facts.failures]
    if facts.problems:
        out += ["", "in quarantine with a problem:"]
        out += _capped(
            (f"  job {f.job_id} {', '.join(f.problem_codes)}: {f.quarantine_key}" for f in facts.problems),
            len(facts.problems),
            max_listed,
            "python -m service jobs list --status Completed --since ...",
        )
    if facts.waiting:
        out += ["", "waiting for the EDC record (they run by themselves once it appears):"]
        out += [
            f"  job {w.job_id} ({w.pipeline_code}) since {_when(w.created_at)} UTC" for w in facts.waiting
        ]
    if facts.stuck:
        out += ["", "stuck jobs:"]
        out += [
            f"  job {j.id} ({j.pipeline_code}) {j.status}, last change {_when(j.updated_at)} UTC"
            for j in facts.stuck
        ]
    out += ["", "next steps:", *(f"  {step}" for step in next_steps(facts))]
    out += ["", _PRIVACY]
    return "\n".join(out) + "\n"


def _file_line(f: QuarantinedFile) -> str:
    uids = _uids(f.atri_uids)
    problem = f" PROBLEM {','.join(f.problem_codes)}" if f.problem_codes else ""
    return (
        f"  {f.quarantine_key}  job {f.job_id}, {f.series} series, {f.instances} instance(s), "
        f"{format_size(f.size)}{', ATRIUID ' + uids if uids else ''}{problem}"
    )


def next_steps(facts: DigestFacts) -> list[str]:
    """Command lines for what the digest shows (ids only)."""
    steps = []
    first_failed = next((f.job_ids[0] for f in facts.failures if f.job_ids), None)
    if first_failed is not None:
        steps.append(f"see a failed job: python -m service jobs show {first_failed}")
        steps.append(f"after fixing the cause: python -m service reprocess --file-id {first_failed}")
    if facts.stuck:
        steps.append("list stuck jobs: python -m service jobs list --stuck")
    if facts.dlq_depth:
        steps.append("move dead-letter messages back: python -m service redrive")
    since = facts.window.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    steps.append(f"every file of the window: python -m service inventory export --since {since}")
    return steps


_PRIVACY = (
    "This digest carries codes, ids, counts, ATRIUIDs and quarantine names only. A quarantine name "
    "includes the participant code (a pseudonym), never a patient's name or birth date."
)


# -- HTML -----------------------------------------------------------------------------------
def render_html(facts: DigestFacts, max_listed: int = MAX_LISTED) -> str:
    """The digest as an HTML e-mail body (a whole document, inline CSS only)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(subject_line(facts))}</title></head>",
        f'<body style="margin:0;padding:0;background:#f6f8fa;{_FONT}">',
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
        'style="border-collapse:collapse;background:#f6f8fa;">'
        '<tr><td align="center" style="padding:16px 8px;">',
        '<table role="presentation" width="640" cellpadding="0" cellspacing="0" '
        'style="border-collapse:collapse;width:100%;max-width:640px;background:#ffffff;'
        'border:1px solid #d0d7de;"><tr><td style="padding:20px 20px 24px 20px;">',
        f'<h1 style="{_FONT}font-size:20px;line-height:26px;margin:0 0 4px 0;color:#24292f;">'
        f"{escape(TITLE)}</h1>",
        f'<p style="{_NOTE}">{escape(scope_text(facts))} &middot; {escape(window_text(facts))}</p>',
        _summary_boxes(facts),
        _status_line(facts),
        _attention(facts),
        _h2("Per pipeline"),
        _pipelines_table(facts),
        _h2(f"New in quarantine ({len(facts.files)})"),
        _files_table(facts, max_listed),
    ]
    if facts.failures:
        parts += [_h2(f"Failed ({facts.failed_total})"), _failures_table(facts)]
    if facts.problems:
        parts += [
            _h2(f"In quarantine with a problem ({len(facts.problems)})"),
            _problems_table(facts, max_listed),
        ]
    if facts.waiting:
        parts += [
            _h2(f"Waiting for the EDC record ({len(facts.waiting)})"),
            _note("These run by themselves once the EDC record reaches the read replica."),
            _table(
                ("job", "pipeline", "since (UTC)"),
                ([str(w.job_id), w.pipeline_code, _when(w.created_at)] for w in facts.waiting),
                widths=("20%", "40%", "40%"),
            ),
        ]
    if facts.stuck:
        parts += [
            _h2(f"Stuck jobs ({len(facts.stuck)})"),
            _table(
                ("job", "pipeline", "status", "last change (UTC)"),
                ([str(j.id), j.pipeline_code, j.status, _when(j.updated_at)] for j in facts.stuck),
                widths=("15%", "30%", "25%", "30%"),
            ),
        ]
    parts += [
        _h2("Next steps"),
        '<ul style="margin:0;padding-left:20px;">',
        *(
            f'<li style="{_FONT}font-size:13px;line-height:20px;"><code style="{_MONO}">'
            f"{escape(step)}</code></li>"
            for step in next_steps(facts)
        ),
        "</ul>",
        f'<p style="{_NOTE}margin-top:18px;">{escape(_PRIVACY)}</p>',
        "</td></tr></table>",
        "</td></tr></table></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_boxes(facts: DigestFacts) -> str:
    boxes = (
        ("New in quarantine", str(len(facts.files)), "#1a7f37"),
        ("Instances", _n(facts.instances_total), "#24292f"),
        ("With problems", str(len(facts.problems)), "#9a6700" if facts.problems else "#24292f"),
        ("Failed", str(facts.failed_total), "#cf222e" if facts.failed_total else "#24292f"),
    )
    cells = "".join(
        f'<td width="25%" style="width:25%;padding:0 4px;" valign="top">'
        f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="border-collapse:'
        f'collapse;border:1px solid #d0d7de;background:#f6f8fa;">'
        f'<tr><td align="center" style="padding:10px 4px;'
        f'height:64px;"><div style="{_FONT}font-size:26px;line-height:32px;font-weight:bold;color:{color};">'
        f'{escape(value)}</div><div style="{_FONT}font-size:12px;line-height:16px;color:#57606a;">'
        f"{escape(label)}</div></td></tr></table></td>"
        for label, value, color in boxes
    )
    return (
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
        f'style="border-collapse:collapse;margin:14px 0 6px 0;table-layout:fixed;"><tr>{cells}</tr></table>'
    )


def _status_line(facts: DigestFacts) -> str:
    return _note(
        f"{_n(facts.series_total)} series, {format_size(facts.bytes_total)} in quarantine &middot; "
        f"waiting for the EDC: {len(facts.waiting)} &middot; stuck: {len(facts.stuck)} &middot; "
        f"dead-letter queue: {escape(_dlq(facts))}",
        escaped=True,
    )


def _attention(facts: DigestFacts) -> str:
    lines = attention_lines(facts)
    if not lines:
        return _note("Nothing needs attention.")
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return (
        f'<div style="{_FONT}font-size:13px;line-height:19px;border-left:4px solid #cf222e;'
        f'background:#fff5f5;padding:8px 12px;margin:10px 0;"><b>Needs attention</b>'
        f'<ul style="margin:4px 0 0 0;padding-left:18px;">{items}</ul></div>'
    )


def _pipelines_table(facts: DigestFacts) -> str:
    if not facts.pipelines:
        return _note("No pipeline is registered.")
    return _table(
        ("pipeline", "received", "in quarantine", "with problems", "failed"),
        (
            [p.code, _n(p.received), _n(p.quarantined), _n(p.with_problems), _n(p.failed)]
            for p in facts.pipelines
        ),
        widths=("32%", "17%", "17%", "17%", "17%"),
        numeric=(1, 2, 3, 4),
    )


def _files_table(facts: DigestFacts, max_listed: int) -> str:
    if not facts.files:
        return _note("No file reached quarantine in this window.")
    rows = (
        [
            _Html(_breakable(f.quarantine_key) + _badge(f.problem_codes)),
            _n(f.series),
            _n(f.instances),
            format_size(f.size),
            _uids(f.atri_uids) or "-",
        ]
        for f in facts.files[:max_listed]
    )
    table = _table(
        ("quarantine name", "series", "instances", "size", "ATRIUIDs"),
        rows,
        widths=("46%", "9%", "12%", "12%", "21%"),
        numeric=(1, 2, 3),
        wrap=(0, 4),
        mono=(0, 4),
    )
    return table + _more(len(facts.files), max_listed, _more_files(facts))


def _failures_table(facts: DigestFacts) -> str:
    return _table(
        ("code", "meaning", "jobs", "job ids"),
        ([f.code, f.meaning, _n(f.count), _ids(f.job_ids)] for f in facts.failures),
        widths=("16%", "50%", "10%", "24%"),
        numeric=(2,),
        wrap=(3,),
        mono=(0,),
    )


def _problems_table(facts: DigestFacts, max_listed: int) -> str:
    problems = facts.problems
    table = _table(
        ("job", "codes", "quarantine name"),
        (
            [str(f.job_id), ", ".join(f.problem_codes), _Html(_breakable(f.quarantine_key))]
            for f in problems[:max_listed]
        ),
        widths=("12%", "22%", "66%"),
        wrap=(1, 2),
        mono=(1, 2),
    )
    return table + _more(len(problems), max_listed, "python -m service jobs list --status Completed")


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    widths: Sequence[str],
    numeric: Sequence[int] = (),
    wrap: Sequence[int] = (),
    mono: Sequence[int] = (),
) -> str:
    head = "".join(
        f'<th width="{w}" style="{_HEAD}{"text-align:right;" if i in numeric else ""}width:{w};">'
        f"{escape(h)}</th>"
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            style = _NUM if i in numeric else _WRAP if i in wrap else _CELL
            text = value if isinstance(value, _Html) else escape(value)
            if i in mono:
                text = f'<span style="{_MONO}">{text}</span>'
            cells.append(f'<td style="{style}">{text}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="{_TABLE}">'
        f"<tr>{head}</tr>{''.join(body)}</table>"
    )


class _Html(str):
    """A cell already written as HTML (escaped by its maker)."""

    __slots__ = ()


def _breakable(name: str) -> str:
    """``name`` escaped, with a line-break opportunity after each "/" and "_"."""
    return re.sub(r"([/_])", r"\1<wbr>", escape(name))


def _badge(codes: Sequence[str]) -> str:
    if not codes:
        return ""
    return f'<br><span style="{_BADGE}">problem: {escape(", ".join(codes))}</span>'


def _n(value: int) -> str:
    return f"{value:,}"


def _h2(text: str) -> str:
    return f'<h2 style="{_H2}">{escape(text)}</h2>'


def _note(text: str, *, escaped: bool = False) -> str:
    return f'<p style="{_NOTE}">{text if escaped else escape(text)}</p>'


def _more(total: int, shown: int, command: str) -> str:
    if total <= shown:
        return ""
    return _note(f"... and {total - shown} more: {command}")


# -- shared helpers -------------------------------------------------------------------------
def _capped(lines: Iterable[str], total: int, limit: int, command: str) -> list[str]:
    kept = [line for _, line in zip(range(limit), lines, strict=False)]
    if total > limit:
        kept.append(f"  ... and {total - limit} more: {command}")
    return kept


def _more_files(facts: DigestFacts) -> str:
    since = facts.window.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    return f"python -m service inventory export --since {since}"


def _uids(uids: Sequence[str]) -> str:
    shown = ", ".join(uids[:UIDS_SHOWN])
    return shown + (f" (+{len(uids) - UIDS_SHOWN} more)" if len(uids) > UIDS_SHOWN else "")


def _ids(ids: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def _dlq(facts: DigestFacts) -> str:
    return "unknown" if facts.dlq_depth is None else str(facts.dlq_depth)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def format_size(size: int | None) -> str:
    """``1.5 MB`` (decimal units, as S3 consoles show them); ``-`` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns
