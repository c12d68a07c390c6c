"""The digest e-mail as a reader sees it: rendered by headless Chromium, read back from the page.

The screenshot is kept under ``test-artifacts/`` (gitignored). ``python -m tests.test_digest_render
docs/digest.png`` writes the screenshot of a realistic sample digest for the README.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.digestquery import DigestFacts, FailureCount, PipelineCounts, QuarantinedFile, WaitingJob
from service.digestrender import format_size, render_html, render_text
from service.digestwindow import DigestWindow
from service.jobquery import JobSummary
from tests.required import skip_unless_required

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDTH, HEIGHT = 1000, 2000
END = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
LONG_CRF = "Imaging_Follow-upMagneticResonanceImagingOfTheBrainWithAndWithoutContrast"


@pytest.fixture
def needs_chromium() -> None:
    if CHROMIUM is None:
        skip_unless_required("chromium is not installed (apt-get install chromium; .ci/run does it as root)")


def sample_facts(extra_files: int = 0) -> DigestFacts:
    """A morning's digest: two pipelines, a zip series, a long EDC form name, a problem, failures."""
    t = END - timedelta(hours=6)
    files = [
        QuarantinedFile(
            41,
            "IMAGING",
            "quarantine/Imaging_CTScan/Imaging_CTScan_P-001_SCREENING_101_1_41_20261202_010412.dcm",
            1,
            1,
            ("41.1",),
            528_384,
            (),
            t,
        ),
        QuarantinedFile(
            42,
            "IMAGING",
            "quarantine/Imaging_MRISeries/Imaging_MRISeries_P-002_WEEK4_102_2_42_20261202_011530.zip",
            3,
            412,
            ("42.1", "42.2", "42.3"),
            214_958_080,
            (),
            t + timedelta(minutes=20),
        ),
        QuarantinedFile(
            43,
            "IMAGING",
            f"quarantine/{LONG_CRF}_MRISeries/{LONG_CRF}_MRISeries_P-014_WEEK12_131_1_43_20261202_032208.zip",
            5,
            1_020,
            ("43.1", "43.2", "43.3", "43.4", "43.5"),
            1_254_000_000,
            ("ERRS1013",),
            t + timedelta(hours=2),
        ),
        QuarantinedFile(
            44,
            "AUDIO",
            "quarantine/Speech_Recording/Speech_Recording_P-007_BASELINE_140_1_44_20261202_045901.wav",
            0,
            0,
            (),
            3_400_112,
            (),
            t + timedelta(hours=3),
        ),
    ]
    for n in range(extra_files):
        job = 100 + n
        files.append(
            QuarantinedFile(
                job,
                "IMAGING",
                f"quarantine/Imaging_CTScan/Imaging_CTScan_P-{n:03d}_WEEK4_2{n:02d}_1_{job}_20261202_050000.dcm",
                1,
                1,
                (f"{job}.1",),
                500_000,
                (),
                t + timedelta(hours=4),
            )
        )
    return DigestFacts(
        window=DigestWindow("*", END - timedelta(hours=24), END, 17),
        pipeline_code=None,
        generated_at=END + timedelta(minutes=3),
        files=tuple(files),
        pipelines=(
            PipelineCounts("AUDIO", "Speech recordings", 1, 1, 0, 0),
            PipelineCounts("IMAGING", "Imaging uploads", 6 + extra_files, 3 + extra_files, 1, 3),
        ),
        failures=(
            FailureCount("ERRS1012", "File is not DICOM", 2, (45, 47)),
            FailureCount(
                "ERRL1003", "EDC record not found in the read replica within the replica-lag window", 1, (46,)
            ),
        ),
        waiting=(WaitingJob(48, "IMAGING", END - timedelta(minutes=9), 1),),
        stuck=(JobSummary(39, "IMAGING", "In Progress", False, None, 3, t, t, None, "v1.dcm", 100, None),),
        dlq_depth=1,
    )


# The page as a reader sees it: appended to a copy of the e-mail only (the e-mail has no script).
_PROBE = """
<script>
(function () {
  var boxes = Array.prototype.map.call(document.querySelectorAll('td[width="25%"]'), function (td) {
    var r = td.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)];
  });
  var widest = 0;
  Array.prototype.forEach.call(document.querySelectorAll('table'), function (t) {
    widest = Math.max(widest, Math.round(t.getBoundingClientRect().width));
  });
  var card = document.querySelector('table[width="640"]').getBoundingClientRect();
  var result = {text: document.body.innerText, scrollWidth: document.documentElement.scrollWidth,
                viewport: window.innerWidth,
                boxes: boxes, card: Math.round(card.width), widestTable: widest};
  var pre = document.createElement('pre'); pre.id = 'probe-result';
  pre.textContent = JSON.stringify(result); document.body.appendChild(pre);
})();
</script>
"""


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return completed.stdout


def screenshot(html: str, out: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
    """Render ``html`` in Chromium and save what it shows as a PNG at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "digest.html"
        page.write_text(html, encoding="utf-8")
        chromium(f"--screenshot={out.resolve()}", f"--window-size={width},{height}", page.as_uri())
    assert out.stat().st_size > 10_000, "the screenshot is (nearly) empty"


def rendered(html: str, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    """What Chromium lays out: the visible text, widths, the summary boxes' sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        dom = chromium("--dump-dom", f"--window-size={width},{height}", page.as_uri())
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    assert match, "the probe did not run"
    raw = (
        match.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )
    result: dict[str, Any] = json.loads(raw)
    return result


def test_the_email_has_no_script_no_external_asset_and_only_inline_css() -> None:
    html = render_html(sample_facts())
    assert "<script" not in html.lower() and "<style" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "an external asset"
    assert "url(" not in html  # no background image from anywhere
    assert re.search(r'<table role="presentation" width="640"', html)


@pytest.mark.usefixtures("needs_chromium")
def test_a_reader_sees_every_file_name_and_the_counts() -> None:
    facts = sample_facts()
    html = render_html(facts)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "digest.html").write_text(html, encoding="utf-8")
    screenshot(html, ARTIFACTS / "digest.png")
    page = rendered(html)
    text = page["text"]
    for f in facts.files:
        assert f.quarantine_key in text, f.quarantine_key
    # The summary boxes: figure above its label, as a reader reads them.
    assert re.search(r"\b4\s+New in quarantine\b", text)
    assert re.search(r"\b1,433\s+Instances\b", text)  # 1 + 412 + 1020
    assert re.search(r"\b1\s+With problems\b", text)
    assert re.search(r"\b3\s+Failed\b", text)
    assert "ERRS1012" in text and "File is not DICOM" in text
    assert "python -m service jobs show 45" in text
    assert format_size(1_254_000_000) == "1.3 GB" and "1.3 GB" in text
    assert "dead-letter queue: 1" in text


@pytest.mark.usefixtures("needs_chromium")
def test_nothing_is_wider_than_the_window_and_the_boxes_are_even() -> None:
    html = render_html(sample_facts(extra_files=30))
    for width in (1000, 500):  # a desktop client, and a phone (headless Chromium's narrowest window)
        page = rendered(html, width=width)
        assert page["viewport"] == width
        assert page["scrollWidth"] <= width, f"page scrolls sideways at {width} px: {page['scrollWidth']}"
        assert page["card"] <= 640 and page["widestTable"] <= width
        widths = {w for w, _ in page["boxes"]}
        heights = {h for _, h in page["boxes"]}
        assert len(page["boxes"]) == 4 and max(widths) - min(widths) <= 2 and len(heights) == 1, page["boxes"]


def test_the_text_part_carries_the_same_facts() -> None:
    facts = sample_facts()
    text = render_text(facts)
    for f in facts.files:
        assert f.quarantine_key in text
    assert "new in quarantine: 4 file(s), 9 series, 1433 instance(s)" in text
    assert "failed: 3" in text and "ERRS1012 x2: File is not DICOM (jobs 45, 47)" in text
    assert "job 43 ERRS1013:" in text and "job 48 (IMAGING)" in text and "job 39 (IMAGING)" in text


def test_a_long_list_stops_and_says_how_many_more() -> None:
    facts = sample_facts(extra_files=250)
    html, text = render_html(facts, max_listed=200), render_text(facts, max_listed=200)
    assert "... and 54 more: python -m service inventory export --since 2026-12-01T07:00" in text
    assert "... and 54 more: python -m service inventory export --since 2026-12-01T07:00" in html
    assert html.count("<tr>") < 260


def main(argv: list[str]) -> int:
    """``python -m tests.test_digest_render OUT.png``: a screenshot of the sample digest."""
    if len(argv) != 1 or CHROMIUM is None:
        print("usage: python -m tests.test_digest_render OUT.png (needs chromium)", file=sys.stderr)
        return 2
    screenshot(render_html(sample_facts()), Path(argv[0]), height=1900)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
