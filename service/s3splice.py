"""A new head in front of bytes that stay in S3: read an object in ranges, write the result by copy.

A single DICOM file is stamped by changing a few hundred bytes near its start; everything after the
splice point is the input unchanged. For a large file those bytes need not travel: ``RangedObject``
reads the object version on demand (its first part, then small blocks where the header walk goes),
and ``upload_spliced`` writes the output as a multipart upload whose first part is the new head
plus input bytes the worker already holds, and whose other parts are ``UploadPartCopy`` ranges of
the input version (S3 copies them internally). A 2 GB file costs the worker a few MB of traffic.

The result carries a full-object CRC-32 that S3 computes; where S3 reports each copied part's
CRC-32 (AWS does), the worker combines them into the expected value and S3 verifies it on
completion. The copied ranges are pinned to the version read (VersionId, else If-Match on its
ETag), and the completion is write-once (If-None-Match).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from service import crc32
from service.errors import PermanentError, Stage
from service.processors.positioned import PositionedReader
from service.retry import aws_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger()

MIN_PART = 5 * 1024**2  # S3: every part but the last is at least 5 MiB
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000
_BLOCK = 256 * 1024  # what one on-demand read fetches
_GONE = frozenset({"NoSuchKey", "NoSuchVersion", "404", "PreconditionFailed", "412"})


class HeadOnlyRefused(Exception):  # noqa: N818 - a decision, not a fault
    """Reading this object's structure needs more of it than the head-only path fetches."""


class RangedObject(PositionedReader):
    """File-like random access to one pinned object version: the first part is held, other bytes
    are fetched in blocks when read, at most ``max_fetches`` times (then ``HeadOnlyRefused``)."""

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        pinned: Mapping[str, Any],
        size: int,
        first: bytes,
        *,
        max_fetches: int,
    ) -> None:
        super().__init__(size)
        self._fetch = fetch  # (start, end inclusive) -> exactly those bytes
        self.pinned = dict(pinned)  # Bucket, Key and VersionId or IfMatch of the version read
        self.first = first
        self._blocks: dict[int, bytes] = {}
        self._fetches_left = max_fetches
        self.fetched = len(first)  # bytes taken from S3 so far

    def _read_range(self, start: int, end: int) -> bytes:
        return self._read(start, end, budgeted=True)

    def range_bytes(self, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` (exclusive), fetched in one GET where not held: not budgeted."""
        return self._read(start, min(end, self.size), budgeted=False)

    def _read(self, start: int, end: int, *, budgeted: bool) -> bytes:
        if start >= end:
            return b""
        if end <= len(self.first):
            return self.first[start:end]
        if not budgeted:
            held = self.first[start:] if start < len(self.first) else b""
            rest = self._fetch(start + len(held), end - 1)
            self.fetched += len(rest)
            return held + rest
        pieces = []
        position = start
        while position < end:
            if position < len(self.first):
                piece = self.first[position:end]
            else:
                index = position // _BLOCK
                offset = position - index * _BLOCK
                piece = self._block(index)[offset : offset + end - position]
            pieces.append(piece)
            position += len(piece)
        return b"".join(pieces)

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            if self._fetches_left <= 0:
                raise HeadOnlyRefused("the header walk reads too far into the object")
            self._fetches_left -= 1
            start = index * _BLOCK
            block = self._fetch(start, min(start + _BLOCK, self.size) - 1)
            self.fetched += len(block)
            self._blocks[index] = block
        return block


def copy_ranges(start: int, size: int, threads: int) -> list[tuple[int, int]]:
    """``start``..``size`` split into part-copy ranges (end exclusive): one per thread, each of at
    least ``MIN_PART`` (the last may be shorter), at most ``MAX_PART``, at most ``MAX_PARTS - 1``."""
    remaining = size - start
    if remaining <= 0:
        return []
    per = max(MIN_PART, -(-remaining // max(1, threads)), -(-remaining // (MAX_PARTS - 1)))
    per = min(per, MAX_PART)
    return [(offset, min(offset + per, size)) for offset in range(start, size, per)]


class SplicedUpload:
    """Writes ``head`` + the input's bytes from ``tail_start`` to ``bucket/key`` once."""

    def __init__(self, client: S3Client, *, threads: int, run_all: Callable[..., None]) -> None:
        self._s3 = client
        self._threads = threads
        self._run_all = run_all

    def upload(
        self,
        source: RangedObject,
        head: bytes,
        tail_start: int,
        bucket: str,
        key: str,
        metadata: Mapping[str, str],
    ) -> str | None:
        """Returns S3's checksum of the result as ``crc32:<base64>``. Raises ``ClientError`` as
        S3 answers (PreconditionFailed on the completion: the key exists), ``PermanentError``
        ERRL2002 when the input version is gone or changed during the copy, ERRS1008 when the
        result does not have the size planned (it is removed)."""
        first_end = min(source.size, max(len(source.first), tail_start + MIN_PART))
        first_part = head + source.range_bytes(tail_start, first_end)
        ranges = copy_ranges(first_end, source.size, self._threads)
        expected_size = len(first_part) + source.size - first_end
        upload_id = self._create(bucket, key, metadata)
        try:
            parts: dict[int, dict[str, Any]] = {1: self._upload_part(bucket, key, upload_id, first_part)}
            lengths = {1: len(first_part)}

            def copy(number: int) -> None:
                start, end = ranges[number - 2]
                parts[number] = self._copy_part(bucket, key, upload_id, number, source.pinned, start, end)
                lengths[number] = end - start

            self._run_all(copy, range(2, len(ranges) + 2), self._threads)
            ordered = [parts[n] for n in sorted(parts)]
            expected = _combined(ordered, [lengths[n] for n in sorted(lengths)])
            checksum = self._complete(bucket, key, upload_id, ordered, expected)
        except BaseException:
            self._abort(bucket, key, upload_id)
            raise
        stored = self._check_stored(bucket, key, expected_size, checksum)
        return f"crc32:{stored}" if stored else None

    @aws_retry
    def _create(self, bucket: str, key: str, metadata: Mapping[str, str]) -> str:
        response = self._s3.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            Metadata=dict(metadata),
            ChecksumAlgorithm="CRC32",
            ChecksumType="FULL_OBJECT",
        )
        return response["UploadId"]

    @aws_retry
    def _upload_part(self, bucket: str, key: str, upload_id: str, body: bytes) -> dict[str, Any]:
        checksum = crc32.crc32_b64(body)
        response = self._s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body, ChecksumCRC32=checksum
        )
        return {"PartNumber": 1, "ETag": response["ETag"], "ChecksumCRC32": checksum}

    def _copy_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        pinned: Mapping[str, Any],
        start: int,
        end: int,
    ) -> dict[str, Any]:
        try:
            return self._copy_part_once(bucket, key, upload_id, number, pinned, start, end)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _GONE:  # the input version was deleted or overwritten under the copy
                message = f"S3 answered {code} copying the input"
                raise PermanentError("ERRL2002", message, Stage.DOWNLOAD) from exc
            raise

    @aws_retry
    def _copy_part_once(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        pinned: Mapping[str, Any],
        start: int,
        end: int,
    ) -> dict[str, Any]:
        copy_source: dict[str, str] = {"Bucket": pinned["Bucket"], "Key": pinned["Key"]}
        extra: dict[str, Any] = {}
        if pinned.get("VersionId"):
            copy_source["VersionId"] = pinned["VersionId"]
        elif pinned.get("IfMatch"):
            extra["CopySourceIfMatch"] = pinned["IfMatch"]
        response = self._s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource=copy_source,  # type: ignore[arg-type]
            CopySourceRange=f"bytes={start}-{end - 1}",
            **extra,
        )
        result = response["CopyPartResult"]
        part: dict[str, Any] = {"PartNumber": number, "ETag": result["ETag"]}
        if result.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = result["ChecksumCRC32"]
        return part

    @aws_retry
    def _complete(
        self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]], expected: str | None
    ) -> str | None:
        extra: dict[str, Any] = {"ChecksumType": "FULL_OBJECT"}
        if expected is not None:  # S3 refuses the completion when the result differs
            extra["ChecksumCRC32"] = expected
        response = self._s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            IfNoneMatch="*",
            **extra,
        )
        checksum = response.get("ChecksumCRC32")
        if expected is not None and checksum not in (None, expected):
            self._take_back(bucket, key)
            message = "S3's CRC-32 of the result is not the one expected"
            raise PermanentError("ERRS1008", message, Stage.QUARANTINE)
        return checksum or expected

    def _take_back(self, bucket: str, key: str) -> None:
        """Remove an object this upload just completed and found wrong (a bug, never the lab's
        problem). If S3 refuses, the object stays and the job's ERRS1008 tells the admins."""
        try:
            self._s3.delete_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            log.error("quarantine.unverified_object_left", error_code="ERRS1008")

    def _check_stored(self, bucket: str, key: str, size: int, checksum: str | None) -> str | None:
        """The object S3 now holds has the planned size (and the CRC-32 the completion answered);
        returns S3's CRC-32 of it (a HEAD answers it where the completion did not)."""
        head = self._s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        found, stored = int(head["ContentLength"]), head.get("ChecksumCRC32")
        if found != size or (checksum and stored and stored != checksum):
            self._take_back(bucket, key)
            message = f"the stamped object is {found} bytes where {size} were planned"
            if found == size:
                message = "S3's CRC-32 of the stamped object changed after the completion"
            raise PermanentError("ERRS1008", message, Stage.QUARANTINE)
        return stored or checksum

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        abort_multipart(self._s3, bucket, key, upload_id)


def abort_multipart(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort an unfinished multipart upload; if that fails too, the bucket's lifecycle rule for
    incomplete uploads cleans up."""
    with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def _combined(parts: list[dict[str, Any]], lengths: list[int]) -> str | None:
    """The whole object's CRC-32 from every part's, or None when S3 did not report them all."""
    if any("ChecksumCRC32" not in part for part in parts):
        return None
    total = crc32.decode(parts[0]["ChecksumCRC32"])
    for part, length in zip(parts[1:], lengths[1:], strict=True):
        total = crc32.crc32_combine(total, crc32.decode(part["ChecksumCRC32"]), length)
    return crc32.encode(total)
