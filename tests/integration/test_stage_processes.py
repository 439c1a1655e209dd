"""The worker's stage processes: real processes, a real model file, real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psycopg
import pytest

from tagger.records import Payload, Status
from tagger.stage_processes import ProcessStageRunner, StageProcessError
from tagger.stages import DatabaseUnavailable, PipelineJob
from tests.helpers import (
    KillsTheProcessThatReadsIt,
    audio_bytes,
    block_database,
    migrated_database,
    slow_to_read,
)


@pytest.fixture(scope="module")
def stages_db():
    with migrated_database("soundtag_stages") as database:
        yield database


@pytest.fixture(scope="module")
def runner(stages_db, random_checkpoint, tmp_path_factory):
    job = PipelineJob(model_path=str(random_checkpoint), database_url=stages_db[1], max_duration_s=60,
                   db_retry_s=1.0, export_cache=str(tmp_path_factory.mktemp("onnx")))
    pool = ProcessStageRunner(job, processes=2)
    assert "untrained" in pool.wait_ready()
    yield pool
    pool.close()


def _payloads(prefix: str, count: int, seconds: float = 1.0) -> list[Payload]:
    return [Payload(data=audio_bytes("WAV", seconds=seconds, sr=16000, seed=i), source=f"test:{prefix}-{i}",
                    clip_id=f"{prefix}-{i}") for i in range(count)]


def _stored(url: str, prefix: str) -> dict[str, str]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        rows = conn.execute("SELECT id, status FROM clips WHERE id LIKE %s", (f"{prefix}-%",)).fetchall()
    return dict(rows)


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
    job = PipelineJob(model_path=str(tmp_path / "missing.safetensors"), database_url=stages_db[1])
    pool = ProcessStageRunner(job, processes=1)
    try:
        with pytest.raises(StageProcessError, match=r"could not start.*missing\.safetensors"):
            pool.wait_ready()
    finally:
        pool.close(wait=False)


def test_a_process_killed_holding_a_batch_is_replaced_and_the_batch_tagged_clip_by_clip(runner, stages_db):
    async def one_killed():
        batch = _payloads("e", 64, seconds=5.0)
        batch[0] = slow_to_read(batch[0], 3.0)  # busy for 3 s at least
        held = asyncio.ensure_future(runner.run(batch))
        await asyncio.sleep(0.5)
        busy = next(i for i in range(2) if i not in runner._idle)
        killed = runner._procs[busy].pid
        os.kill(killed, signal.SIGKILL)
        return await held, killed

    records, killed = asyncio.run(one_killed())
    assert [r.clip_id for r in records] == [f"e-{i}" for i in range(64)]
    assert all(r.status == Status.TAGGED for r in records)
    assert len(_stored(stages_db[1], "e")) == 64
    assert killed not in {p.pid for p in runner._procs} and all(p.is_alive() for p in runner._procs)


def test_a_clip_its_process_dies_on_is_recorded_as_failed_and_the_rest_tagged(runner, stages_db):
    good = _payloads("h", 3)
    deadly = Payload(data=KillsTheProcessThatReadsIt(), source="test:h-deadly", clip_id="h-deadly")  # type: ignore[arg-type]
    records = asyncio.run(runner.run([good[0], deadly, *good[1:]]))
    assert [r.clip_id for r in records] == ["h-0", "h-deadly", "h-1", "h-2"]
    assert [r.status for r in records] == [Status.TAGGED, Status.FAILED, Status.TAGGED, Status.TAGGED]
    assert records[1].error == "the tagging process died on this clip (exit code 3); nothing was tagged"
    assert _stored(stages_db[1], "h") == {"h-0": "tagged", "h-deadly": "failed", "h-1": "tagged", "h-2": "tagged"}
    assert all(p.is_alive() for p in runner._procs)


def test_clips_that_each_end_their_process_three_in_a_row_stop_instead_of_failing_every_clip(runner):
    deadly = [Payload(data=KillsTheProcessThatReadsIt(), source=f"test:k-{i}", clip_id=f"k-{i}")  # type: ignore[arg-type]
              for i in range(3)]
    with pytest.raises(StageProcessError, match="died on 3 clips in a row"):
        asyncio.run(runner.run(deadly))
    records = asyncio.run(runner.run(_payloads("m", 2)))  # replaced, and serving
    assert all(r.status == Status.TAGGED for r in records)


def test_processes_exit_when_their_parent_closes_the_pipes(stages_db, random_checkpoint, tmp_path):
    job = PipelineJob(model_path=str(random_checkpoint), database_url=stages_db[1], export_cache=str(tmp_path))
    pool = ProcessStageRunner(job, processes=2)
    pool.wait_ready()
    procs = list(pool._procs)
    for conn in pool._conns:
        conn.close()  # what a parent killed with SIGKILL leaves: the pipes closed
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0


def test_close_without_waiting_kills_a_busy_process_at_once(stages_db, random_checkpoint, tmp_path):
    job = PipelineJob(model_path=str(random_checkpoint), database_url=stages_db[1], export_cache=str(tmp_path))
    pool = ProcessStageRunner(job, processes=1)
    pool.wait_ready()
    batch = _payloads("g", 8)
    batch[0] = slow_to_read(batch[0], 10.0)  # busy for 10 s at least
    pool._conns[0].send(batch)
    time.sleep(0.5)
    started = time.monotonic()
    pool.close(wait=False)  # it ignores SIGTERM, as a process group's stop would send
    assert time.monotonic() - started < 3
    assert pool._procs[0].exitcode == -signal.SIGKILL
