"""The Faust app: one agent that tags micro-batches from ``audio-clips``.

Per batch (``take_events(max_batch, within)``): messages → payloads → decode and tag in
a worker thread (never on the event loop, so heartbeats keep flowing) → idempotent
upsert (retried with backoff while the database is away) → one ``audio-tags`` event
per tagged clip, the original message to ``audio-clips-dlq`` for every failure. Faust
acknowledges the batch only after all of that, so a worker killed at any instant
re-reads what it had not finished, and the upsert keeps one result per clip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stream.messages import dlq_headers, encode_event, payload_from_message
from tagger.config import Settings
from tagger.inference import Tagger
from tagger.pipeline import tag_payloads
from tagger.repository import ClipRecord, save_clips

log = logging.getLogger("soundtag.worker")


def save_with_retry(sessions: sessionmaker[Session], records: list[ClipRecord], max_delay: float = 10.0) -> None:
    """Write a batch; while the database is unreachable, wait and try again (nothing is dropped)."""
    delay = 0.5
    while True:
        try:
            with sessions.begin() as session:
                save_clips(session, records)
            return
        except (OperationalError,) as exc:
            log.warning("database unavailable (%s); retrying in %.1f s", str(exc).splitlines()[0], delay)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                log.warning("database connection lost; retrying in %.1f s", delay)
            else:
                _save_one_by_one(sessions, records, exc)
                return
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def _save_one_by_one(sessions, records: list[ClipRecord], batch_error: Exception) -> None:
    """A record the database refuses fails alone; the rest of the batch is stored."""
    log.error("batch write refused (%s); storing clip by clip", batch_error)
    for rec in records:
        try:
            with sessions.begin() as session:
                save_clips(session, [rec])
        except DBAPIError as exc:
            rec.status, rec.error = "failed", f"database refused the result: {str(exc).splitlines()[0]}"
            rec.top3, rec.features = [], None
            with sessions.begin() as session:
                save_clips(session, [ClipRecord(clip_id=rec.clip_id[:255], source=rec.source, status="failed",
                                                error=rec.error)])


def create_app(settings: Settings, tagger: Tagger, sessions: sessionmaker[Session]) -> faust.App:
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,  # several workers per host; /metrics lives in the API
        topic_partitions=8,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=settings.max_batch,
        broker_commit_interval=1.0,
        producer_max_request_size=8 * 1024 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
        stream_wait_empty=False,
    )
    clips = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw",
                      partitions=app.conf.topic_partitions)
    tags = app.topic(settings.output_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-tagger")

    @app.agent(clips)
    async def tag_clips(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.max_batch, within=settings.batch_within_s):
            messages = [e.message for e in events]
            payloads = [payload_from_message(m.key, m.value, m.topic, m.partition, m.offset) for m in messages]
            records = await loop.run_in_executor(executor, tag_payloads, tagger, payloads, settings.max_duration_s)
            await loop.run_in_executor(executor, save_with_retry, sessions, records)
            for message, record in zip(messages, records):
                key = record.clip_id.encode()
                if record.status == "tagged":
                    await tags.send(key=key, value=encode_event(record))
                else:
                    await dlq.send(key=message.key, value=message.value or b"",
                                   headers=dlq_headers(message.headers, record.error or "unknown error"))
            await app.producer.flush()
            tagged = sum(r.status == "tagged" for r in records)
            partitions = sorted({m.partition for m in messages})
            log.info("batch of %d from partitions %s: %d tagged, %d failed",
                     len(records), partitions, tagged, len(records) - tagged)

    app.tag_clips = tag_clips  # type: ignore[attr-defined]
    return app
