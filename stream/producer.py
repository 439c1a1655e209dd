"""`soundtag publish`: send audio files to Kafka, one message per file (kafka-python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from stream.messages import MESSAGE_OVERHEAD_BYTES, content_type
from tagger.audio import sha256_hex
from tagger.config import get_settings
from tagger.files import find_audio_files


@dataclass
class PublishSummary:
    sent: int = 0
    failed: int = 0  # files not sent, the broker's fault or the file's
    failures: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[str] = field(default_factory=list)
    gave_up: str | None = None

    def __str__(self) -> str:
        lines = [f"failed: {path}: {error}" for path, error in self.failures[:20]]
        lines += [f"not audio, skipped: {path}" for path in self.not_audio[:20]]
        if self.gave_up:
            lines.append(f"stopped: {self.gave_up}")
        lines.append(f"{self.sent} sent, {self.failed} not sent, {len(self.not_audio)} not audio")
        return "\n".join(lines)


def topic_message_limit(bootstrap: str, topic: str) -> int:
    """The topic's max.message.bytes when the broker reports it, else SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES."""
    configured = get_settings().kafka_max_message_bytes
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
    except Exception:  # broad on purpose: brokers differ; the configured limit is the fallback
        pass
    return configured


def broker_reachable(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether any bootstrap server accepts a connection: a quick answer before the
    Kafka client's own retries (a minute of them) when the broker is simply not there."""
    import socket

    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def make_producer(bootstrap: str, max_message_bytes: int, max_block_s: float = 20.0):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        max_block_ms=int(max_block_s * 1000),
        request_timeout_ms=int(max_block_s * 1000),
        acks="all",
        compression_type="gzip",
        max_request_size=max_message_bytes + MESSAGE_OVERHEAD_BYTES,
        linger_ms=20,
        retries=5,
    )


def publish(paths, topic: str | None = None, bootstrap: str = "127.0.0.1:9092", progress: bool = True,
            producer=None, max_block_s: float = 20.0) -> PublishSummary:
    from kafka.errors import KafkaError

    from tagger.config import get_settings

    topic = topic or get_settings().input_topic
    found = find_audio_files(paths)
    summary = PublishSummary(not_audio=[str(p) for p in found.not_audio])
    if producer is None and not broker_reachable(bootstrap):
        summary.gave_up = f"Kafka broker unreachable at {bootstrap} (no answer within 5 s)"
        summary.failed = len(found.audio)
        return summary
    limit = topic_message_limit(bootstrap, topic)
    own = producer is None
    try:
        producer = producer or make_producer(bootstrap, limit, max_block_s)
    except KafkaError as exc:
        summary.gave_up = f"Kafka broker unreachable at {bootstrap}: {type(exc).__name__}: {exc}"
        summary.failed = len(found.audio)
        return summary
    futures = []
    try:
        for path in tqdm(found.audio, desc=f"publish → {topic}", unit="clip", disable=not progress):
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
                ("content-type", content_type(data).encode()),
                ("source", str(Path(path).resolve()).encode()),
                ("sent-at", datetime.now(UTC).isoformat().encode()),
            ]
            try:
                futures.append((path, producer.send(topic, key=sha256_hex(data).encode(), value=data,
                                                    headers=headers)))
            except KafkaError as exc:  # no metadata within max_block_s: the broker is away
                summary.gave_up = f"Kafka broker unreachable at {bootstrap}: {type(exc).__name__}: {exc}"
                break
        try:
            producer.flush(timeout=max_block_s * 3)
        except KafkaError as exc:
            summary.gave_up = summary.gave_up or f"Kafka broker did not take the messages: {type(exc).__name__}"
        for path, fut in futures:
            try:
                fut.get(timeout=max_block_s)
                summary.sent += 1
            except Exception as exc:  # broad on purpose: reported per file
                summary.failures.append((str(path), f"{type(exc).__name__}: {exc}"))
    finally:
        if own:
            try:
                producer.close(timeout=5)
            except Exception:  # broad on purpose: closing a producer whose broker is gone
                pass
    summary.failed = len(found.audio) - summary.sent
    return summary
