"""Issue 14 part 6: a large single DICOM file is stamped by sending its new head only; the
unchanged bytes are copied inside S3 (UploadPartCopy), on moto's server and the throwaway
PostgreSQL. The result is the local splice's output byte for byte."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pydicom
import pytest

from service import crc32
from service.processors import process_upload
from service.processors.base import SeriesKey, SeriesSummary
from service.s3io import ObjectRef, ObjectStore
from service.s3splice import MAX_PART, MAX_PARTS, MIN_PART, HeadOnlyRefused, RangedObject, copy_ranges
from tests.stackfixtures import TestStack
from tests.test_processors import make_large_file

KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
MB = 1024**2


def _events(stack: TestStack, name: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in stack.log.getvalue().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == name]


def _local_stamp(src: Path, dst: Path, uid: str) -> None:
    """The local path's output for the same file and ATRIUID."""

    def allocate(series: list[SeriesSummary]) -> dict[SeriesKey, str]:
        return {summary.key: uid for summary in series}

    process_upload(src, dst, allocate)


def test_a_large_file_is_stamped_in_s3_and_equals_the_local_splice(stack: TestStack, tmp_path: Path) -> None:
    source = tmp_path / "large.dcm"
    make_large_file(source, 40 * MB)
    with stack.worker(S3_COPY_MIN_MB="16", S3_PART_SIZE_MB="5", S3_TRANSFER_THREADS="4"):
        stack.upload(KEY, source)
        (job,) = stack.wait_settled(1, timeout=60)
    assert job["status"] == "Completed" and job["error_code"] is None
    stored = stack.read(stack.names.destination_bucket, job["destination_key"])
    (series,) = stack.series()
    expected = tmp_path / "expected.dcm"
    _local_stamp(source, expected, series["atri_uid"])
    assert stored == expected.read_bytes()
    assert pydicom.dcmread(expected, stop_before_pixels=True)[0x0012, 0x0071].value == series["atri_uid"]
    # Only the head and the first part came through the worker; the rest was copied inside S3.
    (stamped,) = _events(stack, "job.stamped_in_s3")
    assert int(stamped["bytes_read"]) < 7 * MB and int(stamped["bytes_sent"]) < 64 * 1024  # type: ignore[call-overload]
    # The integrity record: sizes, no SHA-256 (the bytes were never all here), S3's CRC-32.
    assert (job["source_bytes"], job["quarantine_bytes"]) == (source.stat().st_size, len(stored))
    assert job["source_sha256"] is None and job["quarantine_sha256"] is None
    assert job["quarantine_s3_checksum"] == f"crc32:{crc32.crc32_b64(stored)}"
    head = stack.client("s3").head_object(
        Bucket=stack.names.destination_bucket, Key=job["destination_key"], ChecksumMode="ENABLED"
    )
    assert head["Metadata"]["bytes"] == str(len(stored)) and "sha256" not in head["Metadata"]
    assert head["ETag"].strip('"').endswith(f"-{len(copy_ranges(5 * MB, source.stat().st_size, 4)) + 1}")
    assert (job["members"], job["instances_stamped"]) == (1, 1)
    assert (
        stack.client("s3").list_multipart_uploads(Bucket=stack.names.destination_bucket).get("Uploads", [])
        == []
    )


def test_a_file_whose_structure_reaches_far_into_it_takes_the_local_path(
    stack: TestStack, tmp_path: Path
) -> None:
    """Trailing zero padding of 3 MB: the walk would read it all to know it is padding."""
    source = tmp_path / "padded.dcm"
    make_large_file(source, 20 * MB)
    with open(source, "ab") as fp:
        fp.write(b"\0" * 3 * MB)
    with stack.worker(S3_COPY_MIN_MB="16", S3_PART_SIZE_MB="5"):
        stack.upload(KEY, source)
        (job,) = stack.wait_settled(1, timeout=60)
    assert job["status"] == "Completed" and job["error_code"] is None
    assert job["source_sha256"] is not None  # downloaded and hashed: the local path
    assert [e["reason"] for e in _events(stack, "job.stamp_in_s3_declined")] == ["HeadOnlyRefused"]
    assert _events(stack, "job.stamped_in_s3") == []
    stored = stack.read(stack.names.destination_bucket, job["destination_key"])
    (series,) = stack.series()
    expected = tmp_path / "expected.dcm"
    _local_stamp(source, expected, series["atri_uid"])
    assert stored == expected.read_bytes()


def test_a_large_zip_is_not_stamped_in_s3(stack: TestStack, tmp_path: Path) -> None:
    import zipfile

    member = tmp_path / "member.dcm"
    make_large_file(member, 20 * MB)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        out.write(member, "IM0001.dcm")
    with stack.worker(S3_COPY_MIN_MB="16", S3_PART_SIZE_MB="5"):
        stack.upload("subjecteventcrffile/2/102/CT Scan/v1.zip", archive)
        (job,) = stack.wait_settled(1, timeout=60)
    assert job["status"] == "Completed" and job["instances_stamped"] == 1
    assert job["source_sha256"] is not None and _events(stack, "job.stamped_in_s3") == []


def test_the_copy_stays_on_the_version_read_when_the_input_is_overwritten(
    stack: TestStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = stack.client("s3")
    bucket = stack.names.source_bucket
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    source = tmp_path / "large.dcm"
    make_large_file(source, 20 * MB)
    key = "in/large.dcm"
    version = s3.put_object(Bucket=bucket, Key=key, Body=source.read_bytes())["VersionId"]
    store = ObjectStore(s3, part_size=5 * MB, transfer_threads=3)
    ranged = store.open_ranged(ObjectRef(bucket, key))
    assert ranged.pinned["VersionId"] == version  # pinned although the reference named none
    s3.put_object(Bucket=bucket, Key=key, Body=b"overwritten")
    head = b"NEW HEAD"
    receipt = store.upload_spliced(ranged, head, 1000, stack.names.destination_bucket, "quarantine/x.dcm", {})
    assert receipt.written and receipt.s3_checksum is not None
    stored = stack.read(stack.names.destination_bucket, "quarantine/x.dcm")
    assert stored == head + source.read_bytes()[1000:]
    assert receipt.s3_checksum == f"crc32:{crc32.crc32_b64(stored)}"
    # Write-once: a second upload to the key is refused, nothing is left open.
    again = store.upload_spliced(
        ranged, b"OTHER", 1000, stack.names.destination_bucket, "quarantine/x.dcm", {}
    )
    assert not again.written
    assert s3.list_multipart_uploads(Bucket=stack.names.destination_bucket).get("Uploads", []) == []


def test_a_file_within_the_first_part_is_one_part_and_nothing_to_copy(stack: TestStack) -> None:
    s3 = stack.client("s3")
    body = os.urandom(3 * MB)
    s3.put_object(Bucket=stack.names.source_bucket, Key="in/small", Body=body)
    store = ObjectStore(s3, part_size=5 * MB, transfer_threads=4)
    ranged = store.open_ranged(ObjectRef(stack.names.source_bucket, "in/small"))
    receipt = store.upload_spliced(ranged, b"HEAD", 100, stack.names.destination_bucket, "quarantine/s", {})
    assert receipt.written
    assert stack.read(stack.names.destination_bucket, "quarantine/s") == b"HEAD" + body[100:]


def test_a_failing_part_copy_aborts_the_upload(
    stack: TestStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = stack.client("s3")
    body = os.urandom(24 * MB)
    s3.put_object(Bucket=stack.names.source_bucket, Key="in/x", Body=body)
    store = ObjectStore(s3, part_size=5 * MB, transfer_threads=2)
    ranged = store.open_ranged(ObjectRef(stack.names.source_bucket, "in/x"))
    real = s3.upload_part_copy

    def second_copy_refused(**kwargs: object) -> object:
        if kwargs["PartNumber"] == 3:
            raise ValueError("refused")
        return real(**kwargs)

    monkeypatch.setattr(s3, "upload_part_copy", second_copy_refused)
    with pytest.raises(ValueError):
        store.upload_spliced(ranged, b"H", 10, stack.names.destination_bucket, "quarantine/y", {})
    assert s3.list_multipart_uploads(Bucket=stack.names.destination_bucket).get("Uploads", []) == []
    assert stack.keys(stack.names.destination_bucket, "quarantine/") == []


# -- the pieces ---------------------------------------------------------------------------------
def test_crc32_combine_matches_zlib_over_the_concatenation() -> None:
    pieces = [b"", b"a", os.urandom(1000), os.urandom(MB + 3), b"tail"]
    for first in pieces:
        for second in pieces:
            combined = crc32.crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
            assert combined == zlib.crc32(first + second)
    assert crc32.decode(crc32.crc32_b64(b"xyz")) == zlib.crc32(b"xyz")


@pytest.mark.parametrize(
    ("start", "size", "threads"),
    [
        (5 * MB, 5 * MB, 4),
        (5 * MB, 5 * MB + 1, 4),
        (8 * MB, 40 * MB, 10),
        (8 * MB, 200 * MB, 10),
        (1, 60_000 * MB, 10),
    ],
)
def test_copy_ranges_cover_the_rest_in_parts_s3_accepts(start: int, size: int, threads: int) -> None:
    ranges = copy_ranges(start, size, threads)
    assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]
    if ranges:
        assert ranges[0][0] == start and ranges[-1][1] == size
    assert all(end - begin >= MIN_PART for begin, end in ranges[:-1])
    assert all(end - begin <= MAX_PART for begin, end in ranges)
    assert len(ranges) < MAX_PARTS and (len(ranges) <= threads or ranges[0][1] - ranges[0][0] == MAX_PART)


def test_ranged_reads_span_the_held_part_and_fetched_blocks_within_a_budget() -> None:
    data = os.urandom(3 * MB)
    fetched: list[tuple[int, int]] = []

    def fetch(start: int, end: int) -> bytes:
        fetched.append((start, end))
        return data[start : end + 1]

    reader = RangedObject(fetch, {}, len(data), data[: MB + 5], max_fetches=2)
    reader.seek(MB - 10)
    assert reader.read(100) == data[MB - 10 : MB + 90]  # across the held part's end
    reader.seek(-3, os.SEEK_END)
    assert reader.read() == data[-3:] and reader.read(10) == b""
    assert len(fetched) == 2
    reader.seek(2 * MB)
    with pytest.raises(HeadOnlyRefused):
        reader.read(8)
    assert reader.range_bytes(MB, 2 * MB) == data[MB : 2 * MB]  # not budgeted
