"""Streaming end to end: a real Kafka-protocol broker, real Faust workers, real PostgreSQL.

Group joins take ~30 s on this broker, so the module starts one worker and reuses it;
the crash and two-worker tests start more.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
import soundfile as sf
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from deploy.dev_broker import start_broker
from deploy.processes import free_port
from tagger.features import window_starts
from tests.helpers import (
    DEADLY,
    ENCODED_FORMATS,
    audio_bytes,
    block_database,
    deadly_decoder_path,
    encoded_bytes,
    migrated_database,
    wait_until,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 4


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"broker did not open port {port}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("broker") / "tansu.log", "w")
    proc = start_broker(port, log)
    _wait_port(port)
    bootstrap = f"127.0.0.1:{port}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in ("audio-clips", "audio-tags", "audio-clips-dlq")])
    admin.close()
    yield bootstrap
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def stream_db():
    with migrated_database("soundtag_stream") as database:
        yield database


class Worker:
    def __init__(self, env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "worker"], env={**os.environ, **env},
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            if "Worker ready" in self.log_path.read_text():
                return
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready:\n{self.log_path.read_text()[-3000:]}")

    def batches(self) -> int:
        return self.log_path.read_text().count("batch of ")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def worker_env(broker, stream_db, random_checkpoint, tmp_path_factory):
    # The workers' decoders die on DEADLY… messages: a clip that kills its pool process.
    return {"SOUNDTAG_DATABASE_URL": stream_db[1], "SOUNDTAG_KAFKA_BOOTSTRAP": broker,
            "SOUNDTAG_MODEL_PATH": str(random_checkpoint), "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1",
            "SOUNDTAG_DEVICE": "cpu", "SOUNDTAG_CONSUMER_GROUP": "soundtag-test",
            "SOUNDTAG_MAX_DURATION_S": "120", "PYTHONPATH": deadly_decoder_path(tmp_path_factory.mktemp("hooks"))}


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    w = Worker(worker_env, tmp_path_factory.mktemp("worker") / "worker-a.log")
    w.wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def producer(broker):
    p = KafkaProducer(bootstrap_servers=broker, max_request_size=4_000_000)
    yield p
    p.close()


def _clip(seed: int, seconds: float = 1.0) -> bytes:
    return audio_bytes("WAV", seconds=seconds, sr=16000, seed=seed)


def _send(producer, items: list[tuple[bytes | None, bytes]]) -> None:
    for key, value in items:
        producer.send("audio-clips", key=key, value=value,
                      headers=[("content-type", b"audio/wav"), ("source", b"test"), ("sent-at", b"now")])
    producer.flush()


def _query(url: str, sql: str, params=None):
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        return conn.execute(sql, params).fetchall()


def _wait_rows(url: str, ids: list[str], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        n = _query(url, "SELECT count(*) FROM clips WHERE id = ANY(%s)", (ids,))[0][0]
        if n == len(ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{n} of {len(ids)} clips stored")


def _assert_exactly_once(url: str, ids: list[str]) -> None:
    rows = _query(url, "SELECT id, status FROM clips WHERE id = ANY(%s)", (ids,))
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {"tagged"}
    tags = _query(url, "SELECT count(*) FROM tags WHERE clip_id = ANY(%s)", (ids,))[0][0]
    assert tags == 3 * len(ids)


def _read_topic(broker: str, topic: str, expect: int, timeout: float = 60) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                             group_id=f"reader-{uuid.uuid4().hex[:6]}", consumer_timeout_ms=3000)
    out, deadline = [], time.time() + timeout
    while time.time() < deadline and len(out) < expect:
        out += list(consumer)
    consumer.close()
    return out


@pytest.mark.slow
def test_300_clips_published_are_tagged_once_with_300_events(worker, producer, stream_db, broker, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(300):
        (folder / f"c{i:03d}.wav").write_bytes(_clip(i))
    from stream.producer import publish

    summary = publish([folder], topic="audio-clips", bootstrap=broker, progress=False)
    assert summary.sent == 300 and summary.failed == 0
    from tagger.audio import sha256_hex

    ids = [sha256_hex(p.read_bytes()) for p in sorted(folder.iterdir())]
    _wait_rows(stream_db[1], ids)
    _assert_exactly_once(stream_db[1], ids)
    events = [json.loads(m.value) for m in _read_topic(broker, "audio-tags", 300)]
    mine = [e for e in events if e["clip_id"] in set(ids)]
    assert len(mine) == 300 and len({e["clip_id"] for e in mine}) == 300
    assert all(len(e["top3"]) == 3 and e["model_version"] and e["verdict"] in ("label", "unknown", "silence")
               for e in mine)


def _thirty_minute_flac() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(30 * 60 * 8000, dtype=np.int16), 8000, format="FLAC")
    return buf.getvalue()


@pytest.mark.slow
def test_poison_messages_go_to_the_dlq_and_good_clips_around_them_are_tagged(worker, producer, stream_db, broker):
    tag = uuid.uuid4().hex[:6]
    good = [(f"good-{tag}-{i}".encode(), _clip(1000 + i)) for i in range(6)]
    poison = [
        (f"random-{tag}".encode(), os.urandom(5000)),
        (f"empty-{tag}".encode(), b""),
        (f"truncated-{tag}".encode(), _clip(7)[:30]),
        (f"long-{tag}".encode(), _thirty_minute_flac()),
        (None, _clip(8)),
        # more than the worker's producer takes (SOUNDTAG_KAFKA_MAX_MESSAGE_BYTES, 1 MiB): its
        # dead letter goes without the clip instead of stopping the worker at every restart
        (f"huge-{tag}".encode(), os.urandom(1_200_000)),
        (f"deadly-{tag}".encode(), DEADLY + _clip(9)),  # kills the pool process that decodes it, twice
    ]
    _send(producer, [good[0], poison[0], good[1], poison[1], good[2], poison[2], good[3], poison[3], good[4],
                     poison[4], good[5], poison[5], poison[6]])
    good_ids = [k.decode() for k, _ in good]
    bad_ids = [k.decode() for k, _ in poison if k]
    _wait_rows(stream_db[1], good_ids + bad_ids)
    _assert_exactly_once(stream_db[1], good_ids)
    failed = dict(_query(stream_db[1], "SELECT id, error FROM clips WHERE id = ANY(%s)", (bad_ids,)))
    assert set(failed) == set(bad_ids) and all(failed.values())
    assert "over the limit" in failed[f"long-{tag}"]
    assert "no audio data" in failed[f"empty-{tag}"]
    assert failed[f"deadly-{tag}"] == "the tagging process died on this clip (exit code 3); nothing was tagged"
    keyless = _query(stream_db[1], "SELECT error FROM clips WHERE source = id AND error LIKE %s",
                     ("message has no key%",))
    assert keyless
    dead = _read_topic(broker, "audio-clips-dlq", 7)
    errors = {(m.key or b"").decode(): dict(m.headers).get("error", b"").decode() for m in dead}
    for k in [*bad_ids, ""]:
        assert errors.get(k), f"{k!r} missing from the DLQ"
    huge = next(m for m in dead if m.key == f"huge-{tag}".encode())
    assert huge.value == b"" and "1200000 bytes are left out of this dead letter" in errors[f"huge-{tag}"]
    assert next(m for m in dead if m.key == f"random-{tag}".encode()).value == poison[0][1]
    assert worker.proc.poll() is None  # still running


def test_database_outage_mid_stream_loses_nothing(worker, producer, stream_db):
    name, url = stream_db
    items = [(f"outage-{i}".encode(), _clip(2000 + i)) for i in range(150)]
    _send(producer, items[:50])
    first = [k.decode() for k, _ in items[:50]]
    wait_until(lambda: _query(url, "SELECT count(*) FROM clips WHERE id = ANY(%s)", (first,))[0][0] > 0, 120,
               "the first clips to be stored")
    block_database(name, True)
    try:
        _send(producer, items[50:])
        # the worker meets the dead database and waits for it (one line saying so)
        wait_until(lambda: "database unavailable" in worker.log_path.read_text(), 120, "the worker to notice")
    finally:
        block_database(name, False)
    ids = [k.decode() for k, _ in items]
    _wait_rows(url, ids)
    _assert_exactly_once(url, ids)
    assert "database" in worker.log_path.read_text()  # it noticed and retried
    assert worker.proc.poll() is None


def _stage_processes(worker_pid: int) -> list[int]:
    """The worker's stage processes (its children that multiprocessing spawned to serve)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == worker_pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return found


def test_a_stage_process_killed_mid_stream_is_replaced_and_nothing_is_lost(worker, producer, stream_db):
    url = stream_db[1]
    before = _stage_processes(worker.proc.pid)
    assert len(before) == 2, "the module's worker runs one stage process per core"
    items = [(f"stagekill-{i}".encode(), _clip(5000 + i, seconds=5.0)) for i in range(200)]
    _send(producer, items)
    ids = [k.decode() for k, _ in items]
    wait_until(lambda: _query(url, "SELECT count(*) FROM clips WHERE id = ANY(%s)", (ids,))[0][0] > 0, 120,
               "the first clips to be stored")
    os.kill(before[0], signal.SIGKILL)
    # A fast machine may have stored the whole first wave by now: a second one reaches the
    # dead process whatever it was doing when it died.
    more = [(f"stagekill-{i}".encode(), _clip(5000 + i, seconds=5.0)) for i in range(200, 300)]
    _send(producer, more)
    ids += [k.decode() for k, _ in more]
    _wait_rows(url, ids)
    _assert_exactly_once(url, ids)
    assert worker.proc.poll() is None, "the worker goes on"
    after = _stage_processes(worker.proc.pid)
    assert len(after) == 2 and before[0] not in after
    # Said once the replacement has loaded the model, which may be after every row is in:
    # the dead process may have stored its batch before it was killed.
    wait_until(lambda: "replaced it" in worker.log_path.read_text(), 120, "the worker to say it replaced the process")


def test_compressed_formats_and_odd_rates_are_published_and_tagged(worker, stream_db, broker, tmp_path):
    from stream.producer import publish
    from tagger.audio import sha256_hex

    folder = tmp_path / "formats"
    folder.mkdir()
    for i, (name, spec) in enumerate(ENCODED_FORMATS.items()):
        (folder / f"clip.{name}").write_bytes(encoded_bytes(*spec, seconds=1.5, seed=60 + i))
    (folder / "odd-rate.wav").write_bytes(audio_bytes("WAV", 2.0, sr=44099, seed=64))
    (folder / "cut.wav").write_bytes(audio_bytes("WAV", 1.0, seed=65)[: 44 + 264])
    (folder / "notes.txt").write_text("not audio")
    # Longer than the worker holds (60 s) and within the message limit: decoded again from the message.
    (folder / "long.webm").write_bytes(encoded_bytes("webm", "libopus", 48000, seconds=90.0, seed=66))
    summary = publish([folder], topic="audio-clips", bootstrap=broker, progress=False)
    assert (summary.sent, summary.failed, summary.not_audio) == (6, 0, [str(folder / "notes.txt")])
    ids = {p.name: sha256_hex(p.read_bytes()) for p in folder.iterdir() if p.suffix != ".txt"}
    _wait_rows(stream_db[1], list(ids.values()))
    _assert_exactly_once(stream_db[1], [v for k, v in ids.items() if k != "cut.wav"])
    error = _query(stream_db[1], "SELECT error FROM clips WHERE id = %s", (ids["cut.wav"],))[0][0]
    assert error == "truncated: header 1.00 s, data 0.003 s"
    windows = _query(stream_db[1], "SELECT json_array_length(timeline) FROM clip_features WHERE clip_id = %s",
                     (ids["long.webm"],))[0][0]
    assert windows == len(window_starts(1 + 90 * 44100 // 512))


def _stop_mid_stream_then_restart(sig, prefix, seed, worker, worker_env, producer, url, log_path) -> None:
    """Publish 300 clips, send ``sig`` once part of them is stored, restart, check exactly once."""
    items = [(f"{prefix}-{i}".encode(), _clip(seed + i, seconds=2.0)) for i in range(300)]
    ids = [k.decode() for k, _ in items]
    _send(producer, items)
    deadline = time.time() + 120
    while time.time() < deadline:  # stop once part of the stream is stored
        if _query(url, "SELECT count(*) FROM clips WHERE id = ANY(%s)", (ids,))[0][0] >= 40:
            break
        time.sleep(0.2)
    worker.proc.send_signal(sig)
    worker.proc.wait(timeout=60)  # it stops within seconds; the timeout only catches a hang
    stored = _query(url, "SELECT count(*) FROM clips WHERE id = ANY(%s)", (ids,))[0][0]
    assert 0 < stored < 300, "the stop should land mid-stream"
    restarted = Worker(worker_env, log_path)
    try:
        restarted.wait_ready(timeout=300)
        _wait_rows(url, ids, timeout=400)
        _assert_exactly_once(url, ids)
    finally:
        worker.proc, worker.log_path, worker.log = restarted.proc, restarted.log_path, restarted.log


@pytest.mark.slow
def test_sigterm_mid_stream_then_restart_leaves_exactly_one_result_per_clip(worker, worker_env, producer,
                                                                             stream_db, tmp_path):
    _stop_mid_stream_then_restart(signal.SIGTERM, "term", 5000, worker, worker_env, producer, stream_db[1],
                                  tmp_path / "worker-after-term.log")


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_leaves_exactly_one_result_per_clip(worker, worker_env, producer,
                                                                             stream_db, tmp_path):
    _stop_mid_stream_then_restart(signal.SIGKILL, "crash", 3000, worker, worker_env, producer, stream_db[1],
                                  tmp_path / "worker-restarted.log")


@pytest.mark.slow
def test_two_workers_in_one_group_split_the_partitions(worker, worker_env, producer, stream_db, tmp_path):
    url = stream_db[1]
    second = Worker(worker_env, tmp_path / "worker-b.log")
    try:
        second.wait_ready(timeout=300)
        before_first = Path(worker.log_path).read_text().count("batch of ")
        # Clips go out in rounds until both workers have tagged some: each has its share of
        # the partitions once the rebalance is through.
        items: list[tuple[bytes, bytes]] = []

        def both_tagged() -> bool:
            first_more = Path(worker.log_path).read_text().count("batch of ") > before_first
            if not (first_more and second.batches() > 0) and len(items) < 400:
                batch = [(f"pair-{len(items) + i}".encode(), _clip(4000 + len(items) + i)) for i in range(20)]
                _send(producer, batch)
                items.extend(batch)
            return first_more and second.batches() > 0

        wait_until(both_tagged, 400, "both workers to tag clips", interval=1.0)
        ids = [k.decode() for k, _ in items]
        _wait_rows(url, ids, timeout=400)
        _assert_exactly_once(url, ids)
        assert second.batches() > 0, "the second worker got no partition"
        assert "in 2 processes on cpu" in Path(worker.log_path).read_text()
        assert "in 2 processes on cpu" in second.log_path.read_text()
        assert Path(worker.log_path).read_text().count("batch of ") > before_first, "the first worker got none"
    finally:
        second.stop()


def test_worker_consumer_waits_briefly_per_fetch_and_keeps_every_pool_process_busy():
    """Faust hard-codes a 1.5 s fetch wait; the worker's consumer gets FETCH_MAX_WAIT_MS. The
    batches in flight are as many as the runner runs at once (one per pool process)."""
    import asyncio

    from stream.app import FETCH_MAX_WAIT_MS, create_app
    from tagger.config import Settings

    class FourAtOnce:
        batches_at_once = 4

    async def build():
        settings = Settings(database_url="sqlite://", kafka_bootstrap="127.0.0.1:1", device="cpu")
        app = create_app(settings, runner=FourAtOnce())  # type: ignore[arg-type]
        consumer = app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms, app.pipeline_depth, app.max_batch
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == (FETCH_MAX_WAIT_MS, 4, 32)


def test_worker_never_commits_past_a_message_another_actor_still_holds():
    """Two actors: the later batch is acknowledged first. Faust alone would commit past the
    earlier batch's first message (a SIGKILL then lost it); the worker's consumer waits."""
    import asyncio

    from faust.types import TP
    from faust.types.tuples import Message

    from stream.app import create_app
    from tagger.config import Settings

    async def offsets():
        settings = Settings(database_url="sqlite://", kafka_bootstrap="127.0.0.1:1")
        app = create_app(settings, runner=None)
        app.topics.add(app.topic(settings.input_topic))
        await app.topics._update_indices()  # what subscribing does when the worker starts
        consumer = app.consumer
        seen = []
        # Faust lets one unacknowledged message through, and any number when the
        # committed offset is 0 or unknown.
        for partition, (committed, held_back) in enumerate([(10, 1), (10, 2), (0, 2), (None, 2)]):
            tp = TP(settings.input_topic, partition)
            start = committed or 0
            messages = [Message(settings.input_topic, tp.partition, start + i, 0.0, 0, None, b"k", b"v", None, tp=tp)
                        for i in range(10)]
            for m in messages:
                consumer.track_message(m)
            consumer._committed_offset[tp] = committed
            for m in messages[held_back:6]:  # actor B's batch done; actor A still holds the first ones
                consumer.ack(m)
            held = consumer._new_offset(tp)
            for m in messages[:held_back]:  # actor A done
                consumer.ack(m)
            seen.append((held, consumer._new_offset(tp) - start))
        return seen

    assert asyncio.run(offsets()) == [(None, 6)] * 4


async def _tracked_consumer(count: int, committed: int):
    """The worker's own Faust consumer with ``count`` messages tracked from offset ``committed``."""
    from faust.types import TP
    from faust.types.tuples import Message

    from stream.app import create_app
    from tagger.config import Settings

    settings = Settings(database_url="sqlite://", kafka_bootstrap="127.0.0.1:1")
    app = create_app(settings, runner=None)
    app.topics.add(app.topic(settings.input_topic))
    await app.topics._update_indices()
    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    consumer._committed_offset[tp] = committed
    messages = [Message(settings.input_topic, 0, committed + i, 0.0, 0, None, b"k", b"v", None, tp=tp)
                for i in range(count)]
    for m in messages:
        consumer.track_message(m)
    return consumer, tp, messages


def test_a_batch_whose_agent_ends_early_is_never_committed():
    """Faust's batch iterator acknowledges a cancelled batch in its ``finally:``; messages
    the worker still holds block the commit anyway, even after they are garbage."""
    import asyncio
    import gc

    async def offsets():
        consumer, tp, messages = await _tracked_consumer(8, committed=10)
        consumer.hold(messages[:4])  # batch A taken; its agent is then cancelled
        for m in messages:  # Faust acknowledges batch A anyway; batch B is done
            consumer.ack(m)
        del m
        messages_b = messages[4:]
        del messages
        gc.collect()
        blocked = consumer._new_offset(tp)
        consumer.release(messages_b)
        return blocked

    assert asyncio.run(offsets()) is None


@pytest.mark.slow
def test_worker_whose_broker_goes_away_logs_little_and_stops_within_seconds(worker_env, tmp_path):
    port = free_port()
    broker_log = open(tmp_path / "tansu.log", "w")
    broker_proc = start_broker(port, broker_log)
    _wait_port(port)
    env = {**worker_env, "SOUNDTAG_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "SOUNDTAG_CONSUMER_GROUP": "soundtag-gone"}
    lonely = Worker(env, tmp_path / "worker-gone.log")
    try:
        lonely.wait_ready(timeout=300)
        broker_proc.terminate()
        broker_proc.wait(timeout=10)
        before = len(lonely.log_path.read_text().splitlines())
        time.sleep(13)  # the span the test is about: how much a worker logs while its broker is gone
        during = len(lonely.log_path.read_text().splitlines()) - before
        assert lonely.proc.poll() is None
        lonely.proc.send_signal(signal.SIGTERM)
        lonely.proc.wait(timeout=60)  # it stops within seconds; the timeout only catches a hang
    finally:
        lonely.stop(signal.SIGKILL)
        if broker_proc.poll() is None:
            broker_proc.kill()
        broker_log.close()
    assert during < 50, lonely.log_path.read_text()[-3000:]
    assert lonely.proc.returncode == 0


def test_a_held_batch_above_finished_ones_caps_the_commit():
    """Batch A (offsets 10–13) is stored and released; batch B (14–17) is still held when
    its agent is cancelled and Faust acknowledges it: the commit stops at 14."""
    import asyncio

    async def offsets():
        consumer, tp, messages = await _tracked_consumer(8, committed=10)
        consumer.hold(messages)
        consumer.release(messages[:4])  # batch A durable
        for m in messages:  # A acknowledged normally, B by Faust's finally
            consumer.ack(m)
        capped = consumer._new_offset(tp)
        consumer._committed_offset[tp] = capped
        still = consumer._new_offset(tp)
        consumer.release(messages[4:])  # had B become durable after all
        return capped, still, consumer._new_offset(tp)

    assert asyncio.run(offsets()) == (14, None, 18)
