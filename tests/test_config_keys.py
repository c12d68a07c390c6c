"""Settings validation, key layout and quarantine names, error dictionary, backoff."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.tag import Tag

from service.config import Settings, redact_url
from service.errors import ERROR_CODES, ConfigError, PermanentError
from service.keys import QuarantineFields, error_log_name, parse_source_key, render_name
from service.worker import ExponentialBackoff

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env({})
    assert s.quarantine_prefix == "quarantine/"
    assert s.error_log_prefix == "image_pipelines/error_logs/"
    assert (s.replica_lag_interval_s, s.replica_lag_max_s) == (30, 900)
    assert s.dicom_tracking_tag == Tag(0x0012, 0x0071)
    assert s.notify_on_completion is True
    assert s.log_format == "json"


def test_error_log_bucket_defaults_to_destination() -> None:
    assert Settings.from_env({"DESTINATION_BUCKET": "labs"}).error_log_bucket == "labs"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_CONCURRENCY", "zero"),
        ("WORKER_CONCURRENCY", "0"),
        ("VISIBILITY_TIMEOUT_S", "99999999"),
        ("NOTIFY_ON_COMPLETION", "perhaps"),
        ("LOG_FORMAT", "xml"),
        ("DICOM_TRACKING_TAG", "not a tag"),
        ("DICOM_TRACKING_TAG", "7FE0,0010"),
        ("ADMIN_TOPIC_ARN", "my-topic"),
        ("PIPELINE_DATABASE_URL", "mysql://u:secret@h/db"),
        ("QUARANTINE_KEY_TEMPLATE", "{ddcrf}/{patient_name}"),
        ("QUARANTINE_KEY_TEMPLATE", "{ddcrf}_{timestamp}{ext}"),
        ("EDC_LOOKUP_SQL", "/no/such/file.sql"),
    ],
)
def test_malformed_setting_names_itself_in_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert name in message and "\n" not in message
    assert "secret" not in message


def test_missing_required_setting_is_named() -> None:
    with pytest.raises(ConfigError, match="PIPELINE_QUEUE_URL"):
        Settings.from_env({}).require("PIPELINE_QUEUE_URL")


def test_cli_exits_2_with_one_line_for_a_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(["migrate"], {"WORKER_CONCURRENCY": "-1"}) == 2
    assert main(["migrate"], {}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "WORKER_CONCURRENCY" in err[0] and "PIPELINE_DATABASE_URL" in err[1]


def test_redact_url_hides_password_only() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"


def test_source_key_with_spaces_and_extension() -> None:
    key = parse_source_key("subjecteventcrffile/12/345/CT Scan/v1+x.DCM")
    assert (key.subject_id, key.subjecteventcrf_id, key.ddfile_name) == (12, 345, "CT Scan")
    assert (key.version_code, key.ext) == ("v1+x", ".dcm")


@pytest.mark.parametrize(
    "key",
    [
        "other/1/2/CT/v1.dcm",
        "subjecteventcrffile/1/2/v1.dcm",
        "subjecteventcrffile/a/2/CT/v1.dcm",
        "subjecteventcrffile/1/2/ /v1.dcm",
        "subjecteventcrffile/1/2/CT/",
        "subjecteventcrffile/1/2/CT/x/v1.dcm",
    ],
)
def test_wrong_key_layout_is_errl1001(key: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_source_key(key)
    assert info.value.code == "ERRL1001"


def test_quarantine_name_strips_white_space_from_every_field() -> None:
    fields = QuarantineFields(
        ddcrf="Imaging Form",
        ddfile="CT Scan",
        participant="P 001",
        event="WEEK 4",
        subjecteventcrf_id=101,
        revision=2,
        pipeline_file_id=7,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        ext=".zip",
    )
    template = Settings.from_env({}).quarantine_key_template
    assert render_name(template, fields) == (
        "ImagingForm_CTScan/ImagingForm_CTScan_P001_WEEK4_101_2_7_20260102_030405.zip"
    )
    assert (
        error_log_name(template, fields)
        == "ImagingForm_CTScan_P001_WEEK4_101_2_7_20260102_030405_error_log.txt"
    )


def test_every_error_code_is_documented_in_the_readme() -> None:
    text = README.read_text()
    documented = set(re.findall(r"\bERR[LS]\d{4}\b", text))
    assert documented <= set(ERROR_CODES)


def test_the_readme_error_table_says_what_service_errors_says() -> None:
    # Each row: code | meaning | retried | outcome (what becomes of the job and its message) | design.
    rows = [
        [cell.strip() for cell in line.strip("|").split(" | ")]
        for line in README.read_text().splitlines()
        if re.match(r"^\| ERR[LS]\d{4} \|", line)
    ]
    assert [row[0] for row in rows] == list(ERROR_CODES)  # every code once, in the module's order
    for code, meaning, retried, outcome, design in rows:
        entry = ERROR_CODES[code]
        assert meaning == entry.meaning, code
        assert retried == ("yes" if entry.retryable else "no"), code
        assert outcome == entry.job_status, code
        assert design == ("yes" if entry.design else "new"), code


def test_backoff_is_a_pure_doubling_function_of_the_receive_count() -> None:
    policy = ExponentialBackoff(base_s=15, cap_s=900)
    assert [policy.delay_s(n) for n in (1, 2, 3, 7, 50)] == [15, 30, 60, 900, 900]
