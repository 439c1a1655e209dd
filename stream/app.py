"""The Faust app: one agent that tags micro-batches from ``audio-clips``.

Per batch (``take_events(max_batch, within)``): messages → payloads → decode → model →
encode and idempotent upsert (retried with backoff while the database is away) → one
``audio-tags`` event per tagged clip, the original message to ``audio-clips-dlq`` for
every failure. Faust acknowledges a batch only after all of that, so a worker killed at
any instant re-reads what it had not finished, and the upsert keeps one result per clip.

Decoding, the model and storing each run in their own single thread, never on the event
loop (heartbeats keep flowing). ``pipeline_depth`` agent actors share the partitions'
queue, so while one batch is in the model the next decodes and the previous is stored.
Actors finish out of order, so the consumer commits an offset only once every message
before it is acknowledged, whichever actor handled it (``_Consumer._new_offset``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

try:  # the lock under which faust-streaming acknowledges messages from any thread
    from faust.types.tuples import ack_lock
except ImportError:  # older Faust acknowledges on the event loop only
    import threading

    ack_lock = threading.RLock()
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stream.messages import dlq_headers, encode_event, payload_from_message
from tagger.config import Settings
from tagger.inference import Tagger
from tagger.pipeline import Tagged, decode_payloads, finish_records, run_model
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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust passes a fixed fetch_max_wait_ms=1500 to aiokafka and has no setting for
        # it; aiokafka reads the attribute when the consumer starts, which is after this.
        if hasattr(consumer, "_fetch_max_wait_ms"):
            consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        else:  # a future aiokafka renamed it: keep working, just with Faust's wait
            log.warning("cannot set the consumer fetch wait on this aiokafka; using Faust's default")
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's commit offset, but never past a message that is still being processed.

        Faust commits the first run of consecutive acknowledged offsets and lets that run
        start one past the committed offset, or anywhere when the committed offset is 0
        or unknown. With several actors a later batch is often acknowledged first, so
        Faust would commit past the earlier batch's messages, and a worker killed then
        would lose them (seen: 299 of 300 clips after a SIGKILL). So: no commit for a
        partition while a message below its acknowledged ones is still in flight.
        """
        acked = self._acked.get(tp)
        if acked:
            committed = self._committed_offset.get(tp)
            with ack_lock:  # acknowledgements may come from other threads
                in_flight = [m.offset for m in self._unacked_messages
                             if m.tp == tp and (committed is None or m.offset >= committed)]
            if in_flight and min(in_flight) < min(acked):
                return None
        return super()._new_offset(tp)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class SoundtagApp(faust.App):
    """A Faust app whose Kafka consumer waits at most ``fetch_max_wait_ms`` per fetch."""

    def __init__(self, *args, fetch_max_wait_ms: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings, tagger: Tagger, sessions: sessionmaker[Session]) -> faust.App:
    app = SoundtagApp(
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
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    clips = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw",
                      partitions=app.conf.topic_partitions)
    tags = app.topic(settings.output_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-decode")
    model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-model")
    storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundtag-store")

    def store(tagged: Tagged) -> list[ClipRecord]:
        records = finish_records(tagged)
        save_with_retry(sessions, records)
        return records

    @app.agent(clips, concurrency=settings.pipeline_depth)
    async def tag_clips(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.max_batch, within=settings.batch_within_s):
            messages = [e.message for e in events]
            payloads = [payload_from_message(m.key, m.value, m.topic, m.partition, m.offset) for m in messages]
            decoded = await loop.run_in_executor(decoder, decode_payloads, payloads, settings.max_duration_s)
            tagged = await loop.run_in_executor(model, run_model, tagger, decoded)
            records = await loop.run_in_executor(storer, store, tagged)
            for message, record in zip(messages, records):
                key = record.clip_id.encode()
                if record.status == "tagged":
                    await tags.send(key=key, value=encode_event(record))
                else:
                    await dlq.send(key=message.key, value=message.value or b"",
                                   headers=dlq_headers(message.headers, record.error or "unknown error"))
            await app.producer.flush()
            tagged_count = sum(r.status == "tagged" for r in records)
            partitions = sorted({m.partition for m in messages})
            log.info("batch of %d from partitions %s: %d tagged, %d failed",
                     len(records), partitions, tagged_count, len(records) - tagged_count)

    app.tag_clips = tag_clips  # type: ignore[attr-defined]
    return app
