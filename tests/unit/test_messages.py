"""Kafka messages in and out: payloads from messages, dead-letter headers, tag events."""

from __future__ import annotations

import json

from stream.messages import content_type, dlq_headers, encode_event, payload_from_message
from tagger.records import ClipRecord, Status
from tests.helpers import audio_bytes


def test_a_keyed_message_becomes_a_payload_under_its_key():
    p = payload_from_message(b"clip-1", b"bytes", "audio-clips", 3, 42)
    assert (p.clip_id, p.source, p.data, p.error) == ("clip-1", "kafka:audio-clips/3/42", b"bytes", None)


def test_a_message_without_a_usable_key_fails_under_its_address():
    for key, why in ((None, "no key"), (b"", "no key"), (b"\xff\xfe", "not UTF-8")):
        p = payload_from_message(key, b"bytes", "audio-clips", 0, 7)
        assert p.clip_id == "kafka:audio-clips/0/7" and why in p.error


def test_a_tombstone_is_an_empty_payload():
    assert payload_from_message(b"k", None, "t", 0, 0).data == b""


def test_dead_letter_headers_keep_the_originals_and_replace_the_error():
    headers = dlq_headers([("source", b"x"), ("error", b"old")], "decoding failed: ünïcode")
    assert headers == [("source", b"x"), ("error", "decoding failed: ünïcode".encode())]
    assert dlq_headers({"a": b"1"}, "e") == [("a", b"1"), ("error", b"e")]
    assert dlq_headers(None, "e") == [("error", b"e")]
    assert len(dict(dlq_headers([], "x" * 10_000))["error"]) == 4000  # bounded


def test_tag_event_and_content_type():
    rec = ClipRecord(clip_id="c", source="s", status=Status.TAGGED, top3=[("dog", 0.9123456789)], model_version="m")
    event = json.loads(encode_event(rec))
    assert event["top3"] == [{"label": "dog", "confidence": 0.912346}] and event["model_version"] == "m"
    assert content_type(audio_bytes("FLAC")) == "audio/flac" and content_type(b"hello") == "application/octet-stream"
