"""The whole pipeline on the embedded stack, and the emulator's own ceiling for the same requests.

moto's server and a throwaway PostgreSQL start once, in the parent, which then only waits and
polls the pipeline database. Everything that generates load runs in child processes: the workers
(``python -m service worker``, 1 then 2 processes), the uploader, and the ceiling client
(``python -m bench.pipeline ceiling|upload SPEC_JSON``), so no client shares moto's GIL.

Each run gets fresh buckets, queues, topic and databases (names carry the run's tag), so job counts
never mix. The ceiling client does, per file, what the worker needs of the emulator at the least:
put the source object (moto then queues the S3 event), receive it, get the object, put the copy,
delete the message, publish a notification.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import psycopg2

from bench.methods import MAIN_DIR

SAMPLE = "CT_small.dcm"  # pydicom's bundled test data, ~39 KB
KEY = "subjecteventcrffile/1/101/CT Scan/{code}.dcm"
WORKER_CONCURRENCY = 4  # the service default, per worker process
JOB_TIMEOUT_S = 600.0
CEILING_THREADS = (1, 2, 4)  # 4: as many as one worker process runs jobs at once


@dataclass(frozen=True, slots=True)
class CeilingRun:
    """The emulator's rate for the per-file request sequence, driven directly with boto3."""

    threads: int
    files: int
    seconds: float

    @property
    def files_per_s(self) -> float:
        """Files through the request sequence per second."""
        return self.files / self.seconds


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """Worker processes on a fresh stack: throughput and upload-to-quarantine latency."""

    workers: int
    concurrency: int
    files: int
    completed: int
    failed: int
    seconds: float  # first upload to the last completed job
    upload_seconds: float  # how long the uploader took for all files
    p50_s: float
    p95_s: float
    worker_rss_bytes: tuple[int, ...]
    log_lines: int  # WARNING or worse lines in the workers' logs

    @property
    def files_per_s(self) -> float:
        """Completed files per second."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PipelineResults:
    """Everything measured on the embedded stack."""

    ceilings: tuple[CeilingRun, ...]
    workers: tuple[WorkerRun, ...]


def stack_names(tag: str) -> Any:
    """Resource names of one bench stack on the shared server: ``bench-{tag}-...``."""
    from service.local.stack import StackNames

    return StackNames.prefixed(f"bench-{tag}")


def _child(mode: str, spec: dict[str, Any], timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    return run_module_child("bench.pipeline", mode, spec, timeout_s)


def run_module_child(module: str, mode: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """``python -m module mode spec`` in a child; its last stdout line is the JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", module, mode, json.dumps(spec)],
        cwd=MAIN_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the parent -----------------------------------------------------------------------------------


@contextmanager
def embedded_services(workdir: Path) -> Iterator[tuple[str, str]]:
    """moto's server and a throwaway PostgreSQL: (endpoint, admin URL)."""
    from service.local.postgres import ThrowawayPostgres
    from service.local.stack import MotoServer
    from service.logs import configure_logging

    with ExitStack() as cleanup:
        log_file = cleanup.enter_context(open(workdir / "bench-parent.log", "w"))
        configure_logging("WARNING", "json", stream=log_file)
        moto = MotoServer()
        endpoint = moto.start()
        cleanup.callback(moto.stop)
        postgres = ThrowawayPostgres()
        admin_url = postgres.start()
        cleanup.callback(postgres.stop)
        yield endpoint, admin_url


def _measure_ceiling(endpoint: str, threads: int, files: int) -> CeilingRun:
    from service.local.stack import provision_aws

    names = stack_names(f"c{threads}")
    aws = provision_aws(endpoint, names)
    spec = {
        "endpoint": endpoint,
        "threads": threads,
        "files": files,
        "source_bucket": names.source_bucket,
        "destination_bucket": names.destination_bucket,
        "queue_url": aws.queue_url,
        "topic_arn": aws.admin_topic_arn,
    }
    return CeilingRun(threads, files, float(_child("ceiling", spec)["seconds"]))


def prepare_databases(admin_url: str, tag: str, codes: Sequence[str]) -> tuple[str, str]:
    """Fresh EDC and pipeline databases with an EDC row for every code."""
    from service.db import Database
    from service.local.demo import DEMO_PIPELINE
    from service.local.stack import create_database, seed_edc
    from service.migrate import migrate
    from service.tracking import TrackingStore

    edc_url = create_database(admin_url, f"edc_{tag}")
    pipeline_url = create_database(admin_url, f"pipeline_{tag}")
    seed_edc(edc_url)
    with psycopg2.connect(edc_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO edc.subjecteventcrffile VALUES (%s, 101, 1, %s, 1)",
            [(10_000 + n, code) for n, code in enumerate(codes)],
        )
    conn.close()
    db = Database(pipeline_url, max_connections=1)
    try:
        migrate(db)
        TrackingStore(db).add_pipeline(*DEMO_PIPELINE)
    finally:
        db.close()
    return edc_url, pipeline_url


def query_rows(url: str, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one parameterised query on a fresh connection and return every row."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def _settled(url: str, keys: list[str]) -> tuple[int, int]:
    rows = query_rows(
        url,
        "SELECT count(*) FILTER (WHERE status = 'Completed'), count(*) FILTER (WHERE status = 'Failed')"
        " FROM pipeline.edc_pipeline_file WHERE source_key = ANY(%s)",
        (keys,),
    )
    return int(rows[0][0]), int(rows[0][1])


def wait_settled(url: str, keys: list[str], timeout_s: float) -> tuple[int, int]:
    """(completed, failed) jobs for ``keys`` once all are settled or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        completed, failed = _settled(url, keys)
        if completed + failed >= len(keys) or time.monotonic() > deadline:
            return completed, failed
        time.sleep(0.2)


def _connected(pid: int, port: int) -> bool:
    import psutil  # type: ignore[import-untyped]

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in conns)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextmanager
def worker_processes(
    env: dict[str, str], count: int, logdir: Path, code_dir: Path = MAIN_DIR
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` worker processes of the service code in ``code_dir`` (this checkout by
    default); SIGTERM and wait for them on exit, even on failure."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            with open(logdir / f"worker-{count}-{n}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "service", "worker"],
                        cwd=code_dir,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(procs: list[subprocess.Popen[bytes]], port: int, timeout_s: float = 60) -> None:
    """Wait until every worker holds a connection to ``port``; raise ``RuntimeError`` if one exits."""
    deadline = time.monotonic() + timeout_s
    while not all(_connected(p.pid, port) for p in procs):
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker exited during start-up with status {dead[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not connect to the emulator in time")
        time.sleep(0.1)


def _measure_workers(endpoint: str, admin_url: str, workers: int, files: int, workdir: Path) -> WorkerRun:
    from service.local.demo import DEMO_OVERRIDES
    from service.local.stack import aws_client, provision_aws, stack_environment

    tag = f"w{workers}"
    names = stack_names(tag)
    aws = provision_aws(endpoint, names)
    warm_codes = [f"warm{n}" for n in range(2 * workers)]
    codes = [f"b{n}" for n in range(files)]
    edc_url, pipeline_url = prepare_databases(admin_url, tag, warm_codes + codes)
    rundir = workdir / tag
    (rundir / "work").mkdir(parents=True)
    env = {
        **os.environ,
        **stack_environment(endpoint, names, aws, edc_url, pipeline_url),
        **DEMO_OVERRIDES,
        "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "WORK_DIR": str(rundir / "work"),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_S": "20",
    }
    port = int(urlsplit(endpoint).port or 0)
    body = sample_bytes()
    with worker_processes(env, workers, rundir) as procs:
        wait_ready(procs, port)
        # Warm-up (not measured): first requests, lazy imports, connection pools.
        s3 = aws_client("s3", endpoint)
        for code in warm_codes:
            s3.put_object(Bucket=names.source_bucket, Key=KEY.format(code=code), Body=body)
        wait_settled(pipeline_url, [KEY.format(code=c) for c in warm_codes], 120)
        keys = [KEY.format(code=c) for c in codes]
        upload = _child("upload", {"endpoint": endpoint, "bucket": names.source_bucket, "keys": keys})
        completed, failed = wait_settled(pipeline_url, keys, JOB_TIMEOUT_S)
        rss = tuple(peak_rss(p.pid) for p in procs)
    latencies = sorted(
        float(r[0])
        for r in query_rows(
            pipeline_url,
            "SELECT extract(epoch FROM completed_at - event_time) FROM pipeline.edc_pipeline_file"
            " WHERE source_key = ANY(%s) AND status = 'Completed'",
            (keys,),
        )
    )
    last = query_rows(
        pipeline_url,
        "SELECT extract(epoch FROM max(completed_at)) FROM pipeline.edc_pipeline_file"
        " WHERE source_key = ANY(%s)",
        (keys,),
    )[0][0]
    return WorkerRun(
        workers,
        WORKER_CONCURRENCY,
        files,
        completed,
        failed,
        float(last) - float(upload["start"]) if last is not None else 0.0,
        float(upload["end"]) - float(upload["start"]),
        statistics.median(latencies) if latencies else float("nan"),
        _nearest_rank(latencies, 0.95),
        rss,
        warning_lines(rundir),
    )


def _nearest_rank(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def warning_lines(rundir: Path) -> int:
    """Lines in the workers' logs; at LOG_LEVEL=WARNING every line is a warning or an error."""
    count = 0
    for log in rundir.glob("worker-*.log"):
        count += sum(1 for line in log.read_text(errors="replace").splitlines() if line.strip())
    return count


def measure_pipeline(
    files: int, worker_counts: Sequence[int], workdir: Path, progress: Callable[[str], None]
) -> PipelineResults:
    """Ceiling runs (1 and 2 client threads), then the worker with each process count."""
    ceilings, runs = [], []
    with embedded_services(workdir) as (endpoint, admin_url):
        progress(f"  embedded stack up: moto at {endpoint}")
        for threads in CEILING_THREADS:
            ceiling = _measure_ceiling(endpoint, threads, files)
            progress(f"  emulator ceiling, {threads} thread(s): {ceiling.files_per_s:.1f} files/s")
            ceilings.append(ceiling)
        for workers in worker_counts:
            run = _measure_workers(endpoint, admin_url, workers, files, workdir)
            progress(
                f"  {workers} worker process(es): {run.completed}/{run.files} completed, "
                f"{run.files_per_s:.1f} files/s, p50 {run.p50_s:.2f} s, p95 {run.p95_s:.2f} s"
            )
            runs.append(run)
    return PipelineResults(tuple(ceilings), tuple(runs))


# --- the children ---------------------------------------------------------------------------------


def sample_bytes() -> bytes:
    """The bundled CT sample's bytes: the small file of the throughput runs."""
    from service.local.samples import bundled_file

    return bundled_file(SAMPLE).read_bytes()


def _upload(spec: dict[str, Any]) -> dict[str, float]:
    from service.local.stack import aws_client

    s3 = aws_client("s3", spec["endpoint"])
    s3.list_buckets()  # connect before the clock starts
    body = sample_bytes()
    start = time.time()
    for key in spec["keys"]:
        s3.put_object(Bucket=spec["bucket"], Key=key, Body=body)
    return {"start": start, "end": time.time()}


def _ceiling_thread(spec: dict[str, Any], clients: tuple[Any, Any, Any], index: int, count: int) -> None:
    s3, sqs, sns = clients
    body = sample_bytes()
    for n in range(count):
        s3.put_object(Bucket=spec["source_bucket"], Key=KEY.format(code=f"t{index}-{n}"), Body=body)
        messages: list[dict[str, Any]] = []
        while not messages:
            messages = sqs.receive_message(
                QueueUrl=spec["queue_url"], MaxNumberOfMessages=1, WaitTimeSeconds=1
            ).get("Messages", [])
        message = messages[0]
        record = json.loads(message["Body"])["Records"][0]
        key = unquote_plus(record["s3"]["object"]["key"])
        data = s3.get_object(Bucket=spec["source_bucket"], Key=key)["Body"].read()
        s3.put_object(Bucket=spec["destination_bucket"], Key=f"quarantine/{key}", Body=data)
        sqs.delete_message(QueueUrl=spec["queue_url"], ReceiptHandle=message["ReceiptHandle"])
        sns.publish(TopicArn=spec["topic_arn"], Subject="bench", Message=f"{key} in quarantine")


def _drain(sqs: Any, queue_url: str) -> None:
    """Remove what provisioning queued (moto's s3:TestEvent) before the clock starts."""
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    ):
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def _ceiling(spec: dict[str, Any]) -> dict[str, float]:
    from service.local.stack import aws_client

    threads, files = int(spec["threads"]), int(spec["files"])
    clients = [tuple(aws_client(s, spec["endpoint"]) for s in ("s3", "sqs", "sns")) for _ in range(threads)]
    for s3, sqs, sns in clients:  # connect every client before the clock starts
        s3.list_buckets()
        sqs.get_queue_attributes(QueueUrl=spec["queue_url"], AttributeNames=["QueueArn"])
        sns.get_topic_attributes(TopicArn=spec["topic_arn"])
    _drain(clients[0][1], spec["queue_url"])
    shares = [files // threads + (1 if i < files % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            _ceiling_thread(spec, clients[index], index, shares[index])
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"seconds": seconds}


def main(argv: Sequence[str]) -> int:
    """Child entry point: ``ceiling SPEC`` or ``upload SPEC``; prints one JSON line."""
    mode, spec = argv[0], json.loads(argv[1])
    result = _ceiling(spec) if mode == "ceiling" else _upload(spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
