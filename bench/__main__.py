"""``python -m bench``: generate data, measure, print the tables, write bench/RESULTS.md.

    .venv/bin/python -m bench            # the full run (~5 minutes on 2 cores, ~5.5 GB of temp disk)
    .venv/bin/python -m bench --quick    # a smoke run with small sizes (under a minute)
    .venv/bin/python -m bench --large    # large uploads through a 5 MB/s-per-connection cap, and the
                                         # worker's CPU per 0.5 MB file with a py-spy profile (~10 min)
    .venv/bin/python -m bench --large --quick --cap-mbps 50   # its smoke run (under a minute)
    .venv/bin/python -m bench --stamp    # one 600 MB file through `python -m service stamp` against
                                         # `cp`, on tmpfs (~1 minute; --quick: 60 MB, one round)

``--large`` runs the whole worker on the embedded stack behind a rate-capped TCP proxy for a stored
zip of 0.5 MB instances and one multi-frame file (``--zip-mb``, ``--file-mb``, default 200 each) and
prints upload-to-quarantine time next to the sequential and parallel floors (see bench/large.py).
The full runs write ``bench/RESULTS.md`` (``--large`` only its own section, the full run keeps that
section); ``--quick`` only prints unless ``--results`` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import FULL, QUICK, BenchInput, Sizes, generate, planned_bytes
from bench.large import LargeSizes, measure_large
from bench.largereport import BEGIN as LARGE_BEGIN
from bench.largereport import END as LARGE_END
from bench.largereport import existing_section, render_large, splice_section
from bench.methods import MAIN_DIR
from bench.micro import Measurement, Startup, measure, measure_startup, naive_fits, profile_engine
from bench.pipeline import PipelineResults, measure_pipeline
from bench.report import code_state, render
from bench.stampcli import BEGIN as STAMP_BEGIN
from bench.stampcli import END as STAMP_END
from bench.stampcli import measure_stamp, render_stamp

DISK_MARGIN = 500_000_000


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per method (default 5, quick 1)")
    parser.add_argument("--results", type=Path, help="where to write the report (default bench/RESULTS.md)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the embedded-stack measurements")
    parser.add_argument("--no-stamping", action="store_true", help="skip the stamping measurements")
    large = parser.add_argument_group("--large: large uploads through a per-connection rate cap")
    large.add_argument("--large", action="store_true", help="run the large-upload and CPU-per-file bench")
    large.add_argument("--cap-mbps", type=float, default=5.0, help="MB/s per connection and direction (5)")
    large.add_argument("--zip-mb", type=float, help="size of the zip of 0.5 MB instances (200; quick 8)")
    large.add_argument("--file-mb", type=float, help="size of the single multi-frame file (200; quick 8)")
    large.add_argument("--small-files", type=int, help="0.5 MB files for the CPU per file (200; quick 20)")
    large.add_argument(
        "--cpu-baseline",
        metavar="REF",
        help="also measure the CPU per file of the worker at git REF (a temporary worktree), in turn",
    )
    large.add_argument(
        "--cpu-rounds", type=int, default=3, help="batches of each code with --cpu-baseline (3)"
    )
    stamp = parser.add_argument_group("--stamp: one large file through `python -m service stamp`")
    stamp.add_argument("--stamp", action="store_true", help="run the stamp-against-cp bench")
    stamp.add_argument("--stamp-mb", type=float, help="size of the single file (600; quick 60)")
    return parser


def _stamp(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    code_before = code_state()
    rounds = args.rounds or (1 if args.quick else 9)  # tmpfs page allocation is noisy here
    results = measure_stamp(args.stamp_mb or (60 if args.quick else 600), rounds, _progress)
    command = " ".join([".venv/bin/python -m bench", *sys.argv[1:]])
    section = render_stamp(results, command, code_before, time.perf_counter() - started)
    print(section)
    results_path = args.results or (None if args.quick else MAIN_DIR / "bench" / "RESULTS.md")
    if results_path:
        old = results_path.read_text() if results_path.exists() else ""
        results_path.write_text(splice_section(old, section, STAMP_BEGIN, STAMP_END))
        _progress(f"written to {results_path}")
    return 0


def _large(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    code_before = code_state()
    sizes = LargeSizes(
        zip_bytes=int((args.zip_mb or (8 if args.quick else 200)) * 1e6),
        file_bytes=int((args.file_mb or (8 if args.quick else 200)) * 1e6),
        small_files=args.small_files or (20 if args.quick else 200),
        cap_bytes_per_s=args.cap_mbps * 1e6,
        cpu_baseline=args.cpu_baseline,
        cpu_rounds=args.cpu_rounds,
    )
    results_path = args.results or (None if args.quick else MAIN_DIR / "bench" / "RESULTS.md")
    workdir = Path(tempfile.mkdtemp(prefix="edc-bench-", dir="/tmp"))
    try:
        results = measure_large(sizes, workdir, _progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join([".venv/bin/python -m bench", *sys.argv[1:]])
    section = render_large(results, command, code_before, time.perf_counter() - started)
    print(section)
    if results_path:
        old = results_path.read_text() if results_path.exists() else ""
        results_path.write_text(splice_section(old, section))
        _progress(f"written to {results_path}")
    return 0


@dataclass
class _Run:
    """What one run collected."""

    inputs: list[BenchInput] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    startup: Startup | None = None
    profiles: list[tuple[str, str]] = field(default_factory=list)
    pipeline: PipelineResults | None = None


def _stamping(run: _Run, root: Path, sizes: Sizes, rounds: int) -> None:
    _progress("generating data (not timed)...")
    run.inputs = list(generate(root / "data", sizes))
    os.sync()  # write the inputs back now, so writeback does not run during the measurements
    run.startup = measure_startup(root, rounds=3)
    for item in run.inputs:
        _progress(f"measuring {item.name}")
        if not naive_fits(item):
            run.skipped.append(f"naive pydicom on {item.name}: would not fit in the available memory")
        run.measurements += measure(item, root / "scratch", rounds, _progress)
    for item in run.inputs:
        if item.role in ("series_zip", "series_files"):
            _progress(f"profiling the engine on {item.name}")
            run.profiles.append((item.name, profile_engine(item, root / "scratch")))


def main() -> int:
    """Run the benchmark; exit status 2 when there is not enough temporary disk."""
    args = _parser().parse_args()
    if args.large:
        return _large(args)
    if args.stamp:
        return _stamp(args)
    started = time.perf_counter()
    code_before = code_state()
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 5)
    results = args.results or (None if args.quick else MAIN_DIR / "bench" / "RESULTS.md")
    root = Path(tempfile.mkdtemp(prefix="edc-bench-", dir="/tmp"))
    try:
        needed = 0 if args.no_stamping else planned_bytes(sizes) + max(sizes.memory_zip_bytes) + DISK_MARGIN
        free = shutil.disk_usage(root).free
        if free < needed:
            print(
                f"not enough disk under {root}: {free / 1e9:.1f} GB free, "
                f"the run needs ~{needed / 1e9:.1f} GB (inputs + the largest output). "
                "Free some space or use --quick.",
                file=sys.stderr,
            )
            return 2
        _progress(f"temporary data under {root}: {free / 1e9:.1f} GB free, ~{needed / 1e9:.1f} GB needed")
        run = _Run()
        if not args.no_stamping:
            _stamping(run, root, sizes, rounds)
        if not args.no_pipeline:
            _progress(f"whole pipeline on the embedded stack ({sizes.pipeline_files} files)")
            (root / "pipeline").mkdir()
            run.pipeline = measure_pipeline(sizes.pipeline_files, (1, 2), root / "pipeline", _progress)
        text = render(
            command=" ".join([".venv/bin/python -m bench", *sys.argv[1:]]),
            sizes=sizes,
            rounds=rounds,
            inputs=run.inputs,
            measurements=run.measurements,
            startup=run.startup,
            pipeline=run.pipeline,
            profiles=run.profiles,
            code_before=code_before,
            wall_s=time.perf_counter() - started,
            skipped=run.skipped,
        )
        print(text)
        if results:
            old = results.read_text() if results.exists() else ""
            for begin, end in ((LARGE_BEGIN, LARGE_END), (STAMP_BEGIN, STAMP_END)):
                kept = existing_section(old, begin, end)  # the other modes' sections stay
                text = splice_section(text, kept, begin, end) if kept else text
            results.write_text(text)
            _progress(f"written to {results}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
