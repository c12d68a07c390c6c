"""Archives built to hurt, or that the labs' unzip would mishandle, at the processor level.

Zips are built here with ``zipfile`` and, where zipfile refuses to write the hostile layout, by
hand with ``struct``: overlapping members, symbolic links, duplicate names, macOS Finder archives.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from service.errors import PermanentError, Stage
from service.processors import ProcessResult, process_upload
from service.processors.base import SeriesKey, ZipLimits
from service.processors.directory import member_suffix
from service.processors.reading import fail
from service.reporting import member_issue_entries
from tests.test_processors_zip import (
    DATE,
    MR700,
    README,
    TRACKING,
    Allocator,
    Member,
    build_zip,
    data,
    read,
    rejected,
    run,
)

LOCAL = struct.Struct("<4s5HL2L2H")  # local file header, 30 bytes
CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry, 46 bytes
END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
PHI = ("ROE", "JANE", "19650312", "DOE", "JOHN", "IM1")


def local_header(name: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload)
    return LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, len(payload), len(payload), len(name), 0)


def central_entry(name: bytes, payload: bytes, offset: int) -> bytes:
    crc = zlib.crc32(payload)
    size = len(payload)
    fields = (20, 20, 0, 0, 0, 0x21, crc, size, size, len(name), 0, 0, 0, 0, 0o100644 << 16, offset)
    return CENTRAL.pack(b"PK\x01\x02", *fields) + name


def end_record(count: int, directory: bytes, directory_offset: int) -> bytes:
    return END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), directory_offset, 0)


def build_with_duplicates(path: Path, members: Sequence[Member]) -> Path:
    """``build_zip`` for members that share names (zipfile warns about those, and warnings fail)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        return build_zip(path, members)


def refusal(src: Path, tmp_path: Path) -> pytest.ExceptionInfo[PermanentError]:
    """The error that refuses the whole upload ``src`` (temporary files in a fresh work dir)."""
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PermanentError) as caught:
        process_upload(src, tmp_path / "out.zip", Allocator(), work_dir=work)
    return caught


def stamped_uid(payload: bytes) -> str:
    return str(read(payload)[TRACKING].value)


# --- 1. overlapping members --------------------------------------------------------------------


def test_one_stored_member_listed_300_times_is_errs1016_before_anything_is_written(tmp_path: Path) -> None:
    payload = data("MR_small.dcm").read_bytes()
    name = b"IM.dcm"
    body = local_header(name, payload) + name + payload
    directory = b"".join(central_entry(name, payload, 0) for _ in range(300))
    src = tmp_path / "bomb.zip"
    src.write_bytes(body + directory + end_record(300, directory, len(body)))
    with zipfile.ZipFile(src) as archive:  # zipfile itself serves it: the bomb is real
        infos = archive.infolist()
        assert len(infos) == 300
        assert archive.read(infos[299]) == payload
    assert rejected(src, tmp_path) == "ERRS1016"


def test_member_starting_inside_another_members_data_is_errs1016(tmp_path: Path) -> None:
    first, second = data("MR_small.dcm").read_bytes(), data("CT_small.dcm").read_bytes()
    body = local_header(b"a.dcm", first) + b"a.dcm" + first
    inner = len(body) - 4096  # a local header hidden in a's pixel data
    body = body[:inner] + local_header(b"b.dcm", second[:4000]) + b"b.dcm" + body[inner + 35 :]
    directory = central_entry(b"a.dcm", first, 0) + central_entry(b"b.dcm", second[:4000], inner)
    src = tmp_path / "overlap.zip"
    src.write_bytes(body + directory + end_record(2, directory, len(body)))
    with zipfile.ZipFile(src) as archive:
        assert [i.header_offset for i in archive.infolist()] == [0, inner]
    caught = refusal(src, tmp_path)
    assert caught.value.code == "ERRS1016"
    assert caught.value.message == "1 of 2 zip member(s) overlap another member"


def test_member_running_into_the_central_directory_is_errs1016(tmp_path: Path) -> None:
    payload = data("MR_small.dcm").read_bytes()
    body = local_header(b"a.dcm", payload) + b"a.dcm" + payload
    longer = payload + bytes(100)  # the directory claims 100 bytes more than lie before it
    directory = central_entry(b"a.dcm", longer, 0)
    src = tmp_path / "long.zip"
    src.write_bytes(body + directory + end_record(1, directory, len(body)) + bytes(200))
    assert rejected(src, tmp_path) == "ERRS1016"


def test_stored_in_place_bytes_count_against_the_expansion_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The up-front check on the declared sizes is one line of defence; the bytes the in-place
    # (zipraw) path writes are counted too. Switch off the first to see the second.
    monkeypatch.setattr("service.processors.archive.validate_directory", lambda infos, limits: None)
    stored = [(f"{n}.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED) for n in range(3)]
    src = build_zip(tmp_path / "stored.zip", [*stored, ("notes.txt", README, zipfile.ZIP_STORED)])
    size = data("MR_small.dcm").stat().st_size
    carried = build_zip(
        tmp_path / "carried.zip", [stored[0], ("notes.txt", README * 100, zipfile.ZIP_STORED)]
    )
    work = tmp_path / "work"
    work.mkdir()
    # stamped in place (three members, room for two); a carried-over stored member counts as well
    for upload, limit in ((src, 2 * size), (carried, size + 1000)):
        dst = tmp_path / "out.zip"
        with pytest.raises(PermanentError) as caught:
            process_upload(
                upload, dst, Allocator(), limits=ZipLimits(max_total_uncompressed=limit), work_dir=work
            )
        assert caught.value.code == "ERRS1016"
        assert caught.value.message.endswith("expands past the allowed size")
        assert not dst.exists()


# --- 2. member labels --------------------------------------------------------------------------


def test_phi_like_member_names_never_reach_messages_or_labels(tmp_path: Path) -> None:
    src = build_zip(
        tmp_path / "phi.zip",
        [
            ("ROE^JANE.19650312", README, zipfile.ZIP_DEFLATED),
            ("DOE^JOHN/IM1", data("MR_truncated.dcm"), zipfile.ZIP_STORED),
            ("DOE^JOHN/IM2.DCM", data("MR_small.dcm"), zipfile.ZIP_STORED),
        ],
    )
    _, _, result = run(src, tmp_path)
    assert [(i.position, i.code) for i in result.issues] == [(1, "ERRS1013"), (2, "ERRS1002")]
    entries = member_issue_entries(src, result)
    assert [entry.member for entry in entries] == ["#1", "#2"]
    for entry in entries:
        for fragment in PHI:
            assert fragment not in f"{entry.member} {entry.message}"


def test_archive_refusal_names_the_member_by_position_only(tmp_path: Path) -> None:
    inner = build_zip(tmp_path / "inner.zip", [("a.dcm", data("MR_small.dcm"), 8)])
    src = build_zip(
        tmp_path / "outer.zip",
        [("IM0.dcm", data("MR_small.dcm"), 8), ("ROE^JANE.19650312", inner, zipfile.ZIP_DEFLATED)],
    )
    caught = refusal(src, tmp_path)
    assert caught.value.code == "ERRS1017"
    assert caught.value.message == "member #2 is a nested archive"


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("IM1.DCM", ".dcm"),
        ("scans\\x.Dicom", ".dicom"),
        ("report.pdf", ".pdf"),
        ("ROE^JANE.19650312", ""),
        ("DOE^JOHN/IM1", ""),
        ("DOE.JOHN/IM1", ""),
        ("study.ROE^JANE", ""),
        ("x.", ""),
    ],
)
def test_only_known_extensions_are_shown(name: str, suffix: str) -> None:
    assert member_suffix(name) == suffix


# --- 3. the result describes what was stamped --------------------------------------------------


def _break_stamping(monkeypatch: pytest.MonkeyPatch, broken: set[bytes]) -> None:
    """Make the write pass refuse the members whose bytes are in ``broken`` (extracting path)."""
    from service.processors import instance

    real = instance.splice_bytes

    def flaky(src: Path, dst: Path, plan: object, element: bytes) -> bytes | None:
        if src.read_bytes() in broken:
            raise fail("ERRS1008", "written instance has a broken element structure")
        return real(src, dst, plan, element)  # type: ignore[arg-type]

    monkeypatch.setattr(instance, "splice_bytes", flaky)


def test_series_count_only_the_instances_that_were_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members: list[Member] = [(f"MR700/{p.name}", p, zipfile.ZIP_DEFLATED) for p in MR700]
    members += [("ct.dcm", data("CT_small.dcm"), zipfile.ZIP_DEFLATED)]
    members += [("mr.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED)]
    src = build_zip(tmp_path / "three.zip", members)
    _break_stamping(monkeypatch, {MR700[2].read_bytes(), data("CT_small.dcm").read_bytes()})
    dst, allocate, result = run(src, tmp_path)
    [call] = allocate.calls
    assert [s.number_of_instances for s in call] == [7, 1, 1]  # the scan's view, for allocation
    mr700, mr = read(MR700[0]), read(data("MR_small.dcm"))
    assert [(s.key, s.number_of_instances) for s in result.series] == [
        (SeriesKey(mr700.StudyInstanceUID, mr700.SeriesInstanceUID), 6),
        (SeriesKey(mr.StudyInstanceUID, mr.SeriesInstanceUID), 1),
    ]
    assert result.instances_stamped == 7
    assert [(i.position, i.code) for i in result.issues] == [(3, "ERRS1008"), (8, "ERRS1008")]
    with zipfile.ZipFile(dst) as after:
        assert after.read("ct.dcm") == data("CT_small.dcm").read_bytes()
        carrying = [n for n in after.namelist() if TRACKING in read(after.read(n))]
    assert len(carrying) == sum(s.number_of_instances for s in result.series)


def test_zip_where_no_instance_could_be_stamped_is_errl3002(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise fail("ERRS1008", "written instance has a broken element structure")

    _break_stamping(monkeypatch, {data("CT_small.dcm").read_bytes()})
    monkeypatch.setattr("service.processors.archive.check_spliced_head", refuse)  # in-place path
    src = build_zip(
        tmp_path / "doomed.zip",
        [
            ("ct.dcm", data("CT_small.dcm"), zipfile.ZIP_DEFLATED),
            ("mr.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED),
            ("README.txt", README, zipfile.ZIP_STORED),
        ],
    )
    dst, allocate, work = tmp_path / "out.zip", Allocator(), tmp_path / "work"
    work.mkdir()
    with pytest.raises(PermanentError) as caught:
        process_upload(src, dst, allocate, work_dir=work)
    assert (caught.value.code, caught.value.stage) == ("ERRL3002", Stage.PROCESS)
    assert caught.value.message == "none of the 2 DICOM member(s) could be stamped"
    assert len(allocate.calls) == 1
    assert not dst.exists()
    assert list(work.iterdir()) == []


# --- 4. archives the labs' unzip would mishandle -----------------------------------------------


def test_duplicate_names_are_carried_over_in_order_and_reported_by_position(tmp_path: Path) -> None:
    src = build_with_duplicates(
        tmp_path / "dup.zip",
        [
            ("scans/IM1.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED),
            ("scans/IM1.dcm", data("CT_small.dcm"), zipfile.ZIP_DEFLATED),
            ("scans\\IM1.dcm", README, zipfile.ZIP_STORED),  # the same name to Windows' unzip
            ("scans/IM2.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
            ("SCANS/im2.DCM", data("CT_small.dcm"), zipfile.ZIP_STORED),  # the same to macOS' unzip
        ],
    )
    dst, _, result = run(src, tmp_path)
    assert [(i.position, i.code) for i in result.issues] == [
        (2, "ERRS1019"),
        (3, "ERRS1019"),
        (3, "ERRS1013"),
        (5, "ERRS1019"),
    ]
    assert result.issues[0].message == "member #2.dcm has the name of member #1; both carried over"
    assert [e.member for e in member_issue_entries(src, result)] == ["#2.dcm", "#3.dcm", "#3.dcm", "#5.dcm"]
    assert result.instances_stamped == 4
    with zipfile.ZipFile(dst) as after:
        infos = after.infolist()
        names = [i.filename for i in infos]
        first, second, third, fourth, _ = (after.read(info) for info in infos)
    assert names == ["scans/IM1.dcm", "scans/IM1.dcm", "scans\\IM1.dcm", "scans/IM2.dcm", "SCANS/im2.DCM"]
    assert read(first).SOPInstanceUID == read(data("MR_small.dcm")).SOPInstanceUID
    assert read(second).SOPInstanceUID == read(data("CT_small.dcm")).SOPInstanceUID
    assert stamped_uid(first).startswith("2.25.1000.")
    assert stamped_uid(second).startswith("2.25.1000.")
    assert third == README
    assert stamped_uid(fourth) == stamped_uid(first)


@pytest.mark.parametrize("target", [b"IM1.dcm", b"../../../etc/passwd"])
def test_symbolic_link_member_is_errs1010(target: bytes, tmp_path: Path) -> None:
    src = tmp_path / "link.zip"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("IM1.dcm", data("MR_small.dcm").read_bytes())
        link = zipfile.ZipInfo("scans/IM2.dcm", DATE)
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, target)
    assert rejected(src, tmp_path) == "ERRS1010"


# --- 5. no false alarms ------------------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek: zipfile then writes data descriptors, as Finder does."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        return self._target.write(data)  # type: ignore[arg-type]


def _finder_zip(path: Path) -> Path:
    """What macOS Finder's "Compress" makes of a folder: deflated members with data descriptors,
    unix modes, a __MACOSX tree of AppleDouble files, and the folder's .DS_Store."""
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60)
    entries = [
        ("study/", b""),
        ("study/IM1.dcm", data("MR_small.dcm").read_bytes()),
        ("study/IM2.dcm", data("CT_small.dcm").read_bytes()),
        ("study/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100)),
        ("study/DICOMDIR", data("dicomdirtests/DICOMDIR").read_bytes()),
        ("__MACOSX/", b""),
        ("__MACOSX/study/", b""),
        ("__MACOSX/study/._IM1.dcm", apple_double),
        ("__MACOSX/study/._IM2.dcm", apple_double),
        ("__MACOSX/study/._.DS_Store", apple_double),
    ]
    with open(path, "wb") as raw, zipfile.ZipFile(_Unseekable(raw), "w") as archive:
        for name, payload in entries:
            info = zipfile.ZipInfo(name, DATE)
            info.create_system = 3
            is_dir = name.endswith("/")
            info.external_attr = ((stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)) << 16
            info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
            archive.writestr(info, payload)
    return path


def test_finder_zip_completes_without_any_issue(tmp_path: Path) -> None:
    src = _finder_zip(tmp_path / "Archive.zip")
    with zipfile.ZipFile(src) as before:
        files = [i for i in before.infolist() if not i.is_dir()]
        assert all(i.flag_bits & 0x08 for i in files)  # data descriptors, as Finder writes them
        originals = {i.filename: before.read(i) for i in files}
    dst, _, result = run(src, tmp_path)
    assert result == ProcessResult(
        result.series, (), instances_stamped=2, members=10, fallbacks=0, system_files=5
    )
    assert member_issue_entries(src, result) == []
    with zipfile.ZipFile(dst) as after:
        assert after.testzip() is None
        for name, payload in originals.items():
            if name.startswith("study/IM"):
                assert stamped_uid(after.read(name)).startswith("2.25.1000.")
            else:
                assert after.read(name) == payload  # system files: unchanged


@pytest.mark.parametrize(
    "name", ["Thumbs.db", "scans/desktop.ini", "a/b/dicomdir", "DicomDir", "._IM1.dcm", "__MACOSX/x.txt"]
)
def test_system_files_raise_no_issue_and_are_counted(name: str, tmp_path: Path) -> None:
    src = build_zip(
        tmp_path / "sys.zip",
        [("IM1.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED), (name, README, zipfile.ZIP_DEFLATED)],
    )
    dst, _, result = run(src, tmp_path)
    assert (result.issues, result.system_files, result.instances_stamped) == ((), 1, 1)
    with zipfile.ZipFile(dst) as after:
        assert after.read(name) == README


def test_names_that_unzip_to_one_file_are_duplicates_however_they_are_spelled(tmp_path: Path) -> None:
    composed, decomposed = "scans/s\u00e9rie/IM1.dcm", "scans/se\u0301rie/IM1.dcm"  # NFC and NFD é
    src = build_with_duplicates(
        tmp_path / "spelled.zip",
        [
            (composed, data("MR_small.dcm"), zipfile.ZIP_STORED),
            (decomposed, data("CT_small.dcm"), zipfile.ZIP_STORED),  # macOS' NFD spelling
            ("scans/IM2.dcm", data("MR_small.dcm"), zipfile.ZIP_DEFLATED),
            ("scans//IM2.dcm", data("CT_small.dcm"), zipfile.ZIP_STORED),  # an empty segment
            ("./scans/./IM2.dcm", data("MR_small.dcm"), zipfile.ZIP_STORED),  # dot segments
            ("scans/IM2.dcm.bak/IM2.dcm", data("CT_small.dcm"), zipfile.ZIP_STORED),  # another file
        ],
    )
    _, _, result = run(src, tmp_path)
    assert [(i.position, i.code) for i in result.issues] == [(n, "ERRS1019") for n in (2, 4, 5)]
    assert [i.message for i in result.issues][1:] == [
        "member #4.dcm has the name of member #3; both carried over",
        "member #5.dcm has the name of member #3; both carried over",
    ]
    assert result.instances_stamped == 6
