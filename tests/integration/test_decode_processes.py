"""Decoding in a pool of processes (what a GPU's process uses): real processes, real files."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tagger.decode_processes import DIED, DecodeProcessError, DecodeProcesses
from tagger.pipeline import _decode_one, decode_payloads
from tagger.records import Payload, Status
from tests.helpers import KillsTheProcessThatReadsIt, audio_bytes, slow_to_read

decode_one = functools.partial(_decode_one, max_duration_s=60, featurize=None)


@pytest.fixture(scope="module")
def pool():
    decoders = DecodeProcesses(2)
    yield decoders
    decoders.close()


def _payloads(prefix: str, count: int) -> list[Payload]:
    return [Payload(data=audio_bytes("OGG", seconds=1.0, sr=22050, seed=i), source=f"test:{prefix}-{i}",
                    clip_id=f"{prefix}-{i}") for i in range(count)]


def _deadly(name: str) -> Payload:
    return Payload(data=KillsTheProcessThatReadsIt(), source=f"test:{name}", clip_id=name)  # type: ignore[arg-type]


def test_a_batch_decodes_in_the_processes_as_it_does_here(pool):
    payloads = [*_payloads("a", 9), Payload(data=b"", source="test:empty", clip_id="a-empty")]
    there, here = decode_payloads(payloads, 60, None, pool.map), decode_payloads(payloads, 60)
    assert [(r.clip_id, r.status, r.error, r.duration_s) for r in there.records] == \
        [(r.clip_id, r.status, r.error, r.duration_s) for r in here.records]
    assert [i for i, _ in there.audio] == list(range(9))
    assert all((a.samples == b.samples).all() for (_, a), (_, b) in zip(there.audio, here.audio, strict=True))


def test_clips_decoded_elsewhere_come_back_as_features_without_samples_and_tag_the_same(pool, random_checkpoint):
    from tagger.inference import Tagger

    tagger = Tagger.load(random_checkpoint, device="cpu", engine="torch")
    payloads = [*_payloads("h", 3), Payload(data=audio_bytes("FLAC", seconds=12.0, seed=7), source="test:long",
                                            clip_id="h-long"), Payload(data=b"RIFF junk", source="test:junk")]
    there = decode_payloads(payloads, 60, decode_elsewhere=pool.map)
    here = decode_payloads(payloads, 60, tagger.features)
    assert [(r.clip_id, r.status, r.error, r.duration_s) for r in there.records] == \
        [(r.clip_id, r.status, r.error, r.duration_s) for r in here.records]
    assert [i for i, _ in there.audio] == [i for i, _ in here.audio] == [0, 1, 2, 3]
    assert all(len(a.samples) == 0 and a.num_samples == len(b.samples) and a.duration_s == b.duration_s
               for (_, a), (_, b) in zip(there.audio, here.audio, strict=True))
    assert there.features is not None and here.features is not None
    assert all(torch.equal(a, b) for a, b in zip(there.features, here.features, strict=True))
    for a, b in zip(tagger.tag([a for _, a in there.audio], there.features),
                    tagger.tag([a for _, a in here.audio], here.features), strict=True):
        assert a.top3 == b.top3 and a.timeline == b.timeline
        assert np.array_equal(a.spectrogram, b.spectrogram) and np.array_equal(a.envelope, b.envelope)
    with pytest.raises(ValueError, match="without its samples"):
        tagger.features(there.audio[0][1])


def test_a_clip_a_decoding_process_dies_on_fails_alone_and_the_pool_serves_on(pool):
    good = _payloads("b", 3)
    done = list(pool.map(decode_one, [good[0], _deadly("b-deadly"), *good[1:]]))
    assert [d.record.clip_id for d in done] == ["b-0", "b-deadly", "b-1", "b-2"]
    assert [d.audio is not None for d in done] == [True, False, True, True]
    assert done[1].record.status == Status.FAILED and done[1].record.error == DIED
    assert all(d.audio is not None for d in pool.map(decode_one, _payloads("c", 4)))


def test_a_death_during_two_batches_in_flight_costs_each_only_its_own_clip(pool):
    batches = [[*_payloads("f", 6), _deadly("f-deadly")], _payloads("g", 40)]
    with ThreadPoolExecutor(2) as threads:
        first, second = threads.map(lambda batch: list(pool.map(decode_one, batch)), batches)
    assert [d.audio is not None for d in first] == [True] * 6 + [False]
    assert first[-1].record.error == DIED
    assert len(second) == 40 and all(d.audio is not None for d in second)


def test_clips_that_each_end_a_decoding_process_three_in_a_row_stop_instead(pool):
    with pytest.raises(DecodeProcessError, match="died on 3 clips in a row"):
        list(pool.map(decode_one, [_deadly(f"d-{i}") for i in range(3)]))
    assert all(d.audio is not None for d in pool.map(decode_one, _payloads("e", 2)))  # started again


def test_closing_while_a_batch_decodes_stops_it_and_starts_nothing_again():
    decoders = DecodeProcesses(2)
    slow = [slow_to_read(p, 2.0) for p in _payloads("slow", 2)]  # one per process: under way at the close
    with ThreadPoolExecutor(1) as thread:
        batch = thread.submit(lambda: list(decoders.map(decode_one, slow + _payloads("z", 200))))
        time.sleep(0.5)  # the batch is under way
        decoders.close()
        with pytest.raises(DecodeProcessError, match="closed"):
            batch.result(timeout=60)
    assert decoders._pool._processes is None or not any(p.is_alive() for p in decoders._pool._processes.values())


def test_a_gpu_workers_runner_decodes_in_processes_and_tags_and_stores(monkeypatch, random_checkpoint, tmp_path):
    # The worker's wiring where it owns a GPU, on this CPU: its own process tags and stores,
    # SOUNDTAG_WORKER_PROCESSES processes decode for it.
    import asyncio

    from stream import worker
    from tagger.config import Settings
    from tests.helpers import migrated_database

    monkeypatch.setattr(worker, "_on_cpu", lambda settings: False)
    with migrated_database("soundtag_gpu_wiring") as (_, url):
        settings = Settings(device="cpu", worker_processes=2, database_url=url, model_path=random_checkpoint,
                            allow_untrained=True, cache_dir=tmp_path)
        runner, where, close = worker._stage_runner(settings)
        try:
            assert where.endswith("on cpu, decoding in 2 processes"), where
            records = asyncio.run(runner.run(_payloads("w", 5)))
        finally:
            close()
    assert [r.status for r in records] == [Status.TAGGED] * 5 and all(len(r.top3) == 3 for r in records)


ORPHAN_SCRIPT = """
import functools, os, signal
from tagger.decode_processes import DecodeProcesses
from tagger.pipeline import _decode_one
from tagger.records import Payload

if __name__ == "__main__":
    pool = DecodeProcesses(2)
    payloads = [Payload(data=open(os.environ["CLIP"], "rb").read(), source="t", clip_id=f"c{i}") for i in range(4)]
    list(pool.map(functools.partial(_decode_one, max_duration_s=60), payloads))
    print(*[p.pid for p in pool._pool._processes.values()], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_decoding_processes_exit_when_their_parent_is_killed(tmp_path):
    clip = tmp_path / "clip.ogg"
    clip.write_bytes(audio_bytes("OGG", seconds=1.0, sr=22050))
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_SCRIPT)
    env = {**os.environ, "CLIP": str(clip), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    decoders = [int(pid) for pid in done.stdout.split()]
    assert len(decoders) == 2
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in decoders) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in decoders)
