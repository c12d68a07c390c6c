"""Smoke tests of the benchmark's parts (no timing assertions): ``.venv/bin/python -m pytest bench``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

from bench.data import Sizes, generate
from bench.micro import Measurement, measure, methods_for
from bench.report import main_table, table, targets

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
