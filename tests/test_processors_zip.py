"""Zip uploads: member-by-member stamping, carried-over members and hostile archives."""

from __future__ import annotations

import io
import os
import random
import signal
import struct
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from service.errors import PermanentError
from service.processors import DEFAULT_TRACKING_TAG, ProcessResult, process_upload
from service.processors.base import SeriesKey, SeriesSummary, ZipLimits
from service.processors.directory import ARCHIVE_CODES, INSTANCE_CODES

TRACKING = DEFAULT_TRACKING_TAG
README = b"Scans for subject 0042, visit 2.\r\nUploaded by the site coordinator.\r\n"
DATE = (2024, 5, 17, 10, 30, 42)
Member = tuple[str, bytes | Path, int]  # name, content, compress_type


class Allocator:
    """Records every call and hands out one UID per series."""

    def __init__(self) -> None:
        self.calls: list[tuple[SeriesSummary, ...]] = []

    def __call__(self, series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]:
        self.calls.append(tuple(series))
        return {summary.key: f"2.25.1000.{n}" for n, summary in enumerate(series, start=1)}


def data(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(str(path))


MR700 = sorted(data("dicomdirtests/98892003/MR700/4467").parent.iterdir())


def read(path_or_bytes: Path | bytes) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(path_or_bytes, bytes):
            return pydicom.dcmread(pydicom.filebase.DicomBytesIO(path_or_bytes), force=True)
        return pydicom.dcmread(path_or_bytes, force=True)


def build_zip(path: Path, members: Sequence[Member]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content, method in members:
            info = zipfile.ZipInfo(name, DATE)
            info.compress_type = method
            info.external_attr = 0o640 << 16
            payload = content.read_bytes() if isinstance(content, Path) else content
            archive.writestr(info, payload)
    return path


def run(src: Path, tmp_path: Path, **kwargs: object) -> tuple[Path, Allocator, ProcessResult]:
    dst = tmp_path / "out.zip"
    allocate = Allocator()
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    result = process_upload(src, dst, allocate, work_dir=work, **kwargs)  # type: ignore[arg-type]
    assert list(work.iterdir()) == []  # every temporary file is gone
    return dst, allocate, result


def rejected(src: Path, tmp_path: Path, **kwargs: object) -> str:
    """Run an upload that must fail as a whole; return its code."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    dst = tmp_path / "out.zip"
    allocate = Allocator()
    with pytest.raises(PermanentError) as caught:
        process_upload(src, dst, allocate, work_dir=work, **kwargs)  # type: ignore[arg-type]
    assert not dst.exists()
    assert list(work.iterdir()) == []
    assert allocate.calls == []
    return caught.value.code


# --- the happy path ----------------------------------------------------------------------------


@pytest.fixture
def series_zip(tmp_path: Path) -> Path:
    members: list[Member] = [("study/", b"", zipfile.ZIP_STORED)]
    members += [(f"study/MR700/{p.name}", p, zipfile.ZIP_DEFLATED) for p in MR700]
    members.insert(3, ("study/README.txt", README, zipfile.ZIP_DEFLATED))
    members.append(("study/extra/MR_small.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED))
    return build_zip(tmp_path / "upload.zip", members)


def test_series_zip_is_stamped_member_by_member(series_zip: Path, tmp_path: Path) -> None:
    dst, allocate, result = run(series_zip, tmp_path)
    with zipfile.ZipFile(series_zip) as before, zipfile.ZipFile(dst) as after:
        assert after.testzip() is None
        inputs, outputs = before.infolist(), after.infolist()
        assert [i.filename for i in outputs] == [i.filename for i in inputs]
        assert [i.date_time for i in outputs] == [DATE] * len(inputs)
        assert [i.compress_type for i in outputs] == [i.compress_type for i in inputs]
        assert [i.external_attr for i in outputs] == [i.external_attr for i in inputs]
        assert after.read("study/README.txt") == README
        expected = {s.key: f"2.25.1000.{n}" for n, s in enumerate(allocate.calls[0], start=1)}
        for info in inputs:
            if not info.filename.endswith(("/", ".txt")):
                original, stamped = read(before.read(info)), read(after.read(info.filename))
                key = SeriesKey(original.StudyInstanceUID, original.SeriesInstanceUID)
                assert stamped[TRACKING].value == expected[key]
                assert stamped.PixelData == original.PixelData

    [call] = allocate.calls
    mr700, mr_small = read(MR700[0]), read(data("MR_small.dcm"))
    assert [s.key for s in call] == [
        SeriesKey(mr700.StudyInstanceUID, mr700.SeriesInstanceUID),
        SeriesKey(mr_small.StudyInstanceUID, mr_small.SeriesInstanceUID),
    ]
    assert [s.number_of_instances for s in call] == [7, 1]
    assert call[0].series_number == int(mr700.SeriesNumber)
    assert result.series == call
    assert result.instances_stamped == 8
    assert result.members == 10
    assert result.fallbacks == 0
    assert result.system_files == 0
    [issue] = result.issues
    assert (issue.member, issue.position, issue.code) == ("study/README.txt", 4, "ERRS1013")


def test_system_files_are_carried_over_silently_and_broken_members_with_issues(tmp_path: Path) -> None:
    truncated = data("MR_truncated.dcm")
    src = build_zip(
        tmp_path / "mixed.zip",
        [
            ("__MACOSX/._MR_small.dcm", b"\0\5\26\7AppleDouble", zipfile.ZIP_DEFLATED),
            (".DS_Store", b"\0\0\0\1Bud1", zipfile.ZIP_STORED),
            ("cut.dcm", truncated, zipfile.ZIP_DEFLATED),
            ("good.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
            ("big_endian.dcm", data("MR_small_bigendian.dcm"), zipfile.ZIP_STORED),
        ],
    )
    dst, _, result = run(src, tmp_path)
    assert [(i.member, i.position, i.code) for i in result.issues] == [("cut.dcm", 3, "ERRS1002")]
    assert result.system_files == 2
    assert result.instances_stamped == 2
    assert result.fallbacks == 1
    with zipfile.ZipFile(dst) as after:
        assert after.read("cut.dcm") == truncated.read_bytes()
        assert after.read(".DS_Store") == b"\0\0\0\1Bud1"
        assert after.read("__MACOSX/._MR_small.dcm") == b"\0\5\26\7AppleDouble"
        assert read(after.read("big_endian.dcm"))[TRACKING].value.startswith("2.25.1000.")


def test_each_member_keeps_its_compression_method(tmp_path: Path) -> None:
    src = build_zip(
        tmp_path / "methods.zip",
        [
            ("stored.dcm", data("CT_small.dcm"), zipfile.ZIP_STORED),
            ("deflated.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
            ("stored.txt", README, zipfile.ZIP_STORED),
            ("deflated.txt", README, zipfile.ZIP_DEFLATED),
        ],
    )
    dst, _, result = run(src, tmp_path)
    assert result.instances_stamped == 2
    with zipfile.ZipFile(dst) as after:
        methods = {i.filename: i.compress_type for i in after.infolist()}
        assert after.read("stored.txt") == after.read("deflated.txt") == README
    assert methods == {
        "stored.dcm": zipfile.ZIP_STORED,
        "deflated.dcm": zipfile.ZIP_DEFLATED,
        "stored.txt": zipfile.ZIP_STORED,
        "deflated.txt": zipfile.ZIP_DEFLATED,
    }


def test_member_issues_never_quote_header_values(tmp_path: Path) -> None:
    source = read(data("CT_small.dcm"))
    source.PatientName = "Doe^Jane"
    del source.StudyInstanceUID
    no_uid = tmp_path / "no_uid.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source.save_as(no_uid)
    src = build_zip(
        tmp_path / "phi.zip",
        [("no_uid.dcm", no_uid, 8), ("good.dcm", data("MR_small.dcm"), 8)],
    )
    _, _, result = run(src, tmp_path)
    [issue] = result.issues
    assert (issue.member, issue.code) == ("no_uid.dcm", "ERRS1014")
    assert "Doe" not in issue.message


def test_zip_with_only_broken_dicom_is_rejected_with_their_code(tmp_path: Path) -> None:
    src = build_zip(tmp_path / "bad.zip", [("cut.dcm", data("MR_truncated.dcm"), 8)])
    assert rejected(src, tmp_path) == "ERRS1002"


@pytest.mark.parametrize(
    "members",
    [
        [("README.txt", README, zipfile.ZIP_DEFLATED), ("notes.csv", b"a,b\n1,2\n", 0)],
        [("folder/", b"", zipfile.ZIP_STORED)],
        [],
    ],
)
def test_zip_without_dicom_is_errs1011(members: list[Member], tmp_path: Path) -> None:
    assert rejected(build_zip(tmp_path / "text.zip", members), tmp_path) == "ERRS1011"


def test_single_dicom_upload_named_zip_is_still_dicom(tmp_path: Path) -> None:
    src = tmp_path / "upload.zip"
    src.write_bytes(data("CT_small.dcm").read_bytes())
    dst, _, result = run(src, tmp_path)
    assert result.members == 1
    assert read(dst)[TRACKING].value == "2.25.1000.1"


# --- hostile archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.dcm",
        "/abs.dcm",
        "C:\\temp\\x.dcm",
        "C:x.dcm",
        "\\\\server\\x.dcm",
        "a/../../x.dcm",
        "a\\..\\..\\x.dcm",
    ],
)
def test_escaping_member_names_are_errs1010(name: str, tmp_path: Path) -> None:
    src = build_zip(
        tmp_path / "evil.zip",
        [("ok.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED), (name, b"payload", 0)],
    )
    with zipfile.ZipFile(src) as archive:
        assert archive.namelist()[1] == name  # zipfile kept the hostile name as given
    assert rejected(src, tmp_path) == "ERRS1010"


def test_too_many_members_is_errs1016(tmp_path: Path) -> None:
    members = [(f"{n}.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED) for n in range(4)]
    src = build_zip(tmp_path / "many.zip", members)
    assert rejected(src, tmp_path, limits=ZipLimits(max_members=3)) == "ERRS1016"


def test_total_expanded_size_limit_is_errs1016(tmp_path: Path) -> None:
    members = [(f"{n}.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED) for n in range(3)]
    src = build_zip(tmp_path / "big.zip", members)
    limit = 2 * data("MR_small.dcm").stat().st_size
    assert rejected(src, tmp_path, limits=ZipLimits(max_total_uncompressed=limit)) == "ERRS1016"


def test_ratio_bomb_is_errs1016(tmp_path: Path) -> None:
    src = tmp_path / "bomb.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MR_small.dcm", data("MR_small.dcm").read_bytes())
        with archive.open("zeros.dcm", "w") as member:
            zeros = bytes(1024 * 1024)
            for _ in range(50):
                member.write(zeros)
    assert src.stat().st_size < 1024 * 1024
    assert rejected(src, tmp_path) == "ERRS1016"


def test_lying_size_header_cannot_expand_past_it(tmp_path: Path) -> None:
    src = tmp_path / "liar.zip"
    payload = os.urandom(64 * 1024)
    with zipfile.ZipFile(src, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.dcm", payload)
    raw = bytearray(src.read_bytes())
    # Declare 1 KiB in both the local header and the central directory.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature) + offset
        raw[at : at + 4] = (1024).to_bytes(4, "little")
    src.write_bytes(bytes(raw))
    assert rejected(src, tmp_path) in {"ERRS1015", "ERRS1016"}


def test_nested_zip_by_name_is_errs1017(tmp_path: Path) -> None:
    inner = build_zip(tmp_path / "inner.zip", [("a.dcm", data("MR_small.dcm"), 8)])
    src = build_zip(
        tmp_path / "outer.zip",
        [("a.dcm", data("MR_small.dcm"), 8), ("more/inner.ZIP", inner, zipfile.ZIP_STORED)],
    )
    assert rejected(src, tmp_path) == "ERRS1017"


def test_nested_zip_by_content_is_errs1017(tmp_path: Path) -> None:
    inner = build_zip(tmp_path / "inner.zip", [("a.dcm", data("MR_small.dcm"), 8)])
    src = build_zip(
        tmp_path / "outer.zip",
        [("a.dcm", data("MR_small.dcm"), 8), ("images.bin", inner, zipfile.ZIP_DEFLATED)],
    )
    assert rejected(src, tmp_path) == "ERRS1017"


def test_encrypted_member_is_errs1018(tmp_path: Path) -> None:
    src = build_zip(tmp_path / "locked.zip", [("a.dcm", data("MR_small.dcm"), 8)])
    raw = bytearray(src.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.find(signature) + offset] |= 0x01
    src.write_bytes(bytes(raw))
    assert rejected(src, tmp_path) == "ERRS1018"


def test_corrupt_zip_is_errs1015(tmp_path: Path) -> None:
    src = tmp_path / "corrupt.zip"
    src.write_bytes(b"PK\x03\x04" + random.Random(7).randbytes(4096))
    assert rejected(src, tmp_path) == "ERRS1015"


def test_bad_crc_of_a_deflated_member_is_errs1015(tmp_path: Path) -> None:
    src = build_zip(tmp_path / "crc.zip", [("a.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED)])
    with zipfile.ZipFile(src) as archive:
        info = archive.getinfo("a.dcm")
    raw = bytearray(src.read_bytes())
    raw[info.header_offset + 14 : info.header_offset + 18] = b"\0\0\0\0"  # local header CRC
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 16 : central + 20] = b"\0\0\0\0"  # central directory CRC
    src.write_bytes(bytes(raw))
    assert rejected(src, tmp_path) == "ERRS1015"


def test_damaged_stored_member_keeps_a_crc_that_exposes_the_damage(tmp_path: Path) -> None:
    # Stored members are not re-read to verify their CRC (zipraw): the damage passes through,
    # and so does a CRC that does not match it, so the labs' unzip still reports it.
    src = build_zip(tmp_path / "crc.zip", [("a.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED)])
    raw = bytearray(src.read_bytes())
    raw[raw.find(b"PK\x03\x04") + 30 + len("a.dcm") + 5000] ^= 0xFF  # flip a pixel byte
    src.write_bytes(bytes(raw))
    dst, _, result = run(src, tmp_path)
    assert result.instances_stamped == 1
    with zipfile.ZipFile(dst) as out:
        assert out.testzip() == "a.dcm"


def test_stamped_stored_members_carry_correct_crcs(tmp_path: Path) -> None:
    src = build_zip(
        tmp_path / "ok.zip",
        [("a.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED), ("b.txt", b"notes", zipfile.ZIP_STORED)],
    )
    dst, _, result = run(src, tmp_path)
    assert result.instances_stamped == 1
    with zipfile.ZipFile(dst) as out:
        assert out.testzip() is None
        assert [i.compress_type for i in out.infolist()] == [zipfile.ZIP_STORED, zipfile.ZIP_STORED]


# --- bounded memory ----------------------------------------------------------------------------


def test_large_stored_member_streams_in_bounded_memory(tmp_path: Path) -> None:
    from tests.test_processors import make_large_file

    large = tmp_path / "large.dcm"
    make_large_file(large, 64 * 1024 * 1024)
    src = tmp_path / "large.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_STORED) as archive:
        archive.write(large, "large.dcm")
        archive.write(data("MR_small.dcm"), "small.dcm")
    large.unlink()
    tracemalloc.start()
    try:
        dst, _, result = run(src, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.instances_stamped == 2
    assert peak < 20 * 1024 * 1024, peak
    with zipfile.ZipFile(dst) as after:
        assert [i.compress_type for i in after.infolist()] == [zipfile.ZIP_STORED] * 2
    src.unlink()  # pytest keeps recent tmp_path directories: do not leave them behind
    dst.unlink()


# --- robustness --------------------------------------------------------------------------------

_SMALL_ZIP_MEMBERS: list[Member] = [
    ("a.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
    ("b.txt", README, zipfile.ZIP_STORED),
    ("c.dcm", data("CT_small.dcm"), zipfile.ZIP_STORED),  # the in-place (zipraw) path
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_damaged_zips_only_raise_permanent_errors(flips: list[tuple[int, int]], tmp_path: Path) -> None:
    original = build_zip(tmp_path / "fuzz_src.zip", _SMALL_ZIP_MEMBERS).read_bytes()
    damaged = bytearray(original)
    for offset, value in flips:
        damaged[offset % len(damaged)] = value
    src = tmp_path / "fuzz.zip"
    src.write_bytes(bytes(damaged))
    dst = tmp_path / "fuzz_out.zip"
    try:
        result = process_upload(src, dst, Allocator(), work_dir=tmp_path)
    except PermanentError as exc:
        assert exc.code in INSTANCE_CODES | ARCHIVE_CODES
        assert not dst.exists()
        return
    assert result.members >= 1


# --- fuzzing the central directory -------------------------------------------------------------

_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry, 46 bytes before the name
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_FUZZ_LIMITS = ZipLimits(max_members=400, max_total_uncompressed=8 * 1024 * 1024)
# Central directory entry fields by struct index: sizes and the local header offset.
_CRC, _COMPRESSED, _EXPANDED, _OFFSET = 7, 8, 9, 16


class _Hung(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in the code can eat it."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise _Hung(f"processing took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _split_directory(raw: bytes) -> tuple[bytes, list[list[int | bytes]], list[bytes]]:
    """The member data, each entry's fixed fields, each entry's variable tail (name, extra, comment)."""
    end = raw.rfind(b"PK\x05\x06")
    _, _, _, _, count, _, start, _ = _END.unpack_from(raw, end)
    fields: list[list[int | bytes]] = []
    tails: list[bytes] = []
    at = start
    for _ in range(count):
        entry = list(_CENTRAL.unpack_from(raw, at))
        variable = int(entry[10]) + int(entry[11]) + int(entry[12])  # type: ignore[call-overload]
        fields.append(entry)
        tails.append(raw[at + _CENTRAL.size : at + _CENTRAL.size + variable])
        at += _CENTRAL.size + variable
    return raw[:start], fields, tails


_FUZZ_BASE = [
    ("a.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED),  # the in-place (zipraw) path
    ("b.dcm", data("CT_small.dcm"), zipfile.ZIP_DEFLATED),
    ("c.txt", README, zipfile.ZIP_STORED),
    ("d/e.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
]
_u32 = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 70_000), st.sampled_from([0, 1, 2**32 - 1]))
_mutation = st.one_of(
    st.tuples(st.just("offset"), st.integers(0, 9), _u32),
    st.tuples(st.just("offset_of"), st.integers(0, 9), st.integers(0, 9)),  # share a local header
    st.tuples(st.just("shift"), st.integers(0, 9), st.integers(-600, 600)),  # overlap a neighbour
    st.tuples(st.just("compressed"), st.integers(0, 9), _u32),
    st.tuples(st.just("expanded"), st.integers(0, 9), _u32),
    st.tuples(st.just("sizes"), st.integers(0, 9), _u32),
    st.tuples(st.just("duplicate"), st.integers(0, 9), st.integers(1, 300)),
    st.tuples(st.just("count"), st.integers(0, 9), st.integers(0, 0xFFFF)),
    st.tuples(st.just("directory"), st.integers(0, 1), _u32),  # the end record's size / offset
)


def _mutate(raw: bytes, mutations: Sequence[tuple[str, int, int]]) -> bytes:
    body, fields, tails = _split_directory(raw)
    count_disk = count_total = -1
    directory_size = directory_offset = -1
    for kind, which, value in mutations:
        i = which % len(fields)
        if kind == "offset":
            fields[i][_OFFSET] = value
        elif kind == "offset_of":
            fields[i][_OFFSET] = fields[value % len(fields)][_OFFSET]
        elif kind == "shift":
            fields[i][_OFFSET] = min(2**32 - 1, max(0, int(fields[i][_OFFSET]) + value))  # type: ignore[call-overload]
        elif kind in ("compressed", "expanded", "sizes"):
            if kind != "expanded":
                fields[i][_COMPRESSED] = value
            if kind != "compressed":
                fields[i][_EXPANDED] = value
        elif kind == "duplicate":
            fields += [list(fields[i]) for _ in range(value)]
            tails += [tails[i]] * value
        elif kind == "count":
            count_disk, count_total = (value, count_total) if which % 2 else (count_total, value)
        elif which:
            directory_offset = value
        else:
            directory_size = value
    directory = b"".join(_CENTRAL.pack(*f) + t for f, t in zip(fields, tails, strict=True))
    n = len(fields) & 0xFFFF
    end = _END.pack(
        b"PK\x05\x06",
        0,
        0,
        n if count_disk < 0 else count_disk,
        n if count_total < 0 else count_total,
        len(directory) if directory_size < 0 else directory_size,
        len(body) if directory_offset < 0 else directory_offset,
        0,
    )
    return body + directory + end


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_central_directories_only_raise_permanent_errors(
    mutations: list[tuple[str, int, int]], tmp_path: Path
) -> None:
    original = build_zip(tmp_path / "cd_src.zip", _FUZZ_BASE).read_bytes()
    src = tmp_path / "cd_fuzz.zip"
    src.write_bytes(_mutate(original, mutations))
    dst = tmp_path / "cd_fuzz_out.zip"
    started = time.monotonic()
    try:
        with _time_limit(20):
            result = process_upload(src, dst, Allocator(), limits=_FUZZ_LIMITS, work_dir=tmp_path)
    except PermanentError as exc:
        assert exc.code in INSTANCE_CODES | ARCHIVE_CODES
        assert not dst.exists()
        return
    finally:
        assert time.monotonic() - started < 20
    # Each member's bytes lie apart from every other's, so the output cannot multiply the input:
    # at most every input byte once, plus per-member headers and tracking elements.
    assert dst.stat().st_size <= len(original) + result.members * 1024
    assert sum(s.number_of_instances for s in result.series) == result.instances_stamped
    with zipfile.ZipFile(dst) as out:
        assert len(out.infolist()) == result.members


def test_mutation_helper_rebuilds_an_unchanged_directory_exactly() -> None:
    # The fuzz test is only as good as its directory rewriting: with no effective change it
    # must give back the same bytes, and a duplicated entry must be readable by zipfile.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content, method in _FUZZ_BASE:
            info = zipfile.ZipInfo(name, DATE)
            info.compress_type = method
            archive.writestr(info, content.read_bytes() if isinstance(content, Path) else content)
    raw = buffer.getvalue()
    assert _mutate(raw, [("shift", 0, 0)]) == raw
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        with zipfile.ZipFile(io.BytesIO(_mutate(raw, [("duplicate", 0, 5)]))) as archive:
            infos = archive.infolist()
            assert len(infos) == len(_FUZZ_BASE) + 5
            assert [i.header_offset for i in infos[-5:]] == [0] * 5
            assert archive.read(infos[-1]) == data("MR_small.dcm").read_bytes()
