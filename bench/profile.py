"""Read a py-spy ``--format raw`` profile of the worker and group it by where the time goes.

Each line of py-spy's raw (collapsed) output is one distinct stack, root first, frames joined by
``;`` and the number of samples at the end: ``run (/x/threading.py:975);... 12``. Idle threads are
sampled only while they hold the GIL (``--gil``), so a sample is Python code running on a CPU;
C code that releases the GIL (socket and ssl I/O, hashing large buffers) is not seen.

A sample's group is that of its innermost frame outside the standard library: time in ``ssl``,
``http.client`` or ``hashlib`` called from botocore counts as botocore's.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OURS = "our code (service/)"
STDLIB = "standard library only (threads, queues, selectors)"
GROUPS = (  # (label, path fragments), first match wins
    (
        "botocore request handling (boto3, botocore, urllib3, s3transfer)",
        ("/botocore/", "/boto3/", "/urllib3/", "/s3transfer/", "/jmespath/", "/dateutil/"),
    ),
    ("pydicom", ("/pydicom/",)),
    ("psycopg2", ("/psycopg2/",)),
    ("structlog (logging)", ("/structlog/",)),
    ("tenacity (retry wrappers)", ("/tenacity/",)),
    (OURS, ("/service/",)),
    ("other libraries", ("/site-packages/",)),
)
REPO = str(Path(__file__).resolve().parent.parent) + "/"


@dataclass(frozen=True, slots=True)
class Profile:
    """Sample counts of one py-spy recording."""

    samples: int
    groups: tuple[tuple[str, int], ...]  # by the group rule above, largest first
    cumulative: tuple[tuple[str, str, int], ...]  # (function, group, samples with it on the stack)
    own: tuple[tuple[str, int], ...]  # function -> samples with it as the innermost frame
    callers: tuple[tuple[str, str, int], ...]  # (group, innermost service/ frame, samples): who asks

    def top_by_group(self, per_group: int) -> list[tuple[str, str, int]]:
        """The ``per_group`` functions of each group with at least 1 % of the samples (standard
        library left out) by cumulative samples, groups in the order of their share."""
        rows = []
        for label, count in self.groups:
            if label != STDLIB and count >= self.samples / 100:
                rows += [row for row in self.cumulative if row[1] == label][:per_group]
        return rows


def _group(path: str) -> str | None:
    for label, fragments in GROUPS:
        if any(fragment in path for fragment in fragments):
            return label
    return None


def _short(function: str, path: str) -> str:
    """``function (file)`` with the file relative to site-packages, the stdlib or the repository."""
    for marker in ("/site-packages/", f"/python{sys.version_info.major}.{sys.version_info.minor}/", REPO):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"


def read_raw_profile(path: Path) -> Profile:
    """Parse py-spy's raw output; an empty profile when the file is missing or empty."""
    groups: Counter[str] = Counter()
    cumulative: Counter[tuple[str, str]] = Counter()
    own: Counter[str] = Counter()
    callers: Counter[tuple[str, str]] = Counter()
    total = 0
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw)
            if match:
                frames.append((match["function"], match["file"]))
        if not frames:
            continue
        total += count
        label = next((g for _f, file in reversed(frames) if (g := _group(file))), STDLIB)
        groups[label] += count
        for name in {(_short(f, file), _group(file) or STDLIB) for f, file in frames}:
            cumulative[name] += count
        own[_short(*frames[-1])] += count
        if label not in (OURS, STDLIB):
            caller = next((_short(f, file) for f, file in reversed(frames) if _group(file) == OURS), "-")
            callers[(label, caller)] += count
    ranked = tuple((name, group, n) for (name, group), n in cumulative.most_common())
    asked = tuple((group, caller, n) for (group, caller), n in callers.most_common())
    return Profile(total, tuple(groups.most_common()), ranked, tuple(own.most_common()), asked)
