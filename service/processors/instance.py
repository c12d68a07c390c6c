"""One DICOM instance on local disk: scan its header, stamp it, verify the output.

``scan_instance`` is the first pass: it reads only headers, classifies the file (not DICOM,
truncated, no UIDs), finds its series and decides between the header splice and the full-rewrite
fallback. ``stamp_instance`` is the second pass. Both raise ``PermanentError`` with an ERRS1xxx
code for a bad file and let only ``OSError`` (disk faults) and ``ValueError`` (an invalid tracking
value from the allocator) escape otherwise.

Both take ``max_in_memory_bytes``, required: every path that holds a whole file or inflated
dataset in memory goes through ``WHOLE_DATASET_GATE`` with it, and a file that would need more
fails with ERRS1020 in the scan, before the allocator is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from service.processors.base import SeriesKey
from service.processors.fastscan import (
    NATIVE_SYNTAXES,
    PIXEL_DESCRIPTION,
    check_native_pixel_length,
    quick_scan,
)
from service.processors.layout import (
    IrregularError,
    Layout,
    StructureError,
    TruncatedError,
    walk_dataset,
)
from service.processors.layout import walk_file as walk_layout
from service.processors.reading import (
    BIG_ENDIAN,
    DEFLATED,
    IMPLICIT_LITTLE,
    WHOLE_DATASET_GATE,
    fail,
    inflated_dataset,
    read_dataset_at,
    read_header,
    read_header_bytes,
    transfer_syntax,
)
from service.processors.rewrite import check_readable, rewrite_file
from service.processors.splice import SplicePlan, check_placed, encode_element, encode_value, plan_splice
from service.processors.splice import splice_file as splice_bytes

SOP_CLASS_UID = 0x00080016
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
_SCAN_TAGS = (SOP_CLASS_UID, STUDY_UID, SERIES_UID, SERIES_NUMBER)


@dataclass(frozen=True, slots=True)
class Instance:
    """What the scan learned about one instance: its series and how to stamp it."""

    key: SeriesKey
    series_number: int | None
    plan: SplicePlan | None  # None: the full-rewrite fallback is needed


def _uid(header: Dataset | None, tag: int) -> str | None:
    """A usable UID value (printable ASCII, at most 64 characters) or ``None``."""
    if header is None or tag not in header:
        return None
    try:
        value = header[tag].value
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert is simply not a UID
        return None
    if not isinstance(value, str):
        return None
    value = value.strip(" \0")
    if not 0 < len(value) <= 64 or not value.isascii() or not value.isprintable():
        return None
    return None if "\\" in value else value


def _series_number(header: Dataset) -> int | None:
    try:
        value = header[SERIES_NUMBER].value if SERIES_NUMBER in header else None
    except Exception:  # noqa: BLE001 - an unreadable Series Number is treated as absent
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _encoding(ts: str | None, header: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset: from the transfer syntax, else pydicom's guess."""
    if ts is not None:
        return ts == IMPLICIT_LITTLE, ts != BIG_ENDIAN
    implicit, little = header.original_encoding
    return bool(implicit), little is not False


def _layout(path: Path, implicit: bool, little: bool, *, may_flip: bool) -> Layout | None:
    """Layout of ``path``; ``None`` when irregular; ERRS1002 when truncated.

    With ``may_flip``, bytes that do not walk in the declared VR mode are tried in the other one:
    some writers put implicit VR bytes under an explicit VR syntax (or the reverse), and splicing
    in the encoding the bytes really have keeps the output as readable as the input was.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as fp:
            return walk_layout(fp, size, implicit_vr=implicit, little_endian=little)
    except StructureError as first:
        if may_flip:
            try:
                with open(path, "rb") as fp:
                    return walk_layout(fp, size, implicit_vr=not implicit, little_endian=little)
            except StructureError:
                pass
        if isinstance(first, TruncatedError):
            raise fail("ERRS1002", "an element runs past the end of the file (truncated)") from None
        return None


def _check_pixels(path: Path, layout: Layout) -> None:
    values: dict[int, bytes | None] = {}
    with open(path, "rb") as fp:
        for element in layout.elements:
            if element.tag in PIXEL_DESCRIPTION and element.length <= 32:
                fp.seek(element.value_offset)
                values[element.tag] = fp.read(element.length)
    check_native_pixel_length(layout, values)


def _check_inflated(path: Path, data: bytes, limit: int) -> None:
    try:
        walk_dataset(BytesIO(data), len(data), 0, implicit_vr=False, little_endian=True)
    except TruncatedError:
        raise fail("ERRS1002", "an element runs past the end of the dataset (truncated)") from None
    except IrregularError:
        # Irregular bytes: let pydicom's reader judge them now, not later (the gate nests).
        check_readable(path, max_in_memory_bytes=limit)


def scan_instance(path: Path, tag: BaseTag, *, max_in_memory_bytes: int) -> Instance:
    """First pass over one file: identify it, check its structure, plan how to stamp it.

    Reads headers only, except where the file must take the in-memory path: a deflated dataset
    is inflated, and bytes the walker finds irregular are read whole by pydicom, both through
    ``WHOLE_DATASET_GATE``. Raises ERRS1012 for a file that is not DICOM, ERRS1002 for a corrupt
    or truncated one, ERRS1014 when the Study or Series Instance UID is missing, ERRS1020 when
    the file needs the full rewrite and it (or its inflated dataset) is larger than
    ``max_in_memory_bytes``; ``OSError`` for disk faults.
    """
    size = path.stat().st_size
    with open(path, "rb") as fp:
        quick = quick_scan(fp, size, tag)
        if quick is not None:
            key = SeriesKey(quick.study_uid, quick.series_uid)
            return Instance(key, quick.series_number, plan_splice(quick.layout, tag))
        fp.seek(0)
        head = fp.read(132)
    has_prefix = len(head) == 132 and head[128:132] == b"DICM"
    ts = transfer_syntax(path) if has_prefix else None
    deflated = ts == DEFLATED
    if deflated:
        with inflated_dataset(path, max_in_memory_bytes=max_in_memory_bytes) as inflated:
            header = read_header_bytes(inflated, SERIES_NUMBER, _SCAN_TAGS)
            if header is not None:
                _check_inflated(path, inflated, max_in_memory_bytes)
            del inflated
    else:
        header = read_header(path, SERIES_NUMBER, _SCAN_TAGS)
    identified = any(_uid(header, item) for item in (SOP_CLASS_UID, STUDY_UID, SERIES_UID))
    if not identified and not has_prefix:
        raise fail("ERRS1012", "no DICM prefix and no DICOM identifiers")
    if header is None:
        raise fail("ERRS1002", "DICOM header cannot be parsed")
    plan: SplicePlan | None = None
    layout: Layout | None = None
    if not deflated:
        implicit, little = _encoding(ts, header)
        spliceable = has_prefix and ts is not None and little
        layout = _layout(path, implicit, little, may_flip=spliceable)
        if layout is None:
            # Irregular bytes: let pydicom's reader judge them now, not later.
            check_readable(path, max_in_memory_bytes=max_in_memory_bytes)
        elif spliceable:
            plan = plan_splice(layout, tag)
        if plan is None:  # the full rewrite will hold it: refuse now, before the allocator is called
            WHOLE_DATASET_GATE.check(size, max_in_memory_bytes)
    study, series = _uid(header, STUDY_UID), _uid(header, SERIES_UID)
    if study is None or series is None:
        raise fail("ERRS1014", "instance lacks a Study or Series Instance UID")
    if plan is not None and layout is not None and ts in NATIVE_SYNTAXES:
        _check_pixels(path, layout)
    return Instance(SeriesKey(study, series), _series_number(header), plan)


def _text(header: Dataset | None, tag: BaseTag) -> str | None:
    """The tracking element's value as text, or ``None`` when absent or unreadable."""
    try:
        found = header[tag].value if header is not None and tag in header else None
    except Exception:  # noqa: BLE001 - an unreadable value is simply not the expected one
        return None
    if isinstance(found, bytes):  # a private tag without its creator reads as UN
        found = found.decode("latin-1")
    return found.strip(" \0") if isinstance(found, str) else None


def verify_output(path: Path, tag: BaseTag, value: str, encoding: tuple[bool, bool] | None = None) -> None:
    """Deep check of a written instance: pydicom re-reads the tag, and the structure walks.

    Re-reads the header up to the tag with pydicom and walks the element headers of the whole
    file (so a pixel data length larger than the bytes present is caught). ``encoding`` is the
    (implicit VR, little endian) pair of the dataset bytes; by default the transfer syntax's.
    A deflated file is left alone: pydicom would inflate all of it outside the gate, and
    ``rewrite_file``, its only writer, re-reads it whole inside its admission. Raises ERRS1008.
    """
    ts = transfer_syntax(path)
    if ts == DEFLATED:
        return
    if _text(read_header(path, int(tag), (int(tag),)), tag) != value:
        raise fail("ERRS1008", "written instance does not carry the tracking UID")
    implicit, little = encoding or (ts == IMPLICIT_LITTLE, ts != BIG_ENDIAN)
    _check_structure(path, tag, implicit, little)


def _check_structure(path: Path, tag: BaseTag, implicit: bool, little: bool) -> Layout:
    try:
        with open(path, "rb") as fp:
            layout = walk_layout(fp, path.stat().st_size, implicit_vr=implicit, little_endian=little)
    except StructureError:
        raise fail("ERRS1008", "written instance has a broken element structure") from None
    if sum(1 for item in layout.elements if item.tag == tag) != 1:
        raise fail("ERRS1008", "written instance does not carry exactly one tracking element")
    return layout


def check_spliced_head(head: bytes, following: bytes, plan: SplicePlan, element: bytes) -> None:
    """``check_placed`` for a head built in memory; ``following`` holds the next bytes of the tail."""
    check_placed(head[plan.cut_start :], following, plan, element)


def _pydicom_reads(path: Path, plan: SplicePlan, tag: BaseTag, value: str) -> None:
    header = read_dataset_at(
        path,
        plan.dataset_start,
        implicit_vr=plan.implicit_vr,
        little_endian=plan.little_endian,
        last_tag=int(tag),
        tags=(int(tag),),
    )
    if _text(header, tag) != value:
        raise fail("ERRS1008", "pydicom does not read the tracking UID back")


def check_head_with_pydicom(head: bytes, plan: SplicePlan, tag: BaseTag, value: str) -> None:
    """pydicom reads the tracking UID back from a head built in memory. Raises ERRS1008."""
    header = read_header_bytes(
        head[plan.dataset_start :],
        int(tag),
        (int(tag),),
        implicit_vr=plan.implicit_vr,
        little_endian=plan.little_endian,
    )
    if _text(header, tag) != value:
        raise fail("ERRS1008", "pydicom does not read the tracking UID back")


def stamp_instance(
    src: Path,
    dst: Path,
    instance: Instance,
    tag: BaseTag,
    vr: str,
    value: str,
    *,
    max_in_memory_bytes: int,
    deep_verify: bool = True,
) -> bool:
    """Second pass: write ``src`` to ``dst`` carrying ``value`` in ``tag``, then verify ``dst``.

    Splices when the scan produced a plan, otherwise rewrites fully with pydicom. A splice is
    always checked structurally; ``deep_verify`` adds a pydicom re-read (the zip processor asks
    for it on the first instance of each series, a single file always gets it). A full rewrite is
    always deep-verified, and its pixel bytes compared with the input's. Returns True when the
    fallback was used. Raises ERRS1008 (not stamped or not verified), ERRS1009 (the fallback
    cannot read the input) or ERRS1020 (the fallback would hold more than ``max_in_memory_bytes``)
    (``dst`` may then hold partial output, the caller discards it), ``ValueError`` for an invalid
    ``value``, ``OSError`` for disk faults.
    """
    raw = encode_value(value, vr)
    if instance.plan is not None:
        plan = instance.plan
        element = encode_element(tag, vr, raw, implicit_vr=plan.implicit_vr, little_endian=plan.little_endian)
        head = splice_bytes(src, dst, plan, element)
        if deep_verify:
            if head is not None:
                check_head_with_pydicom(head, plan, tag, value)
            else:
                _pydicom_reads(dst, plan, tag, value)
        return False
    rewrite_file(src, dst, tag, vr, value, max_in_memory_bytes=max_in_memory_bytes)
    verify_output(dst, tag, value)
    return True
