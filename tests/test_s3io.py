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


PART = 5 * 1024**2


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
def test_parallel_transfer_moves_every_byte_once_in_order(
    stack: TestStack, tmp_path: Path, size: int
) -> None:
    """Ranged GETs and concurrent parts, at the edges of a part: the object and the download are
    the source byte for byte, the fingerprint is the whole object's, no upload is left open."""
    s3 = stack.client("s3")
    bucket = stack.names.destination_bucket
    store = ObjectStore(s3, multipart_threshold=PART + 1, part_size=PART, transfer_threads=4)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.upload_once(source, bucket, f"quarantine/{size}.bin", {}).written
    parts = -(-size // PART) if size > PART else 0
    etag = s3.head_object(Bucket=bucket, Key=f"quarantine/{size}.bin")["ETag"].strip('"')
    assert etag.endswith(f"-{parts}") if parts else "-" not in etag
    copy = tmp_path / "copy.bin"
    found = store.download(ObjectRef(bucket, f"quarantine/{size}.bin"), copy)
    assert (found.size, found.sha256) == (size, expected)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == expected
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_ranged_download_stays_on_the_version_it_started_with(stack: TestStack, tmp_path: Path) -> None:
    """An overwrite between the first range and the rest must not splice two objects together:
    the later ranges are pinned to the first one's ETag, and the download fails as gone."""
    s3 = stack.client("s3")
    bucket = stack.names.destination_bucket
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(3 * PART))
    store = ObjectStore(s3, part_size=PART, transfer_threads=3)
    real = store._fetch_ranges

    def overwritten_meanwhile(*args: object) -> None:
        s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(3 * PART))
        real(*args)  # type: ignore[arg-type]

    store._fetch_ranges = overwritten_meanwhile  # type: ignore[method-assign]
    with pytest.raises(PermanentError) as info:
        store.download(ObjectRef(bucket, "k"), tmp_path / "k")
    assert info.value.code == "ERRL2002"


def test_a_failing_part_aborts_the_parallel_upload(
    stack: TestStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = stack.client("s3")
    bucket = stack.names.destination_bucket
    store = ObjectStore(s3, multipart_threshold=PART + 1, part_size=PART, transfer_threads=3)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(4 * PART))
    real = s3.upload_part

    def third_part_refused(**kwargs: object) -> object:
        if kwargs["PartNumber"] == 3:
            raise ValueError("refused")
        return real(**kwargs)

    monkeypatch.setattr(s3, "upload_part", third_part_refused)
    with pytest.raises(ValueError):
        store.upload_once(source, bucket, "quarantine/x.bin", {})
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert stack.keys(bucket, "quarantine/") == []
