"""Issue 14 part 2: a zip is stamped while it arrives and sent while it is written, on moto's
server and the throwaway PostgreSQL. The object equals what the two-pass path writes."""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

import botocore.exceptions
import pytest

from service.errors import RetryableError, Stage
from service.fingerprint import Fingerprint
from service.local.samples import bundled_file
from service.processors import process_arriving_zip_upload, process_upload
from service.processors.base import SeriesKey, SeriesSummary
from service.s3io import ObjectStore
from service.s3stream import ArrivingDownload, StreamingUpload
from tests.stackfixtures import TestStack
from tests.test_processors import make_large_file

KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # EDC row 1004
MB = 1024**2
SMALL_PARTS = {"S3_PART_SIZE_MB": "5", "S3_TRANSFER_THREADS": "4"}


def _series_zip(root: Path) -> Path:
    """Three 4 MB instances of three series, a small one twice (one series), a text file."""
    archive = root / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for n in range(3):
            member = root / f"m{n}.dcm"
            make_large_file(member, 4 * MB)
            out.write(member, f"series/IM{n:04}.dcm")
        out.write(bundled_file("CT_small.dcm"), "small/IM0001.dcm")
        out.write(bundled_file("CT_small.dcm"), "small/IM0002.dcm")
        out.writestr("notes.txt", b"not dicom")
    return archive


def test_a_zip_is_stamped_while_it_arrives_and_equals_the_two_pass_output(
    stack: TestStack, tmp_path: Path
) -> None:
    archive = _series_zip(tmp_path)
    with stack.worker(**SMALL_PARTS):
        stack.upload(KEY, archive)
        (job,) = stack.wait_settled(1, timeout=60)
    assert job["status"] == "Completed" and job["error_code"] == "ERRS1013"  # the text member
    stored = stack.read(stack.names.destination_bucket, job["destination_key"])
    rows = stack.series()
    assert sorted(row["number_of_instances"] for row in rows) == [1, 1, 1, 2]
    uids = {SeriesKey(row["study_uid"], row["series_uid"]): row["atri_uid"] for row in rows}

    def allocate(series: list[SeriesSummary]) -> dict[SeriesKey, str]:
        return {summary.key: uids[summary.key] for summary in series}

    expected = tmp_path / "expected.zip"
    process_upload(archive, expected, allocate)
    assert stored == expected.read_bytes()
    # The ATRIUIDs follow the members' order, as the two-pass path allocates them.
    assert [row["atri_uid"] for row in rows] == sorted((row["atri_uid"] for row in rows), key=_row_id)
    # The integrity record is on the row; the metadata has what was known when the upload began.
    source_sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (job["source_bytes"], job["source_sha256"]) == (archive.stat().st_size, source_sha)
    assert (job["quarantine_bytes"], job["quarantine_sha256"]) == (
        len(stored),
        hashlib.sha256(stored).hexdigest(),
    )
    head = stack.client("s3").head_object(Bucket=stack.names.destination_bucket, Key=job["destination_key"])
    assert head["Metadata"]["source-bytes"] == str(archive.stat().st_size)
    assert "sha256" not in head["Metadata"] and "bytes" not in head["Metadata"]
    assert head["ETag"].strip('"').endswith(f"-{-(-len(stored) // (5 * MB))}")
    assert (job["members"], job["instances_stamped"]) == (6, 5)
    uploads = stack.client("s3").list_multipart_uploads(Bucket=stack.names.destination_bucket)
    assert uploads.get("Uploads", []) == []


def _row_id(atri_uid: str) -> int:
    return int(atri_uid.rsplit(".", 1)[1])


def test_a_hostile_zip_arriving_is_refused_and_nothing_reaches_quarantine(
    stack: TestStack, tmp_path: Path
) -> None:
    """Two central directory entries share one member's bytes: refused from the directory."""
    member = tmp_path / "m.dcm"
    make_large_file(member, 6 * MB)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        out.write(member, "IM0001.dcm")
        info = out.infolist()[0]
        twin = zipfile.ZipInfo("IM0002.dcm", info.date_time)
        twin.header_offset, twin.CRC = info.header_offset, info.CRC
        twin.compress_size = twin.file_size = info.file_size
        out.filelist.append(twin)  # listed twice, stored once
    with stack.worker(**SMALL_PARTS):
        stack.upload(KEY, archive)
        (job,) = stack.wait_settled(1, timeout=60)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1016")
    assert job["destination_key"] is None and stack.series() == []
    assert stack.quarantine_keys() == []
    uploads = stack.client("s3").list_multipart_uploads(Bucket=stack.names.destination_bucket)
    assert uploads.get("Uploads", []) == []


def test_the_input_overwritten_while_it_arrives_fails_and_aborts_the_upload(
    stack: TestStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _series_zip(tmp_path)
    real = ObjectStore._range_into
    calls = {"n": 0}

    def gone_after_the_tail(
        self: ObjectStore, pinned: dict[str, object], fd: int, start: int, end: int
    ) -> None:
        calls["n"] += 1  # the central directory's range lands; the next one finds the version gone
        if calls["n"] > 1:
            error = {"Error": {"Code": "PreconditionFailed", "Message": "changed"}}
            raise botocore.exceptions.ClientError(error, "GetObject")  # type: ignore[arg-type]
        real(self, pinned, fd, start, end)

    monkeypatch.setattr(ObjectStore, "_range_into", gone_after_the_tail)
    with stack.worker(**SMALL_PARTS):
        stack.upload(KEY, archive)
        (job,) = stack.wait_settled(1, timeout=60)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL2002")
    assert stack.quarantine_keys() == [] and stack.series() == []
    uploads = stack.client("s3").list_multipart_uploads(Bucket=stack.names.destination_bucket)
    assert uploads.get("Uploads", []) == []


# -- the pieces ---------------------------------------------------------------------------------
def test_an_arriving_download_lands_the_tail_first_and_hashes_in_order(tmp_path: Path) -> None:
    data = os.urandom(10 * 1000 + 7)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.pwrite(fd, data[:1000], 0)
    os.ftruncate(fd, len(data))
    order: list[int] = []
    release = threading.Event()

    def fetch(start: int, end: int) -> None:
        order.append(start)
        if start != 10_000:  # the tail lands at once; the rest waits for the test
            release.wait(5)
        os.pwrite(fd, data[start:end], start)

    download = ArrivingDownload(fd, len(data), 1000, 1000, fetch, threads=1)
    download.wait(10_000, len(data))  # the central directory's range, before the others
    assert order[0] == 10_000
    release.set()
    download.wait(0, len(data))
    assert download.fingerprint() == Fingerprint(len(data), hashlib.sha256(data).hexdigest())
    assert order == [10_000, *range(1000, 10_000, 1000)]
    download.close()  # closes the file too


def test_a_failed_range_is_raised_to_whoever_waits_for_it(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 3000)

    def fetch(start: int, end: int) -> None:
        if start == 2000:
            raise RuntimeError("range refused")

    download = ArrivingDownload(fd, 3000, 1000, 1000, fetch, threads=2)
    with pytest.raises(RuntimeError, match="range refused"):
        download.wait(0, 3000)
    with pytest.raises(RuntimeError):
        download.fingerprint()
    download.close()  # closes the file too


def test_a_streaming_upload_sends_each_part_once_it_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "out"
    data = os.urandom(25)
    path.write_bytes(data)
    sent: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def send(number: int, fd: int, offset: int, length: int) -> dict[str, object]:
        with lock:
            sent.append((number, os.pread(fd, length, offset)))
        return {"PartNumber": number}

    completed: list[list[dict[str, object]]] = []
    upload = StreamingUpload(
        os.open(path, os.O_RDONLY), 10, 2, send, lambda parts: completed.append(parts) or "sum", lambda: None
    )
    upload.advance(9)
    upload.advance(21)  # part 1 (0-9) and part 2 (10-19) are final
    output, checksum = upload.finish(25)
    assert sorted(sent) == [(1, data[:10]), (2, data[10:20]), (3, data[20:])]
    assert completed == [[{"PartNumber": 1}, {"PartNumber": 2}, {"PartNumber": 3}]]
    assert output == Fingerprint(25, hashlib.sha256(data).hexdigest()) and checksum == "sum"


def test_s3_unavailable_while_a_zip_arrives_is_retryable_not_a_corrupt_zip(tmp_path: Path) -> None:
    """A transient fault reaching the zip reader through the gate keeps its code and kind."""
    archive = _series_zip(tmp_path)
    size = archive.stat().st_size
    tail = size - 64 * 1024

    def gate(start: int, end: int) -> None:
        if start < tail and end > 5 * MB:  # the central directory and the first part are there
            raise RetryableError("ERRL2001", "S3 call failed (transient)", Stage.DOWNLOAD)

    with pytest.raises(RetryableError) as info:
        process_arriving_zip_upload(
            archive,
            tmp_path / "out.zip",
            lambda series: {s.key: "1.2" for s in series},
            gate=gate,
            on_written=lambda _n: None,
        )
    assert info.value.code == "ERRL2001"
    assert not (tmp_path / "out.zip").exists()
