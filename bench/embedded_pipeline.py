"""Whole-pipeline throughput on the embedded stack: N single-file uploads, one worker process.

Run: .venv/bin/python -m bench.embedded_pipeline [--files 100] [--concurrency 4]
Prints files/s, p50/p95 upload-to-quarantine latency and peak RSS. moto's server runs in this
process, so the RSS includes it (~100+ MB), and moto's request rate bounds files/s here.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from service.app import build_worker
from service.config import Settings
from service.local.demo import embedded_stack
from service.local.samples import bundled_file
from service.local.stack import aws_client
from service.logs import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edc-bench-"))
    with open(workdir / "worker.log", "w") as log_file:
        configure_logging("WARNING", "json", stream=log_file)
        with embedded_stack(Settings.from_env({}), workdir) as stack:
            edc = stack.settings.edc_database_url
            assert edc and stack.settings.pipeline_database_url
            with psycopg2.connect(edc) as conn, conn.cursor() as cur:
                for n in range(args.files):
                    cur.execute(
                        "INSERT INTO edc.subjecteventcrffile VALUES (%s, 101, 1, %s, 1)",
                        (10_000 + n, f"b{n}"),
                    )
            settings = Settings.from_env({**stack.env, "WORKER_CONCURRENCY": str(args.concurrency)})
            app = build_worker(settings, poll_wait_s=1)
            runner = threading.Thread(target=app.worker.run, daemon=True)
            runner.start()
            s3 = aws_client("s3", stack.endpoint)
            body = bundled_file("CT_small.dcm").read_bytes()
            started = time.monotonic()
            for n in range(args.files):
                s3.put_object(
                    Bucket=stack.names.source_bucket,
                    Key=f"subjecteventcrffile/1/101/CT Scan/b{n}.dcm",
                    Body=body,
                )
            while True:
                with psycopg2.connect(stack.settings.pipeline_database_url) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pipeline.edc_pipeline_file WHERE status = 'Completed'")
                    row = cur.fetchone()
                if row and row[0] >= args.files:
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            with psycopg2.connect(stack.settings.pipeline_database_url) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT extract(epoch FROM completed_at - event_time) FROM pipeline.edc_pipeline_file"
                )
                latencies = sorted(float(r[0]) for r in cur.fetchall())
            app.worker.stop()
            runner.join(timeout=30)
            app.close()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| files | concurrency | files/s | p50 latency s | p95 latency s | peak RSS MB (incl. moto) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.files} | {args.concurrency} | {args.files / elapsed:.1f} | "
        f"{statistics.median(latencies):.2f} | {p95:.2f} | {rss_mb:.0f} |"
    )


if __name__ == "__main__":
    main()
