"""The children of ``bench --large`` that move bytes: ``python -m bench.floors put|floors SPEC_JSON``.

``put`` uploads one file under each given key straight into moto (the inputs, not timed by the
bench). ``floors`` measures, through the proxy, what moving the same bytes costs with no processing:
one GET streamed to a file and one upload on one connection (the sequential floor), then s3transfer
as ``aws s3 cp`` runs it, 10 threads and 8 MiB parts, for the download and the upload (the parallel
floor). Each prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORKER_PART_SIZE = 16 * 1024**2  # service.s3io.ObjectStore's default part size
WORKER_THRESHOLD = 64 * 1024**2  # and multipart threshold
CLI_CONCURRENCY = 10  # aws s3 cp: max_concurrent_requests
CLI_CHUNK = 8 * 1024**2  # aws s3 cp: multipart_chunksize (and threshold)


def _client(endpoint: str) -> Any:
    import boto3
    import botocore.config

    from service.local.stack import FAKE_CREDENTIALS, REGION

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(max_pool_connections=CLI_CONCURRENCY + 2),
    )


def _put_child(spec: dict[str, Any]) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    s3 = _client(spec["endpoint"])
    s3.list_buckets()  # connect before the clock starts
    path = Path(spec["path"])
    start = time.time()
    for key in spec["keys"]:
        s3.upload_file(str(path), spec["bucket"], key, Config=TransferConfig(max_concurrency=4))
    return {"start": start, "end": time.time()}


def _sequential_upload(s3: Any, path: Path, bucket: str, key: str) -> None:
    """One connection: a single PUT below the worker's threshold, else its parts one after another."""
    if path.stat().st_size < WORKER_THRESHOLD:
        with open(path, "rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts: list[dict[str, Any]] = []
    with open(path, "rb") as body:
        while chunk := body.read(WORKER_PART_SIZE):
            number = len(parts) + 1
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
            parts.append({"PartNumber": number, "ETag": etag["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def _floors_child(spec: dict[str, Any]) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    bucket, key, destination = spec["bucket"], spec["key"], spec["destination"]
    fd, name = tempfile.mkstemp(prefix="floor-", dir=spec["scratch"])
    os.close(fd)
    path = Path(name)
    times: dict[str, float] = {}
    try:
        s3 = _client(spec["endpoint"])
        s3.list_buckets()
        start = time.perf_counter()
        with open(path, "wb") as out:
            for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1024 * 1024):
                out.write(chunk)
        times["sequential_down"] = time.perf_counter() - start
        start = time.perf_counter()
        _sequential_upload(s3, path, destination, f"floor/sequential/{key}")
        times["sequential_up"] = time.perf_counter() - start
        cli = TransferConfig(
            multipart_threshold=CLI_CHUNK, multipart_chunksize=CLI_CHUNK, max_concurrency=CLI_CONCURRENCY
        )
        start = time.perf_counter()
        s3.download_file(bucket, key, str(path), Config=cli)
        times["parallel_down"] = time.perf_counter() - start
        start = time.perf_counter()
        s3.upload_file(str(path), destination, f"floor/parallel/{key}", Config=cli)
        times["parallel_up"] = time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)
    return times


def main(argv: Sequence[str]) -> int:
    """Child entry point: ``put SPEC`` or ``floors SPEC``; prints one JSON line."""
    mode, spec = argv[0], json.loads(argv[1])
    result = _put_child(spec) if mode == "put" else _floors_child(spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
