"""Issue 10, points 1-5 and 7, end to end: hostile and unusual uploads through the worker on the
real stack (moto's server + the throwaway PostgreSQL)."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset

from service.local.samples import bundled_file
from service.processors.reading import fail
from tests.stackfixtures import TestStack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
ZIP_KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # EDC row 1004
TRACKING = (0x0012, 0x0071)
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")


def _zip(members: list[tuple[str, bytes]] | list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _overlapping_bomb(data: bytes, copies: int) -> bytes:
    """One stored member, listed ``copies`` times in the central directory (one local header)."""
    archive = _zip([("IM1.dcm", data)])
    end = archive.rindex(b"PK\x05\x06")
    _, _, _, _, _, cd_size, cd_offset, _ = _END.unpack_from(archive, end)
    entry = archive[cd_offset : cd_offset + cd_size]
    directory = entry * copies
    tail = _END.pack(b"PK\x05\x06", 0, 0, copies, copies, len(directory), cd_offset, 0)
    return archive[:cd_offset] + directory + tail


def _stamped(stack: TestStack, key: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(stack.read(stack.names.destination_bucket, key)))


def _run(stack: TestStack, key: str, body: bytes, **settings: str) -> dict[str, object]:
    with stack.worker(**settings):
        stack.upload(key, body)
        (job,) = stack.wait_settled(1, timeout=60)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message acknowledged")
    return job


# -- 1: overlapping members ----------------------------------------------------------------------
def test_overlapping_members_are_refused_before_anything_is_expanded(stack: TestStack) -> None:
    bomb = _overlapping_bomb(bundled_file("CT_small.dcm").read_bytes(), 300)
    assert len(bomb) < 60_000  # a few KB of directory over one member
    job = _run(stack, ZIP_KEY, bomb)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1016")
    assert stack.quarantine_keys() == [] and stack.series() == []
    assert '"job.processed"' not in stack.log.getvalue()  # refused at the directory


# -- 2: labels never carry a name ----------------------------------------------------------------
def test_members_named_after_the_patient_are_reported_by_position_only(stack: TestStack) -> None:
    ct = bundled_file("CT_small.dcm").read_bytes()
    body = _zip([("IM1.dcm", ct), ("ROE^JANE.19650312", b"notes"), ("DOE^JOHN/IM2", b"more")])
    job = _run(stack, ZIP_KEY, body)
    assert (job["status"], job["error_code"]) == ("Completed", "ERRS1013")
    assert sorted(e["member"] for e in stack.errors()) == ["#2", "#3"]
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    text = stack.read(stack.names.error_log_bucket, log_key).decode()
    (note,) = stack.notifications()
    for shown in (text, note["message"], note["subject"], stack.log.getvalue()):
        assert "19650312" not in shown and "ROE" not in shown and "DOE" not in shown


# -- 3: every record true -------------------------------------------------------------------------
@pytest.mark.parametrize("padding", [2, 512, 4097])
def test_a_padded_file_is_stamped(stack: TestStack, padding: int) -> None:
    body = bundled_file("CT_small.dcm").read_bytes() + b"\0" * padding
    job = _run(stack, CT_KEY, body)
    assert (job["status"], job["has_error"]) == ("Completed", False)
    (series,) = stack.series()
    stored = stack.read(stack.names.destination_bucket, str(job["destination_key"]))
    assert pydicom.dcmread(io.BytesIO(stored))[TRACKING].value == series["atri_uid"]
    assert stored.endswith(b"\0" * padding)


def _failing_on(calls: set[int]) -> object:
    """A splice check that refuses the n-th stamped member (1-based) for n in ``calls``."""
    seen = [0]

    def check(*_args: object) -> None:
        seen[0] += 1
        if seen[0] in calls:
            raise fail("ERRS1008", "refused by the test")

    return check


def test_series_rows_count_only_what_was_stamped(stack: TestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.processors.archive.check_spliced_head", _failing_on({2}))
    ct, mr = bundled_file("CT_small.dcm").read_bytes(), bundled_file("MR_small.dcm").read_bytes()
    job = _run(stack, ZIP_KEY, _zip([("CT.dcm", ct), ("MR.dcm", mr)]))
    assert (job["status"], job["error_code"]) == ("Completed", "ERRS1008")
    (series,) = stack.series()  # the MR series' only instance was not stamped: no row
    assert series["number_of_instances"] == 1 and job["instances_stamped"] == 1
    with _stamped(stack, str(job["destination_key"])) as out:
        assert pydicom.dcmread(io.BytesIO(out.read("CT.dcm")))[TRACKING].value == series["atri_uid"]
        assert TRACKING not in pydicom.dcmread(io.BytesIO(out.read("MR.dcm")))


def test_a_zip_in_which_nothing_could_be_stamped_fails(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.processors.archive.check_spliced_head", _failing_on({1, 2}))
    ct, mr = bundled_file("CT_small.dcm").read_bytes(), bundled_file("MR_small.dcm").read_bytes()
    job = _run(stack, ZIP_KEY, _zip([("CT.dcm", ct), ("MR.dcm", mr)]))
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL3002")
    assert stack.quarantine_keys() == [] and stack.series() == []


def test_a_single_file_that_cannot_be_stamped_fails(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise fail("ERRS1008", "refused by the test")

    monkeypatch.setattr("service.processors.instance.splice_bytes", broken)
    job = _run(stack, CT_KEY, bundled_file("CT_small.dcm").read_bytes())
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1008")
    assert stack.quarantine_keys() == [] and stack.series() == []


# -- 4: archives the labs' unzip would mishandle -------------------------------------------------
def test_two_members_with_one_name_are_flagged_by_position(stack: TestStack) -> None:
    ct, mr = bundled_file("CT_small.dcm").read_bytes(), bundled_file("MR_small.dcm").read_bytes()
    with pytest.warns(UserWarning, match="Duplicate name"):
        body = _zip([("IM1.dcm", ct), ("IM1.dcm", mr)])
    job = _run(stack, ZIP_KEY, body)
    assert (job["status"], job["error_code"]) == ("Completed", "ERRS1019")
    assert [(e["error_code"], e["member"]) for e in stack.errors()] == [("ERRS1019", "#2.dcm")]
    with _stamped(stack, str(job["destination_key"])) as out:
        assert [i.filename for i in out.infolist()] == ["IM1.dcm", "IM1.dcm"]


def test_a_symbolic_link_member_refuses_the_archive(stack: TestStack) -> None:
    link = zipfile.ZipInfo("IM2.dcm")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    body = _zip([("IM1.dcm", bundled_file("CT_small.dcm").read_bytes()), (link, b"/etc/passwd")])
    job = _run(stack, ZIP_KEY, body)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1010")
    assert stack.quarantine_keys() == []


# -- 5: memory -----------------------------------------------------------------------------------
def test_a_large_irregular_file_fails_cleanly_past_the_in_memory_cap(
    stack: TestStack, tmp_path: Path
) -> None:
    dataset = pydicom.dcmread(bundled_file("CT_small.dcm"))
    dataset.Rows, dataset.Columns = 2048, 2048  # 8 MB of native pixels, 16 bits
    dataset.PixelData = b"\1\2" * (2048 * 2048)
    dataset.preamble = None
    dataset.file_meta = FileMetaDataset()
    raw = tmp_path / "raw.dcm"  # no preamble, no file meta: only the full rewrite can stamp it
    dataset.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    body = raw.read_bytes()
    assert body[128:132] != b"DICM" and len(body) > 8 * 1024**2
    job = _run(stack, CT_KEY, body, MAX_IN_MEMORY_BYTES=str(2 * 1024**2))
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1020")
    assert stack.quarantine_keys() == []


# -- 7: no false alarms --------------------------------------------------------------------------
def test_a_finder_zip_with_system_files_completes_without_error(stack: TestStack) -> None:
    ct = bundled_file("CT_small.dcm").read_bytes()
    body = _zip(
        [
            ("export/IM1.dcm", ct),
            ("__MACOSX/export/._IM1.dcm", b"\0\5\26\7AppleDouble"),
            ("export/.DS_Store", b"\0\0\0\1Bud1"),
            ("DICOMDIR", b"\0" * 128 + b"DICM"),
        ]
    )
    job = _run(stack, ZIP_KEY, body)
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", False, None)
    assert (job["members"], job["instances_stamped"], job["system_files"]) == (4, 1, 3)
    assert stack.errors() == []
    (note,) = stack.notifications()
    assert "completed" in note["subject"]
    with _stamped(stack, str(job["destination_key"])) as out:
        assert out.read("__MACOSX/export/._IM1.dcm") == b"\0\5\26\7AppleDouble"
        assert out.read("DICOMDIR") == b"\0" * 128 + b"DICM"
