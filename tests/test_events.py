"""Event parsing: the three accepted shapes, test events, decoding, malformed bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.events import MalformedMessageError, parse_message


def s3_record(key: str, event: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-01T10:00:00.000Z",
        "eventName": event,
        "s3": {"bucket": {"name": "src"}, "object": {"key": key, "size": 10, "eTag": "abc", **obj}},
    }


def test_direct_s3_event_gives_decoded_key_and_etag() -> None:
    body = json.dumps({"Records": [s3_record("subjecteventcrffile%2F1%2F101%2FCT+Scan%2Fv1%2Bx.dcm")]})
    (obj,) = parse_message(body).objects
    assert obj.key == "subjecteventcrffile/1/101/CT Scan/v1+x.dcm"
    assert (obj.bucket, obj.etag, obj.size, obj.version_id) == ("src", "abc", 10, None)
    assert obj.event_time.isoformat() == "2026-11-01T10:00:00+00:00"


def test_several_records_and_non_creation_records() -> None:
    body = json.dumps({"Records": [s3_record("a"), s3_record("b", "ObjectRemoved:Delete"), s3_record("c")]})
    parsed = parse_message(body)
    assert [o.key for o in parsed.objects] == ["a", "c"]
    assert parsed.ignored == 1


def test_version_id_wins_over_etag() -> None:
    body = json.dumps({"Records": [s3_record("a", versionId="v-123")]})
    (obj,) = parse_message(body).objects
    assert obj.version_or_etag == "v-123"


def test_sns_wrapped_event() -> None:
    inner = json.dumps({"Records": [s3_record("x%2Fy+z")]})
    body = json.dumps({"Type": "Notification", "MessageId": "m", "Message": inner})
    (obj,) = parse_message(body).objects
    assert obj.key == "x/y z"


def test_eventbridge_object_created() -> None:
    body = json.dumps(
        {
            "version": "0",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": "2026-11-01T10:00:00Z",
            "unknown-field": 1,
            "detail": {
                "version": "0",
                "bucket": {"name": "src"},
                "object": {"key": "a+b", "size": 3, "etag": "e1", "version-id": "v9"},
            },
        }
    )
    (obj,) = parse_message(body).objects
    assert (obj.key, obj.version_id, obj.etag) == ("a b", "v9", "e1")


def eventbridge_body(obj: dict[str, object]) -> str:
    detail = {"bucket": {"name": "src"}, "object": {"key": "k", **obj}}
    envelope = {"detail-type": "Object Created", "source": "aws.s3", "time": "2026-11-01T10:00:00Z"}
    return json.dumps({**envelope, "detail": detail})


def test_eventbridge_null_version_of_an_unversioned_bucket_is_no_version() -> None:
    """Two uploads of one key to an unversioned bucket must not look like one object version."""
    first, second = (
        parse_message(eventbridge_body({"etag": etag, "version-id": "null"})).objects[0]
        for etag in ("e1", "e2")
    )
    assert (first.version_id, second.version_id) == (None, None)
    assert first.version_or_etag != second.version_or_etag


def test_eventbridge_etag_spelled_as_moto_does_is_read() -> None:
    (obj,) = parse_message(eventbridge_body({"eTag": '"e7"'})).objects
    assert obj.etag == "e7"


def test_eventbridge_other_detail_type_is_ignored() -> None:
    body = json.dumps({"detail-type": "Object Deleted", "source": "aws.s3", "detail": {}})
    assert parse_message(body).objects == ()


def test_s3_test_event_is_ignored() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "src"})
    parsed = parse_message(body)
    assert parsed.objects == () and parsed.ignored == 1


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": []}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}),
        json.dumps({"Records": [s3_record("")]}),
        json.dumps({"Type": "Notification", "Message": "{not json"}),
        json.dumps({"Records": [{**s3_record("a"), "eventTime": "yesterday"}]}),
    ],
)
def test_malformed_bodies_raise(body: str) -> None:
    with pytest.raises(MalformedMessageError):
        parse_message(body)


@pytest.mark.parametrize("size", ["1e400", "-1e400", "NaN", "-1", "7.5", "true", '"7"', "[7]"])
def test_a_size_that_is_not_a_finite_non_negative_integer_is_malformed(size: str) -> None:
    for body in (_s3_body_with_size(size), _eventbridge_body_with_size(size)):
        with pytest.raises(MalformedMessageError, match="size"):
            parse_message(body)


@pytest.mark.parametrize(("size", "parsed"), [("7", 7), ("7.0", 7), ("0", 0), ("null", None)])
def test_a_whole_size_is_read_and_a_missing_one_is_none(size: str, parsed: int | None) -> None:
    for body in (_s3_body_with_size(size), _eventbridge_body_with_size(size)):
        (created,) = parse_message(body).objects
        assert created.size == parsed


def _s3_body_with_size(size: str) -> str:
    obj = {"key": "k", "eTag": "e", "size": "SIZE"}
    record = {"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00Z",
              "s3": {"bucket": {"name": "b"}, "object": obj}}  # fmt: skip
    return json.dumps({"Records": [record]}).replace('"SIZE"', size)


def _eventbridge_body_with_size(size: str) -> str:
    obj = {"key": "k", "etag": "e", "size": "SIZE"}
    event = {"source": "aws.s3", "detail-type": "Object Created", "time": "2026-01-01T00:00:00Z",
             "detail": {"bucket": {"name": "b"}, "object": obj}}  # fmt: skip
    return json.dumps(event).replace('"SIZE"', size)
