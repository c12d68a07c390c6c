"""``python -m service local``: the whole pipeline on one machine, with no Docker and no AWS.

Starts moto's server and a throwaway PostgreSQL (or uses PIPELINE_DATABASE_URL/EDC_DATABASE_URL
when given), provisions and seeds them, runs the worker in this process, uploads the sample
files and prints what reached quarantine. Ctrl-C stops everything and removes the temp data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg2

from service.app import build_worker
from service.cli import install_stop_handlers
from service.config import Settings, redact_url
from service.db import Database
from service.local.postgres import ThrowawayPostgres
from service.local.samples import SampleUpload, demo_uploads
from service.local.stack import (
    MotoServer,
    StackNames,
    aws_client,
    create_database,
    provision_aws,
    seed_edc,
    stack_environment,
)
from service.logs import configure_logging
from service.migrate import migrate
from service.tracking import TrackingStore

DEMO_PIPELINE = ("IMAGING", "Imaging uploads", ("CT Scan", "MRI Series"))
# Short replica-lag window so the demo shows ERRL1003 in seconds, not 15 minutes.
DEMO_OVERRIDES = {"REPLICA_LAG_INTERVAL_S": "2", "REPLICA_LAG_MAX_S": "6", "WORKER_CONCURRENCY": "4"}


@dataclasses.dataclass(frozen=True, slots=True)
class LocalStack:
    """A running embedded stack."""

    env: dict[str, str]
    settings: Settings
    names: StackNames
    endpoint: str


@contextmanager
def embedded_stack(user_settings: Settings, workdir: Path) -> Iterator[LocalStack]:
    """Start moto + PostgreSQL, provision, migrate, seed; stop and clean up on exit."""
    with ExitStack() as cleanup:
        moto = MotoServer()
        endpoint = moto.start()
        cleanup.callback(moto.stop)
        names = StackNames()
        aws = provision_aws(endpoint, names)
        if user_settings.pipeline_database_url and user_settings.edc_database_url:
            pipeline_url, edc_url = user_settings.pipeline_database_url, user_settings.edc_database_url
            if not _has_edc_schema(edc_url):
                seed_edc(edc_url)
        else:
            postgres = ThrowawayPostgres()
            admin_url = postgres.start()
            cleanup.callback(postgres.stop)
            edc_url, pipeline_url = create_database(admin_url, "edc"), create_database(admin_url, "pipeline")
            seed_edc(edc_url)
        env = {
            **stack_environment(endpoint, names, aws, edc_url, pipeline_url),
            **DEMO_OVERRIDES,
            "WORK_DIR": str(workdir),
            "LOG_LEVEL": user_settings.log_level,
        }
        for key, value in env.items():
            if key.startswith("AWS_") and key not in ("AWS_ENDPOINT_URL",):
                os.environ.setdefault(key, value)  # the boto3 credential chain reads these
        settings = Settings.from_env(env)
        db = Database(pipeline_url, max_connections=1)
        try:
            migrate(db)
            TrackingStore(db).add_pipeline(DEMO_PIPELINE[0], DEMO_PIPELINE[1], DEMO_PIPELINE[2])
        finally:
            db.close()
        yield LocalStack(env, settings, names, endpoint)


def run_local(user_settings: Settings, *, once: bool, demo: bool, timeout_s: float) -> int:
    """The ``local`` command."""
    settled = True
    workdir = Path(tempfile.mkdtemp(prefix="edc-local-"))
    log_path = Path(tempfile.gettempdir()) / f"{workdir.name}-worker.log"
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        log_file = cleanup.enter_context(open(log_path, "w", buffering=1))
        configure_logging(user_settings.log_level, "json", stream=log_file)
        print("Starting the embedded stack (moto server + throwaway PostgreSQL)...", flush=True)
        with embedded_stack(user_settings, workdir) as stack:
            app = build_worker(stack.settings, poll_wait_s=1)
            runner = threading.Thread(target=app.worker.run, name="worker", daemon=True)
            runner.start()
            try:
                _print_stack(stack, log_path)
                if demo:
                    uploads = demo_uploads(workdir)
                    started = time.monotonic()
                    _upload(stack, uploads)
                    rows = _wait_for_jobs(stack.settings, [u.key for u in uploads], timeout_s)
                    elapsed = time.monotonic() - started
                    _print_table(rows, uploads, elapsed)
                    _print_reports(stack)
                    settled = all(r["status"] in ("Completed", "Failed") for r in rows) and len(rows) == len(
                        uploads
                    )
                if not once:
                    stop = threading.Event()
                    install_stop_handlers(stop.set)
                    print(
                        "\nThe worker keeps running: upload more files to "
                        f"s3://{stack.names.source_bucket}/subjecteventcrffile/... "
                        f"at {stack.endpoint}. Press Ctrl-C to stop.",
                        flush=True,
                    )
                    stop.wait()
            finally:
                print("Stopping...", flush=True)
                app.worker.stop()
                runner.join(timeout=stack.settings.shutdown_grace_s + 10)
                app.close()
    print(f"Stopped; temporary data removed. The worker log stays at {log_path}")
    return 0 if settled else 1


def _has_edc_schema(url: str) -> bool:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('edc.subjecteventcrffile') IS NOT NULL")
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


def _print_stack(stack: LocalStack, log_path: Path) -> None:
    s = stack.settings
    print(f"  AWS endpoint (moto):  {stack.endpoint}")
    print(f"  source bucket:        s3://{stack.names.source_bucket}/subjecteventcrffile/")
    print(f"  quarantine:           s3://{s.destination_bucket}/{s.quarantine_prefix}")
    print(f"  pipeline database:    {redact_url(s.pipeline_database_url)}")
    print(f"  EDC replica:          {redact_url(s.edc_database_url)}")
    print(f"  worker log (JSON):    {log_path}", flush=True)


def _upload(stack: LocalStack, uploads: list[SampleUpload]) -> None:
    s3 = aws_client("s3", stack.endpoint)
    print(f"\nUploading {len(uploads)} sample files...", flush=True)
    for upload in uploads:
        s3.upload_file(str(upload.path), stack.names.source_bucket, upload.key)
        print(f"  {upload.key}", flush=True)


def _wait_for_jobs(settings: Settings, keys: list[str], timeout_s: float) -> list[dict[str, Any]]:
    assert settings.pipeline_database_url
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _job_rows(settings.pipeline_database_url, keys)
        settled = [r for r in rows if r["status"] in ("Completed", "Failed")]
        if len(settled) >= len(keys) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _job_rows(url: str, keys: list[str]) -> list[dict[str, Any]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT f.id, f.source_key, f.status, f.has_error, f.error_code, f.destination_key,"
                " coalesce(string_agg(d.atri_uid || ' (' || d.number_of_instances || ')', ', '"
                "   ORDER BY d.id), '') AS atri"
                " FROM pipeline.edc_pipeline_file f"
                " LEFT JOIN pipeline.edc_pipeline_file_dicom d ON d.edc_pipeline_file_id = f.id"
                " WHERE f.source_key = ANY(%s) GROUP BY f.id ORDER BY f.id",
                (keys,),
            )
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def _print_table(rows: list[dict[str, Any]], uploads: list[SampleUpload], elapsed: float) -> None:
    expected = {u.key: u.expect for u in uploads}
    print(
        f"\n{'job':>3}  {'source key':<44} {'status':<10} {'error':<9} "
        f"{'ATRIUID (instances)':<22} quarantine key"
    )
    for r in rows:
        error = r["error_code"] or ""
        print(
            f"{r['id']:>3}  {r['source_key']:<44} {r['status']:<10} {error:<9} {r['atri']:<22} "
            f"{r['destination_key'] or '-'}"
        )
    print("\nExpected:")
    for key, what in expected.items():
        print(f"  {key:<44} {what}")
    done = sum(r["status"] in ("Completed", "Failed") for r in rows)
    print(
        f"\n{done}/{len(uploads)} jobs settled in {elapsed:.1f} s "
        f"(includes the {DEMO_OVERRIDES['REPLICA_LAG_MAX_S']} s replica-lag window of the last file)."
    )


def _print_reports(stack: LocalStack) -> None:
    s3, sqs = aws_client("s3", stack.endpoint), aws_client("sqs", stack.endpoint)
    bucket = stack.names.error_log_bucket
    logs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    print(f"\nError logs ({len(logs)}):")
    for key in sorted(logs):
        print(f"  s3://{bucket}/{key}")
    inbox = sqs.get_queue_url(QueueName=stack.names.admin_inbox)["QueueUrl"]
    subjects = []
    while batch := sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages", []):
        subjects += [json.loads(m["Body"]).get("Subject", "") for m in batch]
        sqs.delete_message_batch(
            QueueUrl=inbox,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    print(f"Admin notifications ({len(subjects)}):")
    for subject in sorted(subjects):
        print(f"  {subject}")
