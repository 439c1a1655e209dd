"""`soundtag publish`: send audio files to Kafka, one message per file (kafka-python)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from tagger.audio import sha256_hex
from tagger.ingest import find_audio_files
from stream.messages import CONTENT_TYPES

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576  # Kafka's default max.message.bytes


@dataclass
class PublishSummary:
    sent: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.sent} sent, {self.failed} failed"]
        lines += [f"failed: {path}: {error}" for path, error in self.failures[:20]]
        return "\n".join(lines)


def topic_message_limit(bootstrap: str, topic: str) -> int:
    """The topic's max.message.bytes when the broker reports it, else SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES."""
    configured = int(os.environ.get("SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES))
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import ConfigResource, ConfigResourceType

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        finally:
            admin.close()
        value = result.get("topic", {}).get(topic, {}).get("max.message.bytes")
        if value is not None:
            return int(getattr(value, "value", value))
    except Exception:  # noqa: BLE001 - brokers differ; the configured limit is the fallback
        pass
    return configured


def make_producer(bootstrap: str, max_message_bytes: int):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="gzip",
        max_request_size=max_message_bytes + 64 * 1024,
        linger_ms=20,
        retries=5,
    )


def publish(paths, topic: str | None = None, bootstrap: str = "127.0.0.1:9092", progress: bool = True,
            producer=None) -> PublishSummary:
    from tagger.config import get_settings

    topic = topic or get_settings().input_topic
    files = find_audio_files(paths)
    limit = topic_message_limit(bootstrap, topic)
    own = producer is None
    producer = producer or make_producer(bootstrap, limit)
    summary = PublishSummary()
    futures = []
    try:
        for path in tqdm(files, desc=f"publish → {topic}", unit="clip", disable=not progress):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                summary.failures.append((str(path), f"cannot read file: {exc.strerror or exc}"))
                continue
            if not data:
                summary.failures.append((str(path), "empty file"))
                continue
            if len(data) > limit:
                summary.failures.append((str(path), f"file is {len(data)} bytes, over the topic's message size "
                                                    f"limit of {limit} bytes (max.message.bytes; "
                                                    "SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES)"))
                continue
            headers = [
                ("content-type", CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream").encode()),
                ("source", str(Path(path).resolve()).encode()),
                ("sent-at", datetime.now(timezone.utc).isoformat().encode()),
            ]
            futures.append((path, producer.send(topic, key=sha256_hex(data).encode(), value=data, headers=headers)))
        producer.flush()
        for path, fut in futures:
            try:
                fut.get(timeout=30)
                summary.sent += 1
            except Exception as exc:  # noqa: BLE001 - reported per file
                summary.failures.append((str(path), f"{type(exc).__name__}: {exc}"))
    finally:
        if own:
            producer.close()
    summary.failed = len(summary.failures)
    return summary
