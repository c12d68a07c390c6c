"""The S3 adapter against moto's server: multipart uploads, write-once, streamed downloads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from service.errors import PermanentError
from service.s3io import ObjectRef, ObjectStore
from tests.stackfixtures import TestStack


def test_large_file_goes_up_in_parts_once_and_never_overwrites(stack: TestStack, tmp_path: Path) -> None:
    s3 = stack.client("s3")
    store = ObjectStore(s3, multipart_threshold=6 * 1024**2, part_size=5 * 1024**2)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024**2 + 123))  # three parts
    bucket = stack.names.destination_bucket
    receipt = store.upload_once(big, bucket, "quarantine/big.bin", {"pipeline-file-id": "7"})
    assert receipt.written
    # S3 answers the composite checksum of the parts ("<b64>-3"); moto 5.2 answers none.
    assert receipt.s3_checksum is None or receipt.s3_checksum.endswith("-3")
    head = s3.head_object(Bucket=bucket, Key="quarantine/big.bin")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"] == {"pipeline-file-id": "7"}
    # A second write of the same key is refused, whatever the size.
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 100)
    assert not store.upload_once(other, bucket, "quarantine/big.bin", {"pipeline-file-id": "8"}).written
    assert not store.upload_once(big, bucket, "quarantine/big.bin", {"pipeline-file-id": "8"}).written
    copy = tmp_path / "copy.bin"
    found = store.download(ObjectRef(bucket, "quarantine/big.bin", etag=head["ETag"].strip('"')), copy)
    assert found.size == big.stat().st_size
    assert found.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_download_of_an_overwritten_version_is_errl2002(stack: TestStack, tmp_path: Path) -> None:
    s3 = stack.client("s3")
    bucket = stack.names.destination_bucket
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    with pytest.raises(PermanentError) as info:
        ObjectStore(s3).download(ObjectRef(bucket, "k", etag=first), tmp_path / "k")
    assert info.value.code == "ERRL2002"
