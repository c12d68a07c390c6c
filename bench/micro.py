"""Interleaved measurements of the methods on the generated data, one child process per run."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.data import BenchInput, warm_page_cache
from bench.methods import ChildResult, run_child

METHOD_LABELS = {
    "raw": "raw copy (shutil.copyfile)",
    "member_copy": "zip member copy (zipfile, no DICOM)",
    "naive": "naive pydicom (dcmread + save_as)",
    "engine": "engine (process_upload)",
}


@dataclass(frozen=True, slots=True)
class Measurement:
    """One method on one dataset: the median of its timed runs and the highest peak RSS."""

    dataset: str
    method: str
    files: int
    nbytes: int
    seconds: float  # median of the runs
    runs: tuple[float, ...]
    rss_bytes: int  # highest VmHWM over the runs
    checked: bool

    @property
    def mb_per_s(self) -> float:
        """Input megabytes (10^6 bytes) per second."""
        return self.nbytes / 1e6 / self.seconds

    @property
    def mb_per_s_range(self) -> tuple[float, float]:
        """Slowest and fastest run, in MB/s."""
        return self.nbytes / 1e6 / max(self.runs), self.nbytes / 1e6 / min(self.runs)

    @property
    def files_per_s(self) -> float:
        """Instances (files or zip members) per second."""
        return self.files / self.seconds


@dataclass(frozen=True, slots=True)
class Startup:
    """Cost of a child process before any work (not included in the timed work)."""

    python_wall_s: float  # spawn to exit of an empty child
    python_rss_bytes: int
    import_s: float  # importing service.processors (and pydicom) inside a child
    import_rss_bytes: int


def methods_for(item: BenchInput) -> list[str]:
    """The methods measured on one dataset."""
    return ["raw", "naive", "engine"] if item.kind == "files" else ["raw", "member_copy", "naive", "engine"]


def _mem_available() -> int:
    with open("/proc/meminfo") as fp:
        for line in fp:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def naive_fits(item: BenchInput) -> bool:
    """Whether naive pydicom on this input stays well inside the available memory.

    It holds one instance several times over (member bytes, the parsed value, the written buffer).
    """
    largest = item.nbytes / max(1, item.instances) if item.kind == "zip" else item.nbytes
    return 4 * largest + 200e6 < 0.8 * _mem_available()


def _spec(item: BenchInput, method: str, out: Path, work: Path) -> dict[str, object]:
    return {
        "method": method,
        "kind": item.kind,
        "paths": [str(p) for p in item.paths],
        "out": str(out),
        "work": str(work),
    }


def _run_once(item: BenchInput, method: str, scratch: Path, profile: int = 0) -> ChildResult:
    out, work = scratch / "out", scratch / "work"
    for folder in (out, work):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    spec = _spec(item, method, out, work)
    if profile:
        spec["profile"] = profile
    try:
        result = run_child(spec)
        leftovers = list(work.iterdir())
        if leftovers:
            raise RuntimeError(f"{method} left {len(leftovers)} temporary files behind")
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        # Commit the deletions now (ext4 mounted with `discard` trims at journal commit), so neither
        # the trim nor writeback of this run's output lands inside the next run's timing.
        os.sync()


def measure(
    item: BenchInput, scratch: Path, rounds: int, progress: Callable[[str], None]
) -> list[Measurement]:
    """Every method on ``item``, ``rounds`` times, interleaved and rotated (raw, naive, engine, naive,
    engine, raw, ...)."""
    methods = [m for m in methods_for(item) if m != "naive" or naive_fits(item)]
    warm_page_cache(item.paths)
    results: dict[str, list[ChildResult]] = {m: [] for m in methods}
    for n in range(rounds):
        # Rotate the order each round, so no method always follows the same one (the previous run's
        # deleted output is still being trimmed and its freed memory returned to the host).
        for method in methods[n % len(methods) :] + methods[: n % len(methods)]:
            result = _run_once(item, method, scratch)
            results[method].append(result)
            progress(
                f"  {item.name}: round {n + 1}/{rounds} {method:<11} {result.seconds:7.3f} s "
                f"{item.nbytes / 1e6 / result.seconds:8.0f} MB/s  RSS {result.rss_bytes / 1e6:5.0f} MB"
            )
    return [
        Measurement(
            item.name,
            method,
            item.instances,
            item.nbytes,
            statistics.median(r.seconds for r in runs),
            tuple(r.seconds for r in runs),
            max(r.rss_bytes for r in runs),
            all(r.checked for r in runs),
        )
        for method, runs in results.items()
    ]


def measure_startup(scratch: Path, rounds: int) -> Startup:
    """Median cost of an empty child and of importing the engine in a child."""
    empty = [run_child({"method": "noop"}) for _ in range(rounds)]
    imports = [run_child({"method": "imports"}) for _ in range(rounds)]
    return Startup(
        statistics.median(r.wall_seconds for r in empty),
        max(r.rss_bytes for r in empty),
        statistics.median(r.seconds for r in imports),
        max(r.rss_bytes for r in imports),
    )


def profile_engine(item: BenchInput, scratch: Path, top: int = 10) -> str:
    """cProfile of the engine on ``item`` in a child: the ``top`` entries by cumulative time (below
    the bench's own three wrappers, which come first), then the ``top`` entries by own time."""
    warm_page_cache(item.paths)
    text = str(_run_once(item, "engine", scratch, profile=top).extra.get("profile", ""))
    # pstats prints absolute paths; the prefixes are noise in a report.
    for prefix in (sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parent.parent)):
        text = text.replace(prefix + "/", "")
    return text
