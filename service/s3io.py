"""S3 adapter: stream objects to and from local files, write-once uploads, small text objects.

One S3 connection moves roughly 85-100 MB/s, so a large object moves over ``transfer_threads``
connections: a download is ranged GETs of ``part_size`` bytes, every range pinned to the same
object version (VersionId, else If-Match on the ETag), written in place with ``pwrite``; an upload
above ``multipart_threshold`` sends its parts concurrently. Memory stays bounded: downloads stream
in 1 MiB chunks per connection, an upload holds at most ``transfer_threads`` parts. Each part and
small object carries a SHA-256 checksum that S3 verifies.

Two ways to overlap or avoid transfers build on this: ``start_download`` / ``start_upload``
(``s3stream``: a zip read while it lands and sent while it is written) and ``open_ranged`` /
``upload_spliced`` (``s3splice``: a single file's new head in front of bytes copied inside S3).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from service.breaker import Dependency
from service.errors import PermanentError, RetryableError, Stage
from service.fingerprint import Fingerprint
from service.retry import aws_retry, is_transient_aws_error
from service.s3splice import MIN_PART, RangedObject, SplicedUpload, abort_multipart
from service.s3stream import ArrivingDownload, StreamingUpload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_CHUNK = 1024 * 1024
_HEAD_RANGE = 1024 * 1024  # what one GET of a head-only read asks for
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True, slots=True)
class UploadReceipt:
    """What a write-once upload did: written now or found there, and S3's checksum of the object."""

    written: bool  # False: the key already held an object (not overwritten)
    s3_checksum: str | None = None  # ChecksumSHA256 as S3 answered it ("<b64>" or "<b64>-<parts>")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object version: the version id when the bucket is versioned, else the ETag."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One current object of a listing: its key and exact version."""

    key: str
    etag: str | None
    size: int
    version_id: str | None  # on a versioned bucket; None otherwise


class BucketMissingError(RetryableError):
    """The destination bucket does not exist (a configuration fault an operator can fix): nothing
    was written, so a retry may go to whatever bucket is configured by then."""


class ObjectStore:
    """Reads and writes S3 objects through one boto3 client."""

    def __init__(
        self,
        client: S3Client,
        *,
        multipart_threshold: int = 64 * 1024**2,
        part_size: int = 8 * 1024**2,
        transfer_threads: int = 1,
    ) -> None:
        self._s3 = client
        self._threshold = multipart_threshold
        self._part_size = part_size
        self._threads = max(1, transfer_threads)

    def transfers_in_parallel(self, size: int) -> bool:
        """Whether an object of ``size`` bytes moves over more than one connection."""
        return self._threads > 1 and size > self._part_size

    def download(self, ref: ObjectRef, path: Path) -> Fingerprint:
        """Stream the exact object version to ``path``; return its size and SHA-256.

        The digest is taken from the bytes as they arrive (no second pass over the file).
        Raises ``PermanentError`` ERRL2002 when that version is gone (deleted or overwritten),
        ``RetryableError`` ERRL2001 when S3 stays unavailable after retries.
        """
        with _download_errors():
            return self._download(ref, path)

    @aws_retry
    def _download(self, ref: ObjectRef, path: Path) -> Fingerprint:
        args = _version_args(ref)
        response = self._first_get(args)
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            first = 0
            for chunk in response["Body"].iter_chunks(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                first += len(chunk)
            total = _total_size(response, first)
            if total > first:
                out.flush()
                self._fetch_ranges(_pinned(args, response), out.fileno(), first, total)
        if total > first:  # the rest arrived out of order: hash it in order now
            _hash_from(path, first, digest)
        return Fingerprint(total, digest.hexdigest())

    def _first_get(self, args: dict[str, Any]) -> Any:
        """The whole object with one connection; with more, its first range, which tells the size
        (a small object arrives whole in it)."""
        if self._threads == 1:
            return self._s3.get_object(**args)
        return self._first_range(args)

    def _fetch_ranges(self, args: dict[str, Any], fd: int, start: int, total: int) -> None:
        """GET bytes ``start``..``total`` in ``part_size`` ranges over ``transfer_threads``
        connections, each written at its offset."""

        def fetch(offset: int) -> None:
            self._range_into(args, fd, offset, min(offset + self._part_size, total))

        _run_all(fetch, range(start, total, self._part_size), self._threads)

    def _range_into(self, pinned: dict[str, Any], fd: int, start: int, end: int) -> None:
        """GET bytes ``start``..``end`` (exclusive) and write them at their offset in ``fd``."""
        body = self._s3.get_object(**pinned, Range=f"bytes={start}-{end - 1}")["Body"]
        at = start
        for chunk in body.iter_chunks(_CHUNK):
            os.pwrite(fd, chunk, at)
            at += len(chunk)
        if at != end:
            raise botocore.exceptions.IncompleteReadError(actual_bytes=at - start, expected_bytes=end - start)

    def start_download(self, ref: ObjectRef, path: Path) -> ArrivingDownload:
        """Start downloading the exact object version to ``path`` over ``transfer_threads``
        connections and return once its first part has landed (so its size and first bytes are
        known): the central directory's range next, then the rest in order (``s3stream``).
        ``wait`` and ``fingerprint`` raise as ``download`` does; ``close`` it in any case."""
        args = _version_args(ref)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with _download_errors():
                response, first = self._read_first_range(args)
            os.pwrite(fd, first, 0)
            total = _total_size(response, len(first))
            os.ftruncate(fd, total)
            pinned = _pinned(args, response)
            fetch_range = aws_retry(self._range_into)

            def fetch(start: int, end: int) -> None:
                with _download_errors():
                    fetch_range(pinned, fd, start, end)

            return ArrivingDownload(fd, total, self._part_size, len(first), fetch, self._threads)
        except BaseException:
            os.close(fd)
            raise

    def start_upload(
        self, path: Path, bucket: str, key: str, metadata: Mapping[str, str], *, expected_size: int
    ) -> StreamingUpload:
        """Open a write-once multipart upload fed from ``path`` as it is written (``s3stream``),
        in parts sized so that about ``expected_size`` bytes fit S3's 10,000 parts. Raises
        ``BucketMissingError`` or ERRL4002 as ``upload_once`` does."""
        fd = os.open(path, os.O_RDONLY)
        try:
            upload_id = self._create_multipart(bucket, key, metadata)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            os.close(fd)
            _not_uploaded(exc, bucket)
            raise  # not reached: a create is never a precondition failure
        except BaseException:
            os.close(fd)
            raise

        def send(number: int, part_fd: int, offset: int, length: int) -> dict[str, Any]:
            try:
                return self._upload_part(bucket, key, upload_id, number, os.pread(part_fd, length, offset))
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise _unavailable("ERRL4002", exc, Stage.QUARANTINE) from exc

        def complete(parts: list[dict[str, Any]]) -> str | None:
            return self._complete_multipart(bucket, key, upload_id, parts)

        def abort() -> None:
            self._abort_multipart(bucket, key, upload_id)

        part_size = self._parts_for(expected_size + expected_size // 64)  # headroom for the stamps
        return StreamingUpload(fd, part_size, self._threads, send, complete, abort)

    def _parts_for(self, size: int) -> int:
        """``part_size``, or larger (whole MiB) where ``size`` would need more than 10,000 parts."""
        needed = -(-size // 9_999)
        return max(self._part_size, -(-needed // _CHUNK) * _CHUNK)

    def finish_upload(
        self, upload: StreamingUpload, size: int, bucket: str
    ) -> tuple[Fingerprint, UploadReceipt]:
        """Send the rest of a streamed upload and complete it: the output's fingerprint and what
        the write-once completion did (``written`` False: the key already held an object)."""
        try:
            output, checksum = upload.finish(size)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            upload.abort()
            assert upload.output is not None  # hashed before the completion was tried
            return upload.output, _not_uploaded(exc, bucket)
        except BaseException:
            upload.abort()
            raise
        return output, UploadReceipt(written=True, s3_checksum=checksum)

    def open_ranged(self, ref: ObjectRef, *, max_fetches: int = 8) -> RangedObject:
        """The exact object version for random access: its first ``part_size`` bytes now, other
        bytes on demand (``RangedObject``). Raises as ``download`` does, also on later reads."""
        args = _version_args(ref)
        with _download_errors():
            response, head = self._read_first_range(args, _HEAD_RANGE)
        pinned = _pinned(args, response)
        total = _total_size(response, len(head))

        def fetch(start: int, end: int) -> bytes:
            with _download_errors():
                return self._range(pinned, start, end)

        # A spliced upload's first part holds at least 5 MiB of the input after the head: fetch
        # that much now, over the transfer threads.
        want = min(total, MIN_PART + _HEAD_RANGE)
        pieces = {0: head}

        def fetch_piece(start: int) -> None:
            pieces[start] = fetch(start, min(start + _HEAD_RANGE, want) - 1)

        _run_all(fetch_piece, range(len(head), want, _HEAD_RANGE), self._threads)
        first = b"".join(pieces[start] for start in sorted(pieces))
        return RangedObject(fetch, pinned, total, first, max_fetches=max_fetches)

    @aws_retry
    def _read_first_range(self, args: dict[str, Any], length: int | None = None) -> tuple[Any, bytes]:
        response = self._first_range(args, length)
        return response, response["Body"].read()

    def _first_range(self, args: dict[str, Any], length: int | None = None) -> Any:
        try:
            return self._s3.get_object(**args, Range=f"bytes=0-{(length or self._part_size) - 1}")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            return self._s3.get_object(**args)  # an empty object has no byte 0 to range over

    @aws_retry
    def _range(self, pinned: dict[str, Any], start: int, end: int) -> bytes:
        data: bytes = self._s3.get_object(**pinned, Range=f"bytes={start}-{end}")["Body"].read()
        if len(data) != end + 1 - start:
            expected = end + 1 - start
            raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
        return data

    def upload_spliced(
        self,
        source: RangedObject,
        head: bytes,
        tail_start: int,
        bucket: str,
        key: str,
        metadata: Mapping[str, str],
    ) -> UploadReceipt:
        """Write ``head`` + ``source`` from ``tail_start`` on to ``bucket/key`` unless an object is
        already there, copying the unchanged bytes inside S3 (``s3splice``). Answers and raises as
        ``upload_once`` does; ERRL2002 when the input version is gone or changed under the copy."""
        uploader = SplicedUpload(self._s3, threads=self._threads, run_all=_run_all)
        try:
            checksum = uploader.upload(source, head, tail_start, bucket, key, metadata)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            return _not_uploaded(exc, bucket)
        return UploadReceipt(written=True, s3_checksum=checksum)

    def size_of(self, ref: ObjectRef) -> int:
        """The object version's size (HEAD), for events that do not carry one.

        Raises as ``download`` does.
        """
        args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            args["VersionId"] = ref.version_id
        with _download_errors():
            return int(self._head_version(args)["ContentLength"])

    @aws_retry
    def _head_version(self, args: dict[str, Any]) -> Any:
        return self._s3.head_object(**args)

    def head(self, bucket: str, key: str) -> Mapping[str, str] | None:
        """The object's user metadata, or None when there is no such object."""
        try:
            response = self._head(bucket, key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _unavailable("ERRL4002", exc, Stage.QUARANTINE) from exc
        return {str(k): str(v) for k, v in response.get("Metadata", {}).items()}

    @aws_retry
    def _head(self, bucket: str, key: str) -> Any:
        return self._s3.head_object(Bucket=bucket, Key=key)

    def upload_once(
        self, path: Path, bucket: str, key: str, metadata: Mapping[str, str], sha256: str | None = None
    ) -> UploadReceipt:
        """Write ``path`` to ``bucket/key`` unless an object is already there; never overwrite.

        ``sha256`` (hex), when the caller has it, saves a pass over the file for a single PUT.
        ``written`` is False when the key already existed (the caller decides whether the existing
        object is its own earlier attempt). Raises ``RetryableError`` ERRL4002 when S3 stays
        unavailable.
        """
        try:
            if path.stat().st_size < self._threshold:
                checksum = self._put_small(path, bucket, key, metadata, sha256)
            else:
                checksum = self._put_multipart(path, bucket, key, metadata)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            return _not_uploaded(exc, bucket)
        return UploadReceipt(written=True, s3_checksum=checksum)

    @aws_retry
    def _put_small(
        self, path: Path, bucket: str, key: str, metadata: Mapping[str, str], sha256: str | None
    ) -> str | None:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode() if sha256 else _sha256_file(path)
        with open(path, "rb") as body:
            response = self._s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                Metadata=dict(metadata),
                IfNoneMatch="*",
                ChecksumSHA256=checksum,
            )
        return response.get("ChecksumSHA256") or checksum

    def _put_multipart(self, path: Path, bucket: str, key: str, metadata: Mapping[str, str]) -> str | None:
        upload_id = self._create_multipart(bucket, key, metadata)
        try:
            size = path.stat().st_size
            part_size = self._parts_for(size)
            parts: dict[int, dict[str, Any]] = {}
            with open(path, "rb") as body:

                def send(number: int) -> None:  # each thread reads its own part: bounded memory
                    chunk = os.pread(body.fileno(), part_size, (number - 1) * part_size)
                    parts[number] = self._upload_part(bucket, key, upload_id, number, chunk)

                count = -(-size // part_size) or 1
                _run_all(send, range(1, count + 1), self._threads)
            return self._complete_multipart(bucket, key, upload_id, [parts[n] for n in sorted(parts)])
        except BaseException:
            self._abort_multipart(bucket, key, upload_id)
            raise

    @aws_retry
    def _create_multipart(self, bucket: str, key: str, metadata: Mapping[str, str]) -> str:
        response = self._s3.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=dict(metadata), ChecksumAlgorithm="SHA256"
        )
        return response["UploadId"]

    @aws_retry
    def _upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, chunk: bytes
    ) -> dict[str, Any]:
        checksum = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        response = self._s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    @aws_retry
    def _complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]]
    ) -> str | None:
        response = self._s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            IfNoneMatch="*",
        )
        # The composite checksum (a checksum of the parts' checksums) with the part count.
        checksum = response.get("ChecksumSHA256")
        return f"{checksum}-{len(parts)}" if checksum and "-" not in checksum else checksum

    def _abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        abort_multipart(self._s3, bucket, key, upload_id)

    def list_objects(self, bucket: str, prefix: str) -> Iterator[ListedObject]:
        """The current objects under ``prefix``, page by page, with their version ids when the
        bucket is versioned. botocore's errors propagate (an operator command's listing)."""
        status = self._s3.get_bucket_versioning(Bucket=bucket).get("Status")
        if status in ("Enabled", "Suspended"):
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for version in page.get("Versions", []):
                    if version.get("IsLatest"):
                        # "null": written while the bucket was unversioned; the ETag names it.
                        version_id = version.get("VersionId")
                        yield ListedObject(
                            version["Key"],
                            _listed_etag(version.get("ETag")),
                            int(version.get("Size", 0)),
                            None if version_id in (None, "null") else version_id,
                        )
            return
        for listing in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in listing.get("Contents", []):
                yield ListedObject(
                    item["Key"], _listed_etag(item.get("ETag")), int(item.get("Size", 0)), None
                )

    def put_text(self, bucket: str, key: str, text: str) -> None:
        """Write a small UTF-8 text object (error logs). Raises ``RetryableError`` ERRL4007."""
        try:
            self._put_text(bucket, key, text)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _unavailable("ERRL4007", exc, Stage.NOTIFY) from exc

    @aws_retry
    def _put_text(self, bucket: str, key: str, text: str) -> None:
        self._s3.put_object(
            Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType="text/plain; charset=utf-8"
        )


def file_fingerprint(path: Path) -> Fingerprint:
    """Size and SHA-256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as body:
        while chunk := body.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Fingerprint(size, digest.hexdigest())


def _run_all(task: Callable[[int], None], items: range, threads: int) -> None:
    """``task(item)`` for every item on at most ``threads`` threads; the first failure stops
    the rest (those not started are cancelled) and is raised."""
    if threads == 1 or len(items) <= 1:
        for item in items:
            task(item)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="s3-part") as pool:
        futures: list[Future[None]] = [pool.submit(task, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            failed.result()


def _total_size(response: Mapping[str, Any], received: int) -> int:
    """The object's size: from Content-Range for a ranged answer, else what arrived."""
    found = _CONTENT_RANGE.fullmatch(str(response.get("ContentRange") or ""))
    return int(found.group(3)) if found else received


def _pinned(args: dict[str, Any], first: Mapping[str, Any]) -> dict[str, Any]:
    """The remaining ranges must come from the version the first one did, even where the event
    named none (an unversioned bucket): by its version id, else by its ETag."""
    pinned = dict(args)
    if "VersionId" not in pinned and first.get("VersionId") not in (None, "null"):
        pinned["VersionId"] = first["VersionId"]
    if "VersionId" not in pinned and "IfMatch" not in pinned and first.get("ETag"):
        pinned["IfMatch"] = first["ETag"]
    return pinned


def _hash_from(path: Path, offset: int, digest: Any) -> None:
    with open(path, "rb") as body:
        body.seek(offset)
        while chunk := body.read(_CHUNK):
            digest.update(chunk)


def _listed_etag(raw: str | None) -> str | None:
    return raw.strip('"') or None if raw else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as body:
        while chunk := body.read(_CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def _version_args(ref: ObjectRef) -> dict[str, Any]:
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        args["VersionId"] = ref.version_id
    elif ref.etag:
        args["IfMatch"] = f'"{ref.etag}"'
    return args


_VERSION_GONE = frozenset(
    {"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "NotFound", "PreconditionFailed", "412"}
)


@contextlib.contextmanager
def _download_errors() -> Iterator[None]:
    """S3's answers while reading the input: ERRL2002 when that version is gone (deleted or
    overwritten), ERRL2001 (retryable) when S3 stays unavailable after retries."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _VERSION_GONE:
            raise PermanentError("ERRL2002", f"S3 answered {code}", Stage.DOWNLOAD) from exc
        raise _unavailable("ERRL2001", exc, Stage.DOWNLOAD) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise _unavailable("ERRL2001", exc, Stage.DOWNLOAD) from exc


def _not_uploaded(exc: BaseException, bucket: str) -> UploadReceipt:
    """A write-once upload that S3 refused: the key exists (``written`` False), or raise."""
    code = None
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
    if code in ("PreconditionFailed", "412"):
        return UploadReceipt(written=False)
    if code == "NoSuchBucket":
        raise BucketMissingError(
            "ERRL4002", f"destination bucket {bucket} does not exist", Stage.QUARANTINE
        ) from exc
    raise _unavailable("ERRL4002", exc, Stage.QUARANTINE) from exc


def _unavailable(code: str, exc: BaseException, stage: Stage) -> RetryableError:
    if is_transient_aws_error(exc):
        message = f"S3 call failed ({type(exc).__name__}, transient)"
        return RetryableError(code, message, stage, dependency=Dependency.S3)
    return RetryableError(code, f"S3 call failed ({type(exc).__name__}, non-transient)", stage)
