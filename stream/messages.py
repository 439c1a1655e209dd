"""What travels on the topics: input messages → payloads, results → output events.

Input ``audio-clips``: key = clip id (UTF-8), value = the audio file's bytes, headers
``content-type``, ``source``, ``sent-at``. Output ``audio-tags``: one JSON event per
tagged clip. Dead letters ``audio-clips-dlq``: the original message plus an ``error``
header (without the clip's bytes where they are more than the producer or broker takes).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tagger.audio import sniff_format
from tagger.records import ClipRecord, Payload

MESSAGE_OVERHEAD_BYTES = 64 * 1024  # key and headers on top of a clip's bytes, with room to spare
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "aiff": "audio/aiff",
                 "caf": "audio/x-caf", "mp3": "audio/mpeg", "aac": "audio/aac", "mp4": "audio/mp4",
                 "webm": "audio/webm"}


def content_type(data: bytes) -> str:
    """The MIME type the file's content announces (its name can lie)."""
    return CONTENT_TYPES.get(sniff_format(data[:16]) or "", "application/octet-stream")


def message_source(topic: str, partition: int, offset: int) -> str:
    return f"kafka:{topic}/{partition}/{offset}"


def payload_from_message(key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int) -> Payload:
    source = message_source(topic, partition, offset)
    data = value if isinstance(value, (bytes, bytearray)) else b""
    if key is None or key == b"":
        # No id to store a result under: the failure is recorded under the message's address.
        return Payload(data=data, source=source, clip_id=source, error="message has no key (the clip id)")
    try:
        clip_id = bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return Payload(data=data, source=source, clip_id=source, error="message key (clip id) is not UTF-8")
    return Payload(data=data, source=source, clip_id=clip_id)


def tag_event(record: ClipRecord, tagged_at: datetime | None = None) -> dict:
    return {
        "clip_id": record.clip_id,
        "source": record.source,
        "top3": [{"label": label, "confidence": round(conf, 6)} for label, conf in record.top3],
        "verdict": record.verdict,
        "custom": record.custom,
        "model_version": record.model_version,
        "duration_s": record.duration_s,
        "tagged_at": (tagged_at or datetime.now(UTC)).isoformat(),
    }


def encode_event(record: ClipRecord, tagged_at: datetime | None = None) -> bytes:
    """The ``audio-tags`` event; ``tagged_at`` defaults to now (a batch passes one for all)."""
    return json.dumps(tag_event(record, tagged_at)).encode()


def dlq_headers(original: list[tuple[str, bytes]] | dict | None, error: str) -> list[tuple[str, bytes]]:
    items = list(original.items()) if isinstance(original, dict) else list(original or [])
    headers = [(k, v) for k, v in items if k != "error"]
    headers.append(("error", error.encode("utf-8", "replace")[:4000]))
    return headers
