"""The one process pool, on every kind of work it runs: tagging and storing batches (the
worker's and the API's), decoding for a GPU's process, and its one crash policy. Real
processes, a real model file, real PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch

from tagger.pipeline import _decode_one, decode_chunk, decode_payloads, died_decoding
from tagger.pool import PoolClosed, PoolError, ProcessPool
from tagger.records import Payload, Status
from tagger.stages import DatabaseUnavailable, PipelineJob, PooledStages
from tests.helpers import (
    KillsTheProcessThatReadsIt,
    audio_bytes,
    block_database,
    busy_once_read,
    migrated_database,
    wait_until,
)

decode_task = functools.partial(decode_chunk, max_duration_s=60)


@pytest.fixture(scope="module")
def stages_db():
    with migrated_database("soundtag_pool") as database:
        yield database


def _job(stages_db, checkpoint, cache) -> PipelineJob:
    return PipelineJob(model_path=str(checkpoint), database_url=stages_db[1], max_duration_s=60, db_retry_s=1.0,
                       export_cache=str(cache))


@pytest.fixture(scope="module")
def runner(stages_db, random_checkpoint, tmp_path_factory):
    pool = ProcessPool(2, _job(stages_db, random_checkpoint, tmp_path_factory.mktemp("onnx")))
    assert "untrained" in pool.wait_ready()
    stages = PooledStages(pool)
    yield stages
    stages.close()


@pytest.fixture(scope="module")
def decoders():
    pool = ProcessPool(2)
    yield pool
    pool.close()


def _payloads(prefix: str, count: int, seconds: float = 1.0) -> list[Payload]:
    return [Payload(data=audio_bytes("WAV", seconds=seconds, sr=16000, seed=i), source=f"test:{prefix}-{i}",
                    clip_id=f"{prefix}-{i}") for i in range(count)]


def _deadly(name: str) -> Payload:
    return Payload(data=KillsTheProcessThatReadsIt(), source=f"test:{name}", clip_id=name)  # type: ignore[arg-type]


def _stored(url: str, prefix: str) -> dict[str, str]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        rows = conn.execute("SELECT id, status FROM clips WHERE id LIKE %s", (f"{prefix}-%",)).fetchall()
    return dict(rows)


# ------------------------------------------------------------ tagging and storing ---

def test_batches_in_both_processes_are_tagged_stored_and_answered_without_their_blobs(runner, stages_db):
    async def two_batches():
        return await asyncio.gather(runner.run(_payloads("a", 5)), runner.run(_payloads("b", 4)))

    first, second = asyncio.run(two_batches())
    records = first + second
    assert [r.clip_id for r in records] == [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(4)]
    assert all(r.status == Status.TAGGED and len(r.top3) == 3 for r in records)
    assert all(r.features is None for r in records)  # stored already; not sent back
    assert _stored(stages_db[1], "a") == {f"a-{i}": "tagged" for i in range(5)}
    assert len(_stored(stages_db[1], "b")) == 4


def test_a_bad_clip_fails_alone_and_is_recorded(runner, stages_db):
    bad = Payload(data=b"RIFF\x00\x00\x00\x00WAVEnot really", source="test:bad", clip_id="c-bad")
    records = asyncio.run(runner.run([*_payloads("c", 2), bad]))
    assert [r.status for r in records] == [Status.TAGGED, Status.TAGGED, Status.FAILED]
    assert records[2].error
    assert _stored(stages_db[1], "c") == {"c-0": "tagged", "c-1": "tagged", "c-bad": "failed"}


def test_the_database_away_for_longer_than_the_retry_budget_raises_database_unavailable(runner, stages_db):
    block_database(stages_db[0], True)
    try:
        with pytest.raises(DatabaseUnavailable):
            asyncio.run(runner.run(_payloads("d", 2)))
    finally:
        block_database(stages_db[0], False)
    records = asyncio.run(runner.run(_payloads("d", 2)))  # the same process serves on afterwards
    assert all(r.status == Status.TAGGED for r in records)


def test_a_process_that_does_not_start_says_why(stages_db, tmp_path):
    pool = ProcessPool(1, PipelineJob(model_path=str(tmp_path / "missing.safetensors"), database_url=stages_db[1]))
    try:
        with pytest.raises(PoolError, match=r"could not start.*missing\.safetensors"):
            pool.wait_ready()
    finally:
        pool.close(wait=False)


def test_a_process_killed_holding_a_batch_is_replaced_and_the_batch_tagged_clip_by_clip(runner, stages_db, tmp_path):
    marker = tmp_path / "busy"

    async def one_killed():
        batch = _payloads("e", 64, seconds=5.0)
        batch[0] = busy_once_read(batch[0], marker, 3.0)
        held = asyncio.ensure_future(runner.run(batch))
        await asyncio.to_thread(wait_until, marker.exists, 60, "a process to start on the batch")
        busy = next(p.pid for p in runner.pool._procs if Path(f"/proc/{p.pid}").exists()
                    and _reading_batch(p.pid))
        os.kill(busy, signal.SIGKILL)
        return await held, busy

    records, killed = asyncio.run(one_killed())
    assert [r.clip_id for r in records] == [f"e-{i}" for i in range(64)]
    assert all(r.status == Status.TAGGED for r in records)
    assert len(_stored(stages_db[1], "e")) == 64
    assert killed not in runner.pool.pids() and all(p.is_alive() for p in runner.pool._procs)


def _reading_batch(pid: int) -> bool:
    # The process that took the batch is the one asleep in the marker's wait (its wchan).
    return Path(f"/proc/{pid}/wchan").read_text() == "hrtimer_nanosleep"


def test_a_clip_its_process_dies_on_twice_is_recorded_as_failed_and_the_rest_tagged(runner, stages_db):
    good = _payloads("h", 3)
    records = asyncio.run(runner.run([good[0], _deadly("h-deadly"), *good[1:]]))
    assert [r.clip_id for r in records] == ["h-0", "h-deadly", "h-1", "h-2"]
    assert [r.status for r in records] == [Status.TAGGED, Status.FAILED, Status.TAGGED, Status.TAGGED]
    assert records[1].error == "the tagging process died on this clip (exit code 3); nothing was tagged"
    assert _stored(stages_db[1], "h") == {"h-0": "tagged", "h-deadly": "failed", "h-1": "tagged", "h-2": "tagged"}
    assert all(p.is_alive() for p in runner.pool._procs)


def test_clips_that_each_end_their_process_three_in_a_row_stop_instead_of_failing_every_clip(runner):
    with pytest.raises(PoolError, match="died on 3 items in a row"):
        asyncio.run(runner.run([_deadly(f"k-{i}") for i in range(3)]))
    records = asyncio.run(runner.run(_payloads("m", 2)))  # replaced, and serving
    assert all(r.status == Status.TAGGED for r in records)


def test_processes_exit_when_their_parent_closes_the_pipes(stages_db, random_checkpoint, tmp_path):
    pool = ProcessPool(2, _job(stages_db, random_checkpoint, tmp_path))
    pool.wait_ready()
    procs = list(pool._procs)
    for conn in pool._conns:
        conn.close()  # what a parent killed with SIGKILL leaves: the pipes closed
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0


def test_close_without_waiting_kills_a_busy_process_at_once(stages_db, random_checkpoint, tmp_path):
    pool = ProcessPool(1, _job(stages_db, random_checkpoint, tmp_path))
    stages = PooledStages(pool)
    pool.wait_ready()
    marker = tmp_path / "busy"
    batch = _payloads("g", 8)
    batch[0] = busy_once_read(batch[0], marker, 10.0)
    with ThreadPoolExecutor(1) as thread:
        held = thread.submit(asyncio.run, stages.run(batch))
        wait_until(marker.exists, 60, "the process to start on the batch")
        pool.close(wait=False)  # it ignores SIGTERM, as a process group's stop would send: killed
        with pytest.raises(PoolClosed):
            held.result(timeout=30)
    assert pool._procs[0].exitcode == -signal.SIGKILL


# ------------------------------------------------------ decoding for a GPU's process ---

def _decode_payloads(prefix: str, count: int) -> list[Payload]:
    return [Payload(data=audio_bytes("OGG", seconds=1.0, sr=22050, seed=i), source=f"test:{prefix}-{i}",
                    clip_id=f"{prefix}-{i}") for i in range(count)]


def test_a_batch_decodes_in_the_processes_as_it_does_here(decoders):
    payloads = _decode_payloads("a", 6)
    there = decoders.map(decode_task, payloads, died_decoding)
    here = [_decode_one(p, 60, featurize=None) for p in payloads]
    assert [d.record.clip_id for d in there] == [d.record.clip_id for d in here]
    for a, b in zip(there, here, strict=True):
        assert a.audio is not None and b.audio is not None
        assert a.audio.num_samples == b.audio.num_samples and len(a.audio.samples) == 0  # no samples sent back
        assert isinstance(a.features, np.ndarray)


def test_clips_decoded_elsewhere_tag_the_same(decoders, random_tagger):
    payloads = _decode_payloads("b", 4)
    elsewhere = decode_payloads(payloads, 60, decode_elsewhere=lambda ps: decoders.map(decode_task, ps,
                                                                                       died_decoding))
    here = decode_payloads(payloads, 60, random_tagger.features)
    assert elsewhere.features is not None and here.features is not None
    for a, b in zip(elsewhere.features, here.features, strict=True):
        assert torch.allclose(a, b)


def test_a_clip_a_decoding_process_dies_on_fails_alone_and_the_pool_serves_on(decoders):
    good = _decode_payloads("c", 3)
    done = decoders.map(decode_task, [good[0], _deadly("c-deadly"), *good[1:]], died_decoding)
    assert [d.record.clip_id for d in done] == ["c-0", "c-deadly", "c-1", "c-2"]
    assert [d.audio is not None for d in done] == [True, False, True, True]
    assert done[1].record.status == Status.FAILED
    assert done[1].record.error == "the decoding process died on this clip (exit code 3); nothing was tagged"
    assert all(d.audio is not None for d in decoders.map(decode_task, _decode_payloads("d", 2), died_decoding))


def test_clips_that_each_end_a_decoding_process_three_in_a_row_stop_instead(decoders):
    with pytest.raises(PoolError, match="in a row"):
        decoders.map(decode_task, [_deadly(f"x-{i}") for i in range(6)], died_decoding)
    assert all(d.audio is not None for d in decoders.map(decode_task, _decode_payloads("e", 2), died_decoding))


def test_a_gpu_workers_runner_decodes_in_the_pool_and_tags_and_stores(monkeypatch, random_checkpoint, tmp_path,
                                                                        untrained_allowed):
    # The worker's wiring where it owns a GPU, on this CPU: its own process tags and stores,
    # the pool's processes decode for it.
    from stream import worker
    from tagger.config import Settings

    monkeypatch.setattr(worker, "_on_cpu", lambda settings: False)
    monkeypatch.setattr(worker, "worker_processes", lambda settings: 2)
    with migrated_database("soundtag_gpu_wiring") as (_, url):
        settings = Settings(device="cpu", database_url=url, model_path=random_checkpoint, cache_dir=tmp_path)
        runner, where, close = worker._stage_runner(settings)
        try:
            assert where.endswith("on cpu, decoding in 2 processes"), where
            records = asyncio.run(runner.run(_decode_payloads("w", 5)))
        finally:
            close()
    assert [r.status for r in records] == [Status.TAGGED] * 5 and all(len(r.top3) == 3 for r in records)


ORPHAN_SCRIPT = """
import functools, os, signal
from tagger.pipeline import decode_chunk, died_decoding
from tagger.pool import ProcessPool
from tagger.records import Payload

if __name__ == "__main__":
    pool = ProcessPool(2)
    payloads = [Payload(data=open(os.environ["CLIP"], "rb").read(), source="t", clip_id=f"c{i}") for i in range(4)]
    pool.map(functools.partial(decode_chunk, max_duration_s=60), payloads, died_decoding)
    print(*pool.pids(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_pool_processes_exit_when_their_parent_is_killed(tmp_path):
    clip = tmp_path / "clip.ogg"
    clip.write_bytes(audio_bytes("OGG", seconds=1.0, sr=22050))
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_SCRIPT)
    env = {**os.environ, "CLIP": str(clip), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    children = [int(pid) for pid in done.stdout.split()]
    assert len(children) == 2
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "the pool's processes to exit")
