"""Smoke tests of the benchmark's parts (no timing assertions): ``.venv/bin/python -m pytest bench``."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

from bench.data import Sizes, generate
from bench.largereport import BEGIN, END, existing_section, splice_section
from bench.methods import MAIN_DIR
from bench.micro import Measurement, measure, methods_for
from bench.profile import read_raw_profile
from bench.proxy import RateCappedProxy
from bench.report import main_table, table, targets
from bench.stampcli import BEGIN as STAMP_BEGIN
from bench.stampcli import END as STAMP_END

TINY = Sizes(
    series_instances=3,
    multiframe_files=1,
    multiframe_frames=2,
    memory_member_frames=2,
    memory_zip_bytes=(2_000_000, 4_000_000),
    pipeline_files=0,
)


def test_generated_instances_are_readable_dicom_with_the_series_keys(tmp_path: Path) -> None:
    inputs = {i.role: i for i in generate(tmp_path, TINY)}
    assert set(inputs) == {"series_files", "series_zip", "multiframe", "memory_small", "memory_large"}
    first = dcmread(inputs["series_files"].paths[0])
    assert first.StudyInstanceUID and first.SeriesInstanceUID and first.InstanceNumber == 1
    assert len(first.PixelData) == 512 * 512 * 2
    assert dcmread(inputs["multiframe"].paths[0]).NumberOfFrames == 2
    with zipfile.ZipFile(inputs["memory_large"].paths[0]) as zf:
        assert len(zf.infolist()) == inputs["memory_large"].instances
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


@pytest.mark.parametrize("role", ["series_files", "series_zip"])
def test_every_method_runs_in_a_child_and_its_output_checks_out(tmp_path: Path, role: str) -> None:
    item = next(i for i in generate(tmp_path / "data", TINY) if i.role == role)
    results = measure(item, tmp_path / "scratch", rounds=1, progress=lambda _text: None)
    assert [m.method for m in results] == methods_for(item)
    assert all(m.checked and m.rss_bytes > 0 and m.seconds > 0 for m in results)
    assert "engine (process_upload)" in main_table(results)


def test_targets_are_judged_from_the_medians() -> None:
    def row(dataset: str, method: str, seconds: float, rss: int = 40_000_000) -> Measurement:
        return Measurement(dataset, method, 10, 100_000_000, seconds, (seconds,), rss, True)

    class Input:
        def __init__(self, role: str, name: str) -> None:
            self.role, self.name = role, name

    rows = [row("s", "raw", 1.0), row("s", "naive", 4.0), row("s", "engine", 1.5)]
    found = targets(rows, [Input("series_files", "s")])  # type: ignore[list-item]
    assert [(t.measured, t.best, t.met) for t in found] == [
        ("0.67x", "0.67x", True),
        ("2.67x", "2.67x", True),
    ]


def test_tables_are_aligned_markdown() -> None:
    text = table(["a", "b", "c"], [["x", "y", "12"], ["longer", "z", "3"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---")


def test_the_proxy_caps_each_connection_and_not_their_sum() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    payload = b"x" * 1_000_000

    def serve() -> None:
        while True:
            conn, _ = upstream.accept()
            threading.Thread(target=lambda c=conn: (c.sendall(payload), c.close()), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    proxy = RateCappedProxy(f"http://127.0.0.1:{upstream.getsockname()[1]}", rate=4_000_000)
    threading.Thread(target=proxy.serve, daemon=True).start()
    got: list[int] = []

    def fetch() -> None:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            got.append(sum(len(chunk) for chunk in iter(lambda: sock.recv(65536), b"")))

    started = time.monotonic()
    clients = [threading.Thread(target=fetch) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    seconds = time.monotonic() - started
    proxy.stop()
    assert got == [1_000_000] * 3
    assert 0.2 <= seconds < 0.6  # 1 MB at 4 MB/s is 0.25 s per connection, all three at once


def test_py_spy_samples_are_grouped_by_their_innermost_library_frame(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (/usr/lib/python3.11/threading.py:10);handle (/w/service/pipeline.py:5);"
        "_make_api_call (/v/site-packages/botocore/client.py:9);read (/usr/lib/python3.11/ssl.py:1) 3\n"
        "run (/usr/lib/python3.11/threading.py:10);handle (/w/service/pipeline.py:5) 1\n"
    )
    profile = read_raw_profile(raw)
    assert profile.samples == 4
    assert dict(profile.groups) == {
        "botocore request handling (boto3, botocore, urllib3, s3transfer)": 3,
        "our code (service/)": 1,
    }
    assert profile.top_by_group(1)[0][2] == 3


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` in a child, which must succeed."""
    command = [sys.executable, "-m", "bench", *args]
    proc = subprocess.run(command, cwd=MAIN_DIR, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_large_quick_runs_the_worker_end_to_end_and_prints_every_row() -> None:
    proc = _bench("--large", "--quick", "--cap-mbps", "50", "--small-files", "10")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    large = [r for r in rows if r.startswith(("| stored zip", "| single file"))]
    assert len(large) == 3 and all("| Completed |" in r for r in large)
    assert any(r.startswith("| 10 x 0.53 MB | 10/10") for r in rows)
    assert any(r.startswith("| botocore request handling") for r in rows)
    assert "x parallel floor" in proc.stdout and "CPU per small file" in proc.stdout


def test_the_large_section_is_replaced_in_place_and_carried_over_by_a_full_run() -> None:
    old = f"# Results\n\nstamping\n\n{BEGIN}\nold large\n{END}\n\ntail\n"
    new = f"{BEGIN}\nnew large\n{END}\n"
    assert splice_section(old, new) == f"# Results\n\nstamping\n\n{BEGIN}\nnew large\n{END}\n\ntail\n"
    carried = existing_section(old)
    assert carried is not None and "old large" in carried
    assert splice_section("# Results\n\nfresh stamping\n", carried).endswith(f"{BEGIN}\nold large\n{END}\n")


def test_stamp_quick_times_every_method_and_judges_the_goal(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\n{BEGIN}\nlarge kept\n{END}\n")
    proc = _bench("--stamp", "--quick", "--stamp-mb", "8", "--results", str(results))
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")]
    expected = (
        "cp",
        "stamp --no-checksums",
        "stamp (with the SHA-256 pair)",
        "kernel copy: append_range, shift 12",
    )
    for method in expected:
        assert method in rows
    assert "the engine (`stamp --no-checksums`)" in proc.stdout
    written = results.read_text()
    assert "large kept" in written and STAMP_BEGIN in written and STAMP_END in written
    assert not list(Path("/dev/shm").glob("edc-bench-stamp-*"))  # its data is removed


def test_a_cpu_baseline_is_shown_beside_this_code_and_judged_as_a_ratio() -> None:
    from bench.large import CpuRun, LargeResults, LargeSizes
    from bench.largereport import _goals, cpu_table

    cpu = CpuRun(
        200, 530_000, 200, 3.2, 2.4, 8.0, 0.005, None, "abc1234", (16.0, 15.0, 17.0), (30.0, 31.0, 29.0)
    )
    text = cpu_table(cpu)
    assert "| baseline `abc1234` | 30.0" in text and "| this code          | 16.0" in text
    sizes = LargeSizes(1, 1, 200, 5e6, "abc1234", 3)
    goals = _goals(LargeResults(sizes, (), cpu))
    (line,) = [g for g in goals if "in the same run" in g]
    assert "0.53x" in line and line.endswith("met.")  # 16 / 30, under the 15 / 28
    (absolute,) = [g for g in goals if g.startswith("- CPU per small file: ")]
    assert "16.0 ms, the median of its 4 batches" in absolute and absolute.endswith("NOT MET.")


def test_the_baseline_checkout_is_a_worktree_of_the_ref_and_is_removed() -> None:
    from bench.large import baseline_checkout
    from bench.report import _git

    with baseline_checkout("HEAD") as path:
        assert (path / "service" / "worker.py").is_file()
    assert not path.exists()
    assert str(path) not in _git("worktree", "list")
