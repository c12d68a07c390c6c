"""The measured methods, each run in a fresh child process: ``python -m bench.methods SPEC_JSON``.

The child imports only what its method needs, times the work alone with ``time.perf_counter``,
checks the output (not timed), and prints one JSON line: seconds, peak RSS (VmHWM of the child)
and whether the output checked out. Nothing here is imported by the parent except ``run_child``.

Methods:
- ``raw``: ``shutil.copyfile`` of every input file (a zip is copied as one file): the kernel copies
  inside the page cache (``copy_file_range``/``sendfile``), the physical limit on this machine.
- ``member_copy`` (zips only): every member read with ``zipfile`` and written into a new stored zip;
  CPython's user-space pass over the bytes with CRC-32 on read and on write, no DICOM work.
- ``naive``: pydicom ``dcmread`` of the whole instance, set the tag, ``save_as``; for a zip the
  member is read into memory and the output is written as a member of a new zip.
- ``engine``: ``service.processors.process_upload`` with an allocator giving ``1.2.3.N`` per series.
- ``noop``/``imports``: nothing, or only the engine's imports: the process start-up cost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

TRACKING_KEYWORD = "ClinicalTrialSeriesID"  # (0012,0071), the service's default tracking tag
COPY_CHUNK = 1024 * 1024
MAIN_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What one child reported."""

    seconds: float  # the work only, measured inside the child
    rss_bytes: int  # VmHWM of the child
    wall_seconds: float  # spawn to exit, measured by the parent
    checked: bool  # the output was verified
    extra: Mapping[str, Any]


def run_child(spec: Mapping[str, Any], timeout_s: float = 1800) -> ChildResult:
    """Run one method in a fresh interpreter; raise ``RuntimeError`` if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.methods", json.dumps(spec)],
        cwd=MAIN_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec.get('method')} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return ChildResult(
        report["seconds"], report["rss_bytes"], wall, report["checked"], report.get("extra", {})
    )


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class SeriesUids:
    """``1.2.3.N`` for the N-th series seen; the engine's allocator and the naive method's lookup."""

    def __init__(self) -> None:
        self.uids: dict[tuple[str, str], str] = {}

    def uid(self, study: str, series: str) -> str:
        """The UID for one series, allocated on first sight."""
        return self.uids.setdefault((study, series), f"1.2.3.{len(self.uids) + 1}")

    def allocate(self, series: Sequence[Any]) -> dict[Any, str]:
        """The ``UidAllocator`` protocol of ``service.processors``."""
        return {s.key: self.uid(s.key.study_uid, s.key.series_uid) for s in series}


# --- raw copies -----------------------------------------------------------------------------------


def raw_files(paths: Sequence[Path], out: Path) -> None:
    """Copy each file with ``shutil.copyfile``."""
    for path in paths:
        shutil.copyfile(path, out / path.name)


def raw_zip(src: Path, dst: Path) -> None:
    """Copy the zip's bytes with ``shutil.copyfile``."""
    shutil.copyfile(src, dst)


def member_copy(src: Path, dst: Path) -> None:
    """Copy every member into a new stored zip through Python, no DICOM work."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", allowZip64=True) as zout:
        for info in zin.infolist():
            out_info = zipfile.ZipInfo(info.filename, info.date_time)
            out_info.compress_type = info.compress_type
            with zin.open(info) as member, zout.open(out_info, "w", force_zip64=True) as target:
                shutil.copyfileobj(member, target, COPY_CHUNK)


# --- naive pydicom --------------------------------------------------------------------------------


def _stamp_naive(ds: Any, uids: SeriesUids) -> None:
    setattr(ds, TRACKING_KEYWORD, uids.uid(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))


def naive_files(paths: Sequence[Path], out: Path) -> None:
    """``dcmread`` each file whole, set the tag, ``save_as``."""
    from pydicom import dcmread

    uids = SeriesUids()
    for path in paths:
        ds = dcmread(path)
        _stamp_naive(ds, uids)
        ds.save_as(out / path.name)


def naive_zip(src: Path, dst: Path) -> None:
    """Each member read into memory, ``dcmread`` from it, stamped, written as a new member."""
    from pydicom import dcmread

    uids = SeriesUids()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", allowZip64=True) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            ds = dcmread(BytesIO(data))
            del data
            _stamp_naive(ds, uids)
            buf = BytesIO()
            ds.save_as(buf)
            del ds
            out_info = zipfile.ZipInfo(info.filename, info.date_time)
            out_info.compress_type = info.compress_type
            zout.writestr(out_info, buf.getbuffer())


# --- the engine -----------------------------------------------------------------------------------


def engine_files(paths: Sequence[Path], out: Path, work: Path) -> None:
    """``process_upload`` on each file."""
    from service.processors import process_upload

    uids = SeriesUids()
    for path in paths:
        process_upload(path, out / path.name, uids.allocate, work_dir=work)


def engine_zip(src: Path, dst: Path, work: Path) -> None:
    """``process_upload`` on the zip."""
    from service.processors import process_upload

    process_upload(src, dst, SeriesUids().allocate, work_dir=work)


# --- checks (not timed) ---------------------------------------------------------------------------


def _check_files(paths: Sequence[Path], out: Path, stamped: bool) -> bool:
    outputs = [out / p.name for p in paths]
    if not all(o.exists() for o in outputs):
        return False
    if not stamped:
        return all(o.stat().st_size == p.stat().st_size for o, p in zip(outputs, paths, strict=True))
    from pydicom import dcmread

    for o in (outputs[0], outputs[-1]):
        ds = dcmread(o, stop_before_pixels=True)
        if not str(ds.get(TRACKING_KEYWORD, "")).startswith("1.2.3."):
            return False
    return True


def _check_zip(src: Path, dst: Path, stamped: bool) -> bool:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst) as zout:
        if [i.filename for i in zin.infolist()] != [i.filename for i in zout.infolist()]:
            return False
        if not stamped:
            return True
        from pydicom import dcmread

        for info in (zout.infolist()[0], zout.infolist()[-1]):
            with zout.open(info) as member:
                ds = dcmread(member, stop_before_pixels=True)
            if str(ds.get(TRACKING_KEYWORD, "")) != "1.2.3.1":
                return False
    return True


# --- the child's entry point ----------------------------------------------------------------------


def _work(spec: Mapping[str, Any]) -> tuple[Callable[[], None], Callable[[], bool]]:
    """The timed work and the output check for one spec."""
    method, kind = spec["method"], spec["kind"]
    paths = [Path(p) for p in spec["paths"]]
    out, work = Path(spec["out"]), Path(spec["work"])
    if kind == "files":
        file_work: dict[str, Callable[[], None]] = {
            "raw": lambda: raw_files(paths, out),
            "naive": lambda: naive_files(paths, out),
            "engine": lambda: engine_files(paths, out, work),
        }
        return file_work[method], lambda: _check_files(paths, out, method != "raw")
    dst = out / "out.zip"
    zip_work: dict[str, Callable[[], None]] = {
        "raw": lambda: raw_zip(paths[0], dst),
        "member_copy": lambda: member_copy(paths[0], dst),
        "naive": lambda: naive_zip(paths[0], dst),
        "engine": lambda: engine_zip(paths[0], dst, work),
    }
    return zip_work[method], lambda: _check_zip(paths[0], dst, method in ("naive", "engine"))


def _import_for(method: str) -> None:
    """Import what a method needs before the clock starts (imports are the start-up cost)."""
    if method == "naive":
        import pydicom.filewriter  # noqa: F401

    elif method == "engine":
        import service.processors  # noqa: F401


def _profiled(work: Callable[[], None], top: int) -> str:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(work)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(top + 3)  # the first three are the bench's wrappers
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv: Sequence[str]) -> int:
    """Run the spec given as JSON in ``argv[0]``; print the report as one JSON line."""
    spec = json.loads(argv[0])
    extra: dict[str, Any] = {}
    if spec["method"] == "noop":
        print(json.dumps({"seconds": 0.0, "rss_bytes": _peak_rss_bytes(), "checked": True}))
        return 0
    if spec["method"] == "imports":
        started = time.perf_counter()
        import service.processors  # noqa: F401 - the import is what is measured

        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rss_bytes": _peak_rss_bytes(), "checked": True}))
        return 0
    _import_for(spec["method"])
    work, check = _work(spec)
    if spec.get("profile"):
        extra["profile"] = _profiled(work, int(spec["profile"]))
        seconds = 0.0
    else:
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
    rss = _peak_rss_bytes()
    report = {"seconds": seconds, "rss_bytes": rss, "checked": check(), "extra": extra}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
