"""The Faust app: one agent that tags micro-batches from ``audio-clips``.

Per batch (``stream.batching.MicroBatcher``: started as soon as one of ``pipeline_depth``
slots is free, with up to ``max_batch`` messages that have arrived): messages → payloads →
decode → model → encode and idempotent upsert (retried with backoff while the database is
away) → one ``audio-tags`` event per tagged clip, the original message to
``audio-clips-dlq`` for every failure. Each message is held (``_Consumer.hold``) from the
moment it is read until all of that is durable, so a worker stopped, killed or failing at
any instant re-reads what it had not finished, and the upsert keeps one result per clip.

Decoding, the model and storing never run on the event loop (heartbeats keep flowing):
the runner does them: on the CPU in the one process pool, each batch whole in one of its
processes (``tagger.stages.PooledStages``); beside a GPU on threads of this process, while
one batch is in the model the next decoding (in the pool) and the previous being stored
(``tagger.stages.StageRunner``).
Batches finish out of order, so the consumer commits an offset only once every message
before it is acknowledged and released (``_Consumer._new_offset``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.errors import MessageSizeTooLargeError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

try:  # the lock under which faust-streaming acknowledges messages from any thread
    from faust.types.tuples import ack_lock
except ImportError:  # older Faust acknowledges on the event loop only
    import threading

    ack_lock = threading.RLock()
from stream.batching import MicroBatcher
from stream.messages import MESSAGE_OVERHEAD_BYTES, dlq_headers, encode_event, payload_from_message
from tagger.config import BATCH_SIZE, Settings
from tagger.device import resolve_device
from tagger.records import Status
from tagger.stages import BatchRunner, DatabaseUnavailable

log = logging.getLogger("soundtag.worker")
# A batch starts as soon as the worker has room for one, with what has arrived, up to
# MAX_BATCH: under light load a clip goes in alone at once (latency), under heavy load the
# queue fills while the pool is busy, so batches reach MAX_BATCH anyway.
MAX_BATCH = BATCH_SIZE
# Beside a GPU the network costs next to nothing per clip and a larger batch keeps the
# device busy: 128 measured best on an H100 (the benchmarks README).
GPU_MAX_BATCH = 128
# Longest a consumer fetch waits at the broker when no message is there. Apache Kafka
# answers a waiting fetch as soon as a message arrives, so this only bounds latency on
# brokers that do not (the dev broker holds the fetch for the whole wait, so Faust's
# built-in 1.5 s became the latency). An idle worker sends 10 small requests a second.
FETCH_MAX_WAIT_MS = 100


def _too_large(exc: BaseException) -> bool:
    """Refused as too large, by the producer before sending (Faust wraps its error) or by the broker."""
    return isinstance(exc, MessageSizeTooLargeError) or isinstance(exc.__cause__, MessageSizeTooLargeError)


async def _send_dead_letter(producer, topic: str, message, error: str, without_clip: bool = False):
    """The failed clip's message to the dead-letter topic with its error; its delivery future.

    One too large for the producer goes without the clip's bytes, its error saying so: a
    dead letter that can never be sent would stop the worker on it at every restart."""
    value = message.value or b""
    if not without_clip:
        try:
            return await producer.send(topic, message.key, value, partition=None, timestamp=None,
                                       headers=dlq_headers(message.headers, error))
        except Exception as exc:
            if not _too_large(exc):
                raise
    error = (f"{error} [the clip's {len(value)} bytes are left out of this dead letter: more than the worker's "
             "producer or the broker takes in one message (SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES)]")
    return await producer.send(topic, message.key, b"", partition=None, timestamp=None,
                               headers=dlq_headers(message.headers, error))


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust passes a fixed fetch_max_wait_ms=1500 to aiokafka and has no setting for
        # it; aiokafka reads the attribute when the consumer starts, which is after this.
        if hasattr(consumer, "_fetch_max_wait_ms"):
            consumer._fetch_max_wait_ms = cast(SoundtagApp, self.app).fetch_max_wait_ms
        else:  # a future aiokafka renamed it: keep working, just with Faust's wait
            log.warning("cannot set the consumer fetch wait on this aiokafka; using Faust's default")
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    """Faust's consumer, but it never commits past a message whose result is not durable."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[TP, set[int]] = {}  # offsets whose rows or dead letters are not durable yet

    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def hold(self, messages) -> None:
        """These messages' rows or dead letters are not durable yet: commit nothing past them.

        Held until ``release``; whatever ends the agent before that (a stop, a crash, an
        exception) leaves them held, so they are re-read after a restart. Faust's batch
        iterator acknowledges a whole batch in a ``finally:`` when its agent is
        cancelled, and acknowledged alone would mean committed.
        """
        with ack_lock:
            for m in messages:
                self._held.setdefault(m.tp, set()).add(m.offset)

    def release(self, messages) -> None:
        with ack_lock:
            for m in messages:
                self._held.get(m.tp, set()).discard(m.offset)

    async def on_partitions_revoked(self, revoked) -> None:
        # Faust commits what it may on revocation (a rebalance, or leaving the group on a
        # stop): the holds must still stand then. Afterwards the partitions are another
        # worker's, which re-reads them from the committed offset.
        await super().on_partitions_revoked(revoked)
        with ack_lock:
            for tp in revoked:
                self._held.pop(tp, None)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's commit offset, but never past a message that is held or still in flight.

        Faust commits the first run of consecutive acknowledged offsets and lets that run
        start one past the committed offset, or anywhere when the committed offset is 0
        or unknown. With several actors a later batch is often acknowledged first, so
        Faust would commit past the earlier batch's messages, and a worker killed then
        would lose them (seen: 299 of 300 clips after a SIGKILL). So: no commit for a
        partition while a message below its acknowledged ones is still in flight, and
        never a commit past the lowest held offset.
        """
        acked = self._acked.get(tp)
        if not acked:
            return super()._new_offset(tp)
        committed = self._committed_offset.get(tp)
        with ack_lock:  # acknowledgements may come from other threads
            in_flight = [m.offset for m in self._unacked_messages
                         if m.tp == tp and (committed is None or m.offset >= committed)]
            held = self._held.get(tp)
            lowest_held = min(held) if held else None
        if in_flight and min(in_flight) < min(acked):
            return None
        if lowest_held is None:
            return super()._new_offset(tp)
        # Let Faust see only the acknowledgements below the lowest held offset; the rest
        # wait (acknowledged, but not durable) until the hold is released.
        below = [o for o in acked if o < lowest_held]
        above = [o for o in acked if o >= lowest_held]
        if not below:
            return None
        self._acked[tp] = below
        try:
            return super()._new_offset(tp)
        finally:
            self._acked[tp] = self._acked[tp] + above


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class SoundtagApp(faust.App):
    """A Faust app whose Kafka consumer waits at most ``fetch_max_wait_ms`` per fetch."""

    def __init__(self, *args, fetch_max_wait_ms: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.pipeline_depth, self.max_batch = 2, MAX_BATCH  # batches in flight and their size (``create_app``)
        self.gave_up: str | None = None  # why the agent stopped the worker (the database stayed away)

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)


def faust_datadir(settings: Settings) -> Path:
    """Where Faust keeps its folders (empty here: the tables' store is memory://).

    Faust's default is ``<group>-data`` in the working directory, which a service user
    often may not write (the image's /app belongs to root) and which it leaves behind."""
    name = settings.consumer_group.replace("{", "{{").replace("}", "}}")  # Faust formats the path
    for base in (settings.cache_dir / "faust", Path(tempfile.gettempdir()) / f"soundtag-faust-{os.getuid()}"):
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        return base / name
    raise RuntimeError(f"no writable folder for the worker's data: {settings.cache_dir} nor {tempfile.gettempdir()}")


def create_app(settings: Settings, runner: BatchRunner, linger_s: float = 0.0) -> SoundtagApp:
    """The worker's app; ``runner`` tags and stores each batch (``PooledStages`` on the
    CPU, ``StageRunner`` beside a GPU). ``linger_s``: a free slot waits that long for a
    fuller batch (a benchmark's runner that answers at once; the worker starts at once)."""
    # As many batches in flight as the runner runs at once (one per pool process), at
    # least two: while one is in the model the next decodes and the one before is stored.
    pipeline_depth = max(2, getattr(runner, "batches_at_once", 2))
    max_batch = MAX_BATCH if resolve_device(settings.device).type == "cpu" else GPU_MAX_BATCH
    app = SoundtagApp(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=faust_datadir(settings),
        web_enabled=False,  # several workers per host; /metrics lives in the API
        topic_partitions=8,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=max_batch,
        broker_commit_interval=1.0,
        # Room for the largest clip plus its headers: a dead letter carries the clip.
        producer_max_request_size=settings.kafka_max_message_bytes + MESSAGE_OVERHEAD_BYTES,
        consumer_max_fetch_size=max(8 * 1024 * 1024, settings.kafka_max_message_bytes + MESSAGE_OVERHEAD_BYTES),
        stream_wait_empty=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    clips = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw",
                      partitions=app.conf.topic_partitions)
    def give_up(exc: Exception) -> None:
        # The batch stays held (never committed); stop so that a restart re-reads it.
        what = str(exc) if isinstance(exc, DatabaseUnavailable) else f"{type(exc).__name__}: {exc}"
        log.critical("%s; stopping the worker: the batch will be re-read after a restart", what,
                     exc_info=not isinstance(exc, DatabaseUnavailable))
        app.gave_up = app.gave_up or what
        os.kill(os.getpid(), signal.SIGTERM)

    async def tag_batch(messages: list) -> Coroutine[Any, Any, None] | None:
        """The stages; what follows them (the events, the broker's acknowledgement, the
        release) comes back as a follow-up, so the stages can take the next batch meanwhile
        (``MicroBatcher``)."""
        try:
            records = await runner.run([payload_from_message(m.key, m.value, m.topic, m.partition, m.offset)
                                        for m in messages])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # DatabaseUnavailable, or a fault of the runner
            give_up(exc)
            return None
        return publish_and_release(messages, records)

    async def publish_and_release(messages: list, records: list) -> None:
        try:
            # The producer itself, not Topic.send: that asks App.maybe_start_producer for it
            # per message, whose stampede guard yields to the event loop three times, so the
            # sender went out between messages with a produce request for every one to
            # three events. None of these sends yields: a batch's events go out together.
            producer = await app.maybe_start_producer()
            tagged_at = datetime.now(UTC)

            async def publish(message, record, without_clip: bool = False):
                if record.status == Status.TAGGED:
                    return await producer.send(settings.output_topic, record.clip_id.encode(),
                                               encode_event(record, tagged_at), partition=None, timestamp=None,
                                               headers=None)
                return await _send_dead_letter(producer, settings.dlq_topic, message,
                                               record.error or "unknown error", without_clip)

            deliveries = [await publish(m, r) for m, r in zip(messages, records, strict=True)]
            # A refused message stops the worker below with the batch held, except one refused
            # as too large: the broker fails a partition's whole request for one, so that
            # request's messages go again, its dead letters without their clips.
            outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
            retries = []
            for message, record, outcome in zip(messages, records, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not _too_large(outcome):
                        raise outcome
                    retries.append(await publish(message, record, without_clip=True))
            await asyncio.gather(*retries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault of the producer or of this code
            give_up(exc)
            return
        consumer = cast(_Consumer, app.consumer)
        consumer.release(messages)
        tagged_count = sum(r.status == Status.TAGGED for r in records)
        log.info("batch of %d from partitions %s: %d tagged, %d failed", len(records),
                 sorted({m.partition for m in messages}), tagged_count, len(records) - tagged_count)

    # One reader; the batcher runs up to pipeline_depth batches at once, each started as
    # soon as a slot is free (stream.batching says why not Faust's take_events).
    @app.agent(clips)
    async def tag_clips(stream):
        consumer = cast(_Consumer, app.consumer)
        batches = MicroBatcher(tag_batch, max_batch, pipeline_depth, linger_s)
        try:
            async for event in stream.events():
                # Held from the moment it is read: Faust acknowledges it when the next one
                # is read, and acknowledged alone would mean committed.
                consumer.hold([event.message])
                await batches.put(event.message)
        finally:
            await batches.close()

    app.tag_clips = tag_clips  # type: ignore[attr-defined]
    app.pipeline_depth, app.max_batch = pipeline_depth, max_batch
    app.runner = runner  # type: ignore[attr-defined]
    return app
