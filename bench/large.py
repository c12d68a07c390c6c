"""Large uploads through a per-connection rate cap, and the worker's CPU per small file.

``python -m bench --large`` (see ``bench/__main__.py``). moto's server and a throwaway PostgreSQL
start once in the parent (``bench.pipeline.embedded_services``); everything that moves bytes runs
in child processes so that none shares moto's GIL: the rate-capped proxy (``bench.proxy``), the
worker (``python -m service worker``, one process per input so its peak RSS is that input's), the
uploader and the floor client (``python -m bench.floors put|floors SPEC_JSON``).

For each large input (a stored zip of 0.5 MB instances, one multi-frame file):

1. the source object is put straight into moto (not through the cap, not timed); the worker, whose
   ``AWS_ENDPOINT_URL`` is the proxy, takes it from the queue, and the run ends when its job is
   Completed (the quarantine object is written before that). Time = upload end -> ``completed_at``.
2. the floors, through the same proxy, with no processing: the sequential floor is one GET of the
   source and one upload of the same bytes (one connection each way, parts of the worker's size
   one after another); the parallel floor is what ``aws s3 cp`` does, s3transfer with 10 threads
   and 8 MiB parts, for the download and then the upload.

Then the CPU per small file: the worker straight on moto (no cap), N 0.5 MB single DICOM files,
worker CPU (utime + stime from ``/proc/PID/stat``) / N; and a second batch of N with py-spy
attached to the worker, for the profile.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.data import FRAME_BYTES, instance_bytes, write_instance, write_streamed_zip
from bench.methods import MAIN_DIR
from bench.pipeline import (
    embedded_services,
    peak_rss,
    prepare_databases,
    query_rows,
    run_module_child,
    stack_names,
    wait_ready,
    wait_settled,
    worker_processes,
)
from bench.profile import Profile, read_raw_profile

KEY = "subjecteventcrffile/1/101/CT Scan/{code}{ext}"
WORKER_CONCURRENCY = 4
SHM = Path("/dev/shm")  # tmpfs: this VM's disk swings 5x from run to run (NOTES)


@dataclass(frozen=True, slots=True)
class LargeSizes:
    """What one ``--large`` run moves."""

    zip_bytes: int  # target size of the stored zip of 0.5 MB instances
    file_bytes: int  # target size of the single multi-frame file
    small_files: int  # 0.5 MB files per batch of the CPU measurement
    cap_bytes_per_s: float  # per connection, each direction
    cpu_baseline: str | None = None  # a git ref whose worker is measured beside this one
    cpu_rounds: int = 3  # batches of each code with a baseline


@dataclass(frozen=True, slots=True)
class LargeInput:
    """One generated large upload."""

    name: str
    path: Path
    ext: str  # ".zip" or ".dcm"
    instances: int
    code: str  # the key's file name, unique per input
    overrides: tuple[tuple[str, str], ...] = ()  # worker settings for this input

    @property
    def nbytes(self) -> int:
        """Size of the upload."""
        return self.path.stat().st_size


@dataclass(frozen=True, slots=True)
class LargeRun:
    """The worker and both floors on one input, through the cap."""

    name: str
    nbytes: int
    status: str  # the job's final status
    worker_s: float  # upload end -> job Completed
    event_s: float  # S3 event time -> job Completed
    worker_cpu_s: float  # worker CPU over the job
    worker_rss_bytes: int  # VmHWM of the worker process (start-up and one warm-up file included)
    sequential_down_s: float
    sequential_up_s: float
    parallel_down_s: float
    parallel_up_s: float

    @property
    def sequential_s(self) -> float:
        """One connection each way: GET then upload."""
        return self.sequential_down_s + self.sequential_up_s

    @property
    def parallel_s(self) -> float:
        """10 connections each way: ranged GETs then concurrent part uploads."""
        return self.parallel_down_s + self.parallel_up_s


@dataclass(frozen=True, slots=True)
class CpuRun:
    """The worker's CPU on a batch of small files, straight on moto."""

    files: int
    file_bytes: int
    completed: int
    cpu_s: float  # worker utime + stime over the batch
    user_s: float
    seconds: float  # first upload -> last job Completed
    idle_cpu_per_s: float  # worker CPU seconds per second while idle (polling, heartbeat)
    profile: Profile | None
    # With --cpu-baseline: further batches of the same size, this code's and the baseline's in
    # turn, in ms of worker CPU per file (the batch above is the first of this code's).
    baseline_ref: str | None = None
    rounds_ms: tuple[float, ...] = ()
    baseline_ms: tuple[float, ...] = ()

    @property
    def ms_per_file(self) -> float:
        """Worker CPU milliseconds per file."""
        return 1000 * self.cpu_s / self.files


@dataclass(frozen=True, slots=True)
class LargeResults:
    """Everything ``--large`` measured."""

    sizes: LargeSizes
    runs: tuple[LargeRun, ...]
    cpu: CpuRun


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and all its threads, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat") as fp:
        fields = fp.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # fields 14 and 15 of proc(5)


def _cpu(pid: int) -> float:
    return sum(process_cpu_s(pid))


def _child(mode: str, spec: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    return run_module_child("bench.floors", mode, spec, timeout_s)


@contextmanager
def capped_proxy(upstream: str, rate: float) -> Iterator[str]:
    """``bench.proxy`` in a child process in front of ``upstream``; yields its endpoint URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy", upstream, str(rate)],
        cwd=MAIN_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def generate_large(root: Path, sizes: LargeSizes) -> list[LargeInput]:
    """The stored zip of 0.5 MB instances and the single multi-frame file (not timed)."""
    from pydicom.uid import generate_uid

    members = max(1, round(sizes.zip_bytes / instance_bytes(1)))
    zip_path = root / "series.zip"
    write_streamed_zip(zip_path, members, frames=1)
    frames = max(1, round(sizes.file_bytes / FRAME_BYTES))
    file_path = root / "multiframe.dcm"
    with open(file_path, "wb") as fp:
        write_instance(fp, generate_uid(), generate_uid(), 1, frames=frames)
    zip_mb, file_mb = zip_path.stat().st_size / 1e6, file_path.stat().st_size / 1e6
    single = f"single file ({frames} frames, {file_mb:.0f} MB)"
    return [
        LargeInput(
            f"stored zip ({members} x 0.5 MB, {zip_mb:.0f} MB)", zip_path, ".zip", members, "large-zip"
        ),
        # A file under the default S3_COPY_MIN_MB (a --quick run) is sent to the same path.
        LargeInput(f"{single}, stamped in S3", file_path, ".dcm", 1, "large-dcm", (("S3_COPY_MIN_MB", "1"),)),
        # The same file moved both ways in parallel: what the in-S3 stamp saves.
        LargeInput(
            f"{single}, S3_COPY_MIN_MB=0", file_path, ".dcm", 1, "large-dcm-local", (("S3_COPY_MIN_MB", "0"),)
        ),
    ]


def _small_file(root: Path) -> Path:
    from pydicom.uid import generate_uid

    buf = BytesIO()
    write_instance(buf, generate_uid(), generate_uid(), 1, frames=1)
    path = root / "small.dcm"
    path.write_bytes(buf.getvalue())
    return path


def _worker_env(endpoint: str, names: Any, aws: Any, urls: tuple[str, str], work: Path) -> dict[str, str]:
    from service.local.demo import DEMO_OVERRIDES
    from service.local.stack import stack_environment

    work.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **stack_environment(endpoint, names, aws, urls[0], urls[1]),
        **DEMO_OVERRIDES,
        "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "WORK_DIR": str(work),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_S": "20",
    }


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _put(endpoint: str, bucket: str, path: Path, keys: Sequence[str]) -> dict[str, float]:
    return _child("put", {"endpoint": endpoint, "bucket": bucket, "path": str(path), "keys": list(keys)})


def _job_times(pipeline_url: str, key: str) -> tuple[str, float, float]:
    """(status, completed_at, event_time) of the job for ``key``, as epoch seconds."""
    rows = query_rows(
        pipeline_url,
        "SELECT status, extract(epoch FROM completed_at), extract(epoch FROM event_time)"
        " FROM pipeline.edc_pipeline_file WHERE source_key = %s",
        (key,),
    )
    if not rows:
        return "missing", float("nan"), float("nan")
    status, completed, event = rows[0]
    return str(status), float(completed or "nan"), float(event or "nan")


def _measure_input(
    item: LargeInput, stack: dict[str, Any], proxy: str, workdir: Path, progress: Callable[[str], None]
) -> LargeRun:
    names, aws, urls, moto = stack["names"], stack["aws"], stack["urls"], stack["endpoint"]
    env = _worker_env(proxy, names, aws, urls, Path(tempfile.mkdtemp(prefix="work-", dir=SHM)))
    env.update(item.overrides)
    key = KEY.format(code=item.code, ext=item.ext)
    warm = KEY.format(code=f"warm-{item.code}", ext=".dcm")
    rundir = workdir / item.code
    rundir.mkdir()
    with worker_processes(env, 1, rundir) as procs:
        pid = procs[0].pid
        wait_ready(procs, _port(proxy))
        _put(moto, names.source_bucket, stack["small"], [warm])
        wait_settled(urls[1], [warm], 120)
        cpu_before = _cpu(pid)
        upload = _put(moto, names.source_bucket, item.path, [key])
        progress(f"  {item.name}: uploaded, waiting for the worker")
        wait_settled(urls[1], [key], 3600)
        cpu = _cpu(pid) - cpu_before
        rss = peak_rss(pid)
    status, completed, event = _job_times(urls[1], key)
    progress(f"  {item.name}: job {status} {completed - upload['end']:.1f} s after the upload; floors next")
    floors = _child(
        "floors",
        {
            "endpoint": proxy,
            "bucket": names.source_bucket,
            "key": key,
            "destination": names.destination_bucket,
            "scratch": str(SHM),
        },
    )
    return LargeRun(
        item.name,
        item.nbytes,
        status,
        completed - upload["end"],
        completed - event,
        cpu,
        rss,
        floors["sequential_down"],
        floors["sequential_up"],
        floors["parallel_down"],
        floors["parallel_up"],
    )


def _profiled_batch(pid: int, keys: list[str], put: Callable[[list[str]], object], out: Path) -> Profile:
    """One batch with py-spy sampling the worker: every thread, while it holds the GIL."""
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--full-filenames",
            "--function",
            "--gil",
            "--rate",
            "200",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    put(keys)
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    spy.wait(timeout=60)
    return read_raw_profile(out)


def _cpu_batch(moto: str, admin_url: str, small: Path, files: int, rundir: Path, code_dir: Path) -> float:
    """One batch of ``files`` small files through a fresh worker of the code in ``code_dir``, on
    fresh queues and databases: ms of worker CPU per file."""
    from service.local.stack import provision_aws

    tag = rundir.name
    names = stack_names(tag)
    aws = provision_aws(moto, names)
    warm = [KEY.format(code=f"{tag}warm{n}", ext=".dcm") for n in range(2 * WORKER_CONCURRENCY)]
    batch = [KEY.format(code=f"{tag}n{n}", ext=".dcm") for n in range(files)]
    urls = prepare_databases(admin_url, tag, [k.rsplit("/", 1)[1].removesuffix(".dcm") for k in warm + batch])
    env = _worker_env(moto, names, aws, urls, Path(tempfile.mkdtemp(prefix="work-", dir=SHM)))
    rundir.mkdir()
    with worker_processes(env, 1, rundir, code_dir) as procs:
        pid = procs[0].pid
        wait_ready(procs, _port(moto))
        _put(moto, names.source_bucket, small, warm)
        wait_settled(urls[1], warm, 120)
        before = _cpu(pid)
        _put(moto, names.source_bucket, small, batch)
        completed, _failed = wait_settled(urls[1], batch, 600)
        used = _cpu(pid) - before
    if completed != files:  # a worker that failed jobs would look cheap
        raise RuntimeError(f"{code_dir}: {completed} of {files} jobs completed; see {rundir}")
    return 1000 * used / files


@contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """A temporary git worktree of ``ref`` (the baseline's service code), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="edc-bench-baseline-"))
    git = [shutil.which("git") or "git", "-C", str(MAIN_DIR)]
    added = subprocess.run(
        [*git, "worktree", "add", "--detach", "--force", str(path), ref], capture_output=True, text=True
    )
    try:
        if added.returncode != 0:
            raise RuntimeError(f"git worktree add {ref}: {added.stderr.strip()}")
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False, capture_output=True)
        subprocess.run([*git, "worktree", "prune"], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def _compare_cpu(
    moto: str, admin_url: str, small: Path, files: int, workdir: Path, ref: str, rounds: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``rounds`` batches of this code and of ``ref`` in turn (ABBA order), in ms per file."""
    ours: list[float] = []
    theirs: list[float] = []
    with baseline_checkout(ref) as baseline:
        for n in range(rounds):
            order = [("cmpa", MAIN_DIR, ours), ("cmpb", baseline, theirs)]
            for tag, code_dir, into in order if n % 2 == 0 else order[::-1]:
                into.append(_cpu_batch(moto, admin_url, small, files, workdir / f"{tag}{n}", code_dir))
    return tuple(ours), tuple(theirs)


def _measure_cpu(
    moto: str, admin_url: str, small: Path, files: int, workdir: Path, progress: Callable[[str], None]
) -> CpuRun:
    from service.local.stack import provision_aws

    names = stack_names("cpu")
    aws = provision_aws(moto, names)
    warm = [KEY.format(code=f"cpuwarm{n}", ext=".dcm") for n in range(2 * WORKER_CONCURRENCY)]
    batch = [KEY.format(code=f"cpu{n}", ext=".dcm") for n in range(files)]
    profiled = [KEY.format(code=f"prof{n}", ext=".dcm") for n in range(files)]
    codes = [k.rsplit("/", 1)[1].removesuffix(".dcm") for k in warm + batch + profiled]
    urls = prepare_databases(admin_url, "cpu", codes)
    env = _worker_env(moto, names, aws, urls, Path(tempfile.mkdtemp(prefix="work-", dir=SHM)))
    rundir = workdir / "cpu"
    rundir.mkdir()
    with worker_processes(env, 1, rundir) as procs:
        pid = procs[0].pid
        wait_ready(procs, _port(moto))
        _put(moto, names.source_bucket, small, warm)
        wait_settled(urls[1], warm, 120)
        idle_before, idle_start = _cpu(pid), time.monotonic()
        time.sleep(2.0)
        idle = (_cpu(pid) - idle_before) / (time.monotonic() - idle_start)
        user_before, sys_before = process_cpu_s(pid)
        upload = _put(moto, names.source_bucket, small, batch)
        completed, _failed = wait_settled(urls[1], batch, 600)
        user_after, sys_after = process_cpu_s(pid)
        used = user_after + sys_after - user_before - sys_before
        progress(f"  {files} small files: {1000 * used / files:.1f} ms of worker CPU each; profiling")

        def put_and_wait(keys: list[str]) -> None:
            _put(moto, names.source_bucket, small, keys)
            wait_settled(urls[1], keys, 600)

        profile = _profiled_batch(pid, profiled, put_and_wait, rundir / "py-spy.txt")
    last = query_rows(
        urls[1],
        "SELECT extract(epoch FROM max(completed_at)) FROM pipeline.edc_pipeline_file"
        " WHERE source_key = ANY(%s)",
        (batch,),
    )[0][0]
    return CpuRun(
        files,
        small.stat().st_size,
        completed,
        user_after + sys_after - user_before - sys_before,
        user_after - user_before,
        float(last) - upload["start"] if last is not None else float("nan"),
        idle,
        profile,
    )


def measure_large(sizes: LargeSizes, workdir: Path, progress: Callable[[str], None]) -> LargeResults:
    """Generate the inputs, run the worker and the floors on each through the cap, then the CPU runs."""
    from service.local.stack import provision_aws

    data = Path(tempfile.mkdtemp(prefix="edc-bench-large-", dir=SHM))
    try:
        progress("generating the large inputs (not timed)...")
        inputs = generate_large(data, sizes)
        small = _small_file(data)
        with embedded_services(workdir) as (moto, admin_url):
            names = stack_names("large")
            aws = provision_aws(moto, names)
            codes = [i.code for i in inputs] + [f"warm-{i.code}" for i in inputs]
            urls = prepare_databases(admin_url, "large", codes)
            stack = {"names": names, "aws": aws, "urls": urls, "endpoint": moto, "small": small}
            runs = []
            with capped_proxy(moto, sizes.cap_bytes_per_s) as proxy:
                progress(f"  moto at {moto}, capped proxy at {proxy} ({sizes.cap_bytes_per_s / 1e6:g} MB/s)")
                for item in inputs:
                    runs.append(_measure_input(item, stack, proxy, workdir, progress))
            cpu = _measure_cpu(moto, admin_url, small, sizes.small_files, workdir, progress)
            if sizes.cpu_baseline:
                progress(f"  CPU per file against {sizes.cpu_baseline}, {sizes.cpu_rounds} round(s) each")
                ours, theirs = _compare_cpu(
                    moto, admin_url, small, sizes.small_files, workdir, sizes.cpu_baseline, sizes.cpu_rounds
                )
                cpu = dataclasses.replace(
                    cpu,
                    baseline_ref=sizes.cpu_baseline,
                    rounds_ms=ours,  # only the batches taken in turn with the baseline's
                    baseline_ms=theirs,
                )
        return LargeResults(sizes, tuple(runs), cpu)
    finally:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
