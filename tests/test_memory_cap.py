"""The in-memory cap: what may take the full pydicom rewrite (or be inflated) is bounded.

Big files are written element by element with ``struct`` and 1 MiB chunks, never built in memory;
the large case runs in a child process so its peak RSS can be read (``VmHWM``) without this
process's own memory in the figure.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
import pytest

from service.errors import PermanentError
from service.processors import DEFAULT_TRACKING_TAG, process_upload
from service.processors.base import SeriesKey, SeriesSummary

MIB = 1024 * 1024
ATRIUID = "1.2.826.0.1.3680043.10.1234.5"
_ROOT = Path(__file__).resolve().parent.parent
_CHUNK = bytes(range(256)) * 4096  # 1 MiB of pixel bytes that are not all alike

# The child: stamp one file with a cap, report the outcome and its own peak RSS.
_CHILD = """
import json, sys
from pathlib import Path
from service.errors import PermanentError
from service.processors import process_upload

src, dst, cap = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
try:
    result = process_upload(src, dst, lambda s: {x.key: "1.2.3.4" for x in s}, max_in_memory_bytes=cap)
    outcome = {"stamped": result.instances_stamped, "fallbacks": result.fallbacks}
except PermanentError as exc:
    outcome = {"code": exc.code}
status = Path("/proc/self/status").read_text()
outcome["peak_kib"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
outcome["dst_exists"] = dst.exists()
print(json.dumps(outcome))
"""


def _allocate(series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]:
    return {summary.key: f"{ATRIUID}.{n}" for n, summary in enumerate(series, start=1)}


def _element(tag: int, vr: bytes, value: bytes, endian: str) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW"):
        return struct.pack(f"{endian}HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack(f"{endian}HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _header(endian: str, frames: int, series: str) -> bytes:
    """Explicit VR elements up to (0028,0103) describing ``frames`` 512 x 512 16-bit frames."""
    short = struct.Struct(f"{endian}H")
    return b"".join(
        [
            _element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2", endian),
            _element(0x00080018, b"UI", f"{series}.1".encode(), endian),
            _element(0x0020000D, b"UI", b"1.2.826.0.1.3680043.10.1234.1", endian),
            _element(0x0020000E, b"UI", series.encode(), endian),
            _element(0x00200011, b"IS", b"7", endian),
            _element(0x00280002, b"US", short.pack(1), endian),
            _element(0x00280004, b"CS", b"MONOCHROME2", endian),
            _element(0x00280008, b"IS", str(frames).encode(), endian),
            _element(0x00280010, b"US", short.pack(512), endian),
            _element(0x00280011, b"US", short.pack(512), endian),
            _element(0x00280100, b"US", short.pack(16), endian),
            _element(0x00280101, b"US", short.pack(16), endian),
            _element(0x00280102, b"US", short.pack(15), endian),
            _element(0x00280103, b"US", short.pack(0), endian),
        ]
    )


def _meta(syntax: str) -> bytes:
    group = b"".join(
        [
            _element(0x00020001, b"OB", b"\0\1", "<"),
            _element(0x00020002, b"UI", b"1.2.840.10008.5.1.4.1.1.2", "<"),
            _element(0x00020003, b"UI", b"1.2.826.0.1.3680043.10.1234.9", "<"),
            _element(0x00020010, b"UI", syntax.encode(), "<"),
        ]
    )
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<L", len(group)), "<") + group


def write_irregular(
    path: Path, megabytes: int, *, kind: str, series: str = "1.2.826.0.1.3680043.10.1234.2"
) -> None:
    """A file the splice cannot take, with ``megabytes`` MiB of native pixel data.

    ``no-meta``: explicit VR little endian without preamble or file meta. ``big-endian``: a Part
    10 file in explicit VR big endian (retired). Written in 1 MiB chunks.
    """
    endian = ">" if kind == "big-endian" else "<"
    frames = megabytes * MIB // (512 * 512 * 2)
    with open(path, "wb") as fp:
        if kind == "big-endian":
            fp.write(_meta("1.2.840.10008.1.2.2"))
        fp.write(_header(endian, frames, series))
        fp.write(struct.pack(f"{endian}HH2sHL", 0x7FE0, 0x0010, b"OW", 0, megabytes * MIB))
        for _ in range(megabytes):
            fp.write(_CHUNK)


def write_deflated(path: Path, megabytes: int) -> None:
    """A deflated Part 10 file whose dataset inflates to ``megabytes`` MiB (zero pixels)."""
    frames = megabytes * MIB // (512 * 512 * 2)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fp:
        fp.write(_meta("1.2.840.10008.1.2.1.99"))
        fp.write(deflate.compress(_header("<", frames, "1.2.826.0.1.3680043.10.1234.3")))
        fp.write(deflate.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, megabytes * MIB)))
        zeros = bytes(MIB)
        for _ in range(megabytes):
            fp.write(deflate.compress(zeros))
        fp.write(deflate.flush())


def _run_child(src: Path, dst: Path, cap: int) -> dict[str, int | str | bool]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst), str(cap)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome: dict[str, int | str | bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def test_large_irregular_file_over_the_cap_fails_cleanly_in_bounded_memory(tmp_path: Path) -> None:
    src, dst = tmp_path / "large.dcm", tmp_path / "out.dcm"
    write_irregular(src, 300, kind="no-meta")
    try:
        outcome = _run_child(src, dst, 64 * MIB)
    finally:
        src.unlink()  # pytest keeps recent tmp_path directories: do not leave 300 MB behind
        dst.unlink(missing_ok=True)
    assert outcome["code"] == "ERRS1020"
    assert outcome["dst_exists"] is False
    peak_kib = outcome["peak_kib"]
    assert isinstance(peak_kib, int)
    assert peak_kib < 200 * 1024, f"child peak RSS {peak_kib} KiB"


@pytest.mark.parametrize("kind", ["no-meta", "big-endian"])
def test_irregular_file_under_the_cap_is_still_rewritten(kind: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "irregular.dcm", tmp_path / "out.dcm"
    write_irregular(src, 8, kind=kind)
    result = process_upload(src, dst, _allocate, max_in_memory_bytes=64 * MIB)
    assert (result.instances_stamped, result.fallbacks, result.issues) == (1, 1, ())
    assert [s.number_of_instances for s in result.series] == [1]
    stamped = pydicom.dcmread(dst)  # no force: the output is a valid Part 10 file
    assert stamped[DEFAULT_TRACKING_TAG].value == f"{ATRIUID}.1"
    expected = "1.2.840.10008.1.2.2" if kind == "big-endian" else "1.2.840.10008.1.2.1"
    assert stamped.file_meta.TransferSyntaxUID == expected
    assert stamped.PixelData == _CHUNK * 8


def test_irregular_file_over_the_cap_fails_before_the_allocator(tmp_path: Path) -> None:
    src, dst = tmp_path / "irregular.dcm", tmp_path / "out.dcm"
    write_irregular(src, 8, kind="big-endian")
    calls: list[int] = []

    def allocate(series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]:
        calls.append(len(series))
        return _allocate(series)

    with pytest.raises(PermanentError) as caught:
        process_upload(src, dst, allocate, max_in_memory_bytes=4 * MIB)
    assert caught.value.code == "ERRS1020"
    assert calls == []
    assert not dst.exists()


def test_deflated_dataset_inflating_past_the_cap_fails_in_bounded_memory(tmp_path: Path) -> None:
    # 300 MiB of zeros deflate to well under 1 MB: the cap is on the inflated dataset.
    src, dst = tmp_path / "deflated.dcm", tmp_path / "out.dcm"
    write_deflated(src, 300)
    assert src.stat().st_size < 2 * MIB
    outcome = _run_child(src, dst, 64 * MIB)
    assert outcome["code"] == "ERRS1020"
    assert outcome["dst_exists"] is False
    peak_kib = outcome["peak_kib"]
    assert isinstance(peak_kib, int)
    assert peak_kib < 200 * 1024, f"child peak RSS {peak_kib} KiB"


def test_deflated_dataset_under_the_cap_is_still_rewritten(tmp_path: Path) -> None:
    src, dst = tmp_path / "deflated.dcm", tmp_path / "out.dcm"
    write_deflated(src, 4)
    result = process_upload(src, dst, _allocate, max_in_memory_bytes=64 * MIB)
    assert (result.instances_stamped, result.fallbacks) == (1, 1)
    stamped = pydicom.dcmread(dst)
    assert stamped.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert stamped[DEFAULT_TRACKING_TAG].value == f"{ATRIUID}.1"
    assert stamped.PixelData == bytes(4 * MIB)


def test_a_deflated_dataset_counts_twice_against_the_cap(tmp_path: Path) -> None:
    # Its rewrite holds the inflated bytes besides the dataset: 40 MiB inflated needs 80 of 64.
    src, dst = tmp_path / "deflated.dcm", tmp_path / "out.dcm"
    write_deflated(src, 40)
    with pytest.raises(PermanentError) as refused:
        process_upload(src, dst, _allocate, max_in_memory_bytes=64 * MIB)
    assert refused.value.code == "ERRS1020" and not dst.exists()


def test_zip_member_over_the_cap_is_the_members_issue(tmp_path: Path) -> None:
    big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
    write_irregular(big, 8, kind="no-meta", series="1.2.826.0.1.3680043.10.1234.20")
    write_irregular(small, 1, kind="no-meta", series="1.2.826.0.1.3680043.10.1234.21")
    src, dst = tmp_path / "upload.zip", tmp_path / "out.zip"
    with zipfile.ZipFile(src, "w") as archive:
        archive.write(big, "a/big.dcm", compress_type=zipfile.ZIP_STORED)
        archive.write(small, "a/small.dcm", compress_type=zipfile.ZIP_STORED)
    result = process_upload(src, dst, _allocate, work_dir=tmp_path, max_in_memory_bytes=4 * MIB)
    assert [(issue.member, issue.code) for issue in result.issues] == [("a/big.dcm", "ERRS1020")]
    assert (result.instances_stamped, result.fallbacks) == (1, 1)
    assert [s.key.series_uid for s in result.series] == ["1.2.826.0.1.3680043.10.1234.21"]
    with zipfile.ZipFile(dst) as archive:
        assert archive.read("a/big.dcm") == big.read_bytes()  # carried over unchanged
