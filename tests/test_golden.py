"""Known dataset in, known output out: the whole chain against a committed expected output.

A fixed set of uploads goes through the worker one at a time under a frozen clock; every output a
user sees (quarantine keys, ATRIUIDs in the files, series rows, statuses, error codes, error-log
keys) must equal ``golden/expected.json``. After a deliberate change, regenerate it with
``UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

from service.local.samples import bundled_file, write_mixed_zip, write_not_dicom, write_series_zip
from tests.stackfixtures import TestStack

EXPECTED = Path(__file__).parent / "golden" / "expected.json"
FROZEN = datetime(2026, 1, 15, 9, 30, 0, tzinfo=UTC)


def _evil_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../outside.dcm", bundled_file("CT_small.dcm").read_bytes())
    return path


def _inputs(tmp: Path) -> list[tuple[str, Path]]:
    return [
        ("subjecteventcrffile/1/101/CT Scan/v1.dcm", bundled_file("CT_small.dcm")),
        ("subjecteventcrffile/2/102/MRI Series/v1.zip", write_series_zip(tmp / "series.zip")),
        ("subjecteventcrffile/2/102/CT Scan/v1.zip", write_mixed_zip(tmp / "mixed.zip")),
        ("subjecteventcrffile/1/101/CT Scan/v2.dcm", write_not_dicom(tmp / "bad.dcm")),
        ("subjecteventcrffile/1/101/CT Scan/v1+x.dcm", bundled_file("MR_truncated.dcm")),
        ("subjecteventcrffile/1/101/MRI Series/dup.dcm", bundled_file("MR_small.dcm")),
        ("subjecteventcrffile/2/102/MRI Series/v2.zip", _evil_zip(tmp / "evil.zip")),
        ("subjecteventcrffile/1/CT Scan/v1.dcm", bundled_file("CT_small.dcm")),
    ]


def _describe_dicom(data: bytes) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return {
        "tracking_uid": ds[0x0012, 0x0071].value,
        "pixel_sha256": hashlib.sha256(bytes(ds.PixelData)).hexdigest() if "PixelData" in ds else None,
    }


def _describe_object(data: bytes) -> dict[str, Any]:
    if data[:4] != b"PK\x03\x04":
        return _describe_dicom(data)
    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            body = archive.read(name)
            members[name] = (
                _describe_dicom(body)
                if body[128:132] == b"DICM"
                else {"sha256": hashlib.sha256(body).hexdigest()}
            )
    return {"members": members}


def _snapshot(stack: TestStack) -> dict[str, Any]:
    jobs = [
        {
            k: j[k]
            for k in (
                "id",
                "source_key",
                "status",
                "has_error",
                "error_code",
                "destination_key",
                "subject_event_crf_file_id",
                "attempts",
            )
        }
        for j in stack.jobs()
    ]
    series = [
        {
            k: s[k]
            for k in (
                "id",
                "edc_pipeline_file_id",
                "atri_uid",
                "study_uid",
                "series_uid",
                "series_number",
                "number_of_instances",
            )
        }
        for s in stack.series()
    ]
    errors = [
        {k: e[k] for k in ("edc_pipeline_file_id", "source_key", "error_code", "stage", "member", "message")}
        for e in stack.errors()
    ]
    quarantine = {
        key: _describe_object(stack.read(stack.names.destination_bucket, key))
        for key in stack.quarantine_keys()
    }
    return {
        "jobs": jobs,
        "series": series,
        "errors": errors,
        "quarantine": quarantine,
        "error_logs": stack.keys(stack.names.error_log_bucket),
    }


def test_golden_run_matches_the_committed_output(stack: TestStack, tmp_path: Path) -> None:
    with stack.worker(clock=lambda: FROZEN, WORKER_CONCURRENCY="1"):
        for n, (key, path) in enumerate(_inputs(tmp_path), start=1):
            stack.upload(key, path)
            if key.count("/") == 4:
                stack.wait_settled(n)
            else:  # a key outside the layout makes an error row, not a job
                stack.wait_for(lambda: any(e["edc_pipeline_file_id"] is None for e in stack.errors()))
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    actual = json.loads(json.dumps(_snapshot(stack), default=str))
    if os.environ.get("UPDATE_GOLDEN"):
        EXPECTED.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    expected = json.loads(EXPECTED.read_text())
    for section in expected:
        assert actual[section] == expected[section], section
    assert actual == expected
