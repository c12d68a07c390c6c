"""The CLI as an operator uses it: help, stamp, migrate, pipelines."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest

from service.cli import main
from service.local.samples import bundled_file, write_series_zip
from tests.stackfixtures import TestStack


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["worker"],
        ["migrate"],
        ["pipelines", "add"],
        ["stamp"],
        ["local"],
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["inventory"],
        ["inventory", "export"],
        ["redrive"],
        ["reprocess"],
        ["digest"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", *command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def test_stamp_prints_the_series_and_writes_the_uids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = write_series_zip(tmp_path / "series.zip")
    assert main(["stamp", str(archive), str(tmp_path / "out.zip"), "--prefix", "42"], {}) == 0
    out = capsys.readouterr().out
    assert "42.1" in out and "7 instance(s) stamped" in out
    assert "Doe^Peter" not in out
    # The integrity record: size and SHA-256 of what went in and what came out.
    for label, path in (("input", archive), ("output", tmp_path / "out.zip")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{label}: {path.stat().st_size} bytes, sha256 {digest}" in out
    single = tmp_path / "out.dcm"
    assert main(["stamp", "--no-checksums", str(bundled_file("CT_small.dcm")), str(single)], {}) == 0
    assert pydicom.dcmread(single)[0x0012, 0x0071].value == "0.1"
    out = capsys.readouterr().out
    assert "1 instance(s) stamped" in out and "sha256" not in out


def test_stamp_of_a_bad_file_prints_its_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_text("hello")
    assert main(["stamp", str(bad), str(tmp_path / "out.dcm")], {}) == 1
    assert capsys.readouterr().err.startswith("ERRS1012")


def test_stamp_shows_member_issues_by_position_never_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(bundled_file("CT_small.dcm"), "IM1.dcm")
        out.writestr("ROE^JANE.19650312", b"notes")
    assert main(["stamp", str(archive), str(tmp_path / "out.zip")], {}) == 0
    out_text = capsys.readouterr().out
    assert "ERRS1013 #2:" in out_text
    assert "ROE" not in out_text and "19650312" not in out_text


def test_migrate_and_pipelines(stack: TestStack, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PIPELINE_DATABASE_URL": stack.pipeline_url}
    assert main(["migrate"], env) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["pipelines", "add", "MRI", "--label", "MR uploads", "--ddfile", "MR Extra"], env) == 0
    assert main(["pipelines", "add", "OTHER", "--label", "x", "--ddfile", "CT Scan"], env) == 1
    assert "already handled by pipeline IMAGING" in capsys.readouterr().err
    assert main(["pipelines", "list"], env) == 0
    listing = capsys.readouterr().out
    assert "IMAGING" in listing and "MR Extra" in listing and "CT Scan, MRI Series" in listing
