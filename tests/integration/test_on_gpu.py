"""The GPU path for real: `soundtag ingest` and the worker's runner on a CUDA device, with
bad files and a clip that kills its decoding process mixed in, against what the CPU stores.

Skipped where there is no CUDA device (CI's machines); `bash deploy/benchmarks/gpu_machine.sh
tests` runs it on a lent GPU machine. ``SOUNDTAG_TEST_ACCELERATOR=cpu`` runs the same tests
on the CPU (the GPU's wiring, decoding processes feeding one tagging process, on the CPU), to
check the tests themselves without a GPU."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from sqlalchemy import select

from tagger import db
from tagger.ingest_processes import ingest_job
from tagger.records import Payload, Status
from tagger.stages import PipelineJob
from tagger.tables import Clip, Tag
from tests.helpers import (
    KillsTheProcessThatReadsIt,
    assert_mixed_folder_tagged_and_stored,
    audio_bytes,
    make_mixed_folder,
    migrated_database,
)

ACCELERATOR = os.environ.get("SOUNDTAG_TEST_ACCELERATOR", "cuda")
pytestmark = pytest.mark.skipif(ACCELERATOR == "cuda" and not torch.cuda.is_available(),
                                reason="no CUDA device here")


def _answers(url: str) -> tuple[list[tuple], dict[tuple[str, int], tuple[str, float]]]:
    """Every clip's status, duration and error; every tag by (clip, rank)."""
    with db.session_factory(url)() as s:
        clips = sorted(map(tuple, s.execute(select(Clip.id, Clip.status, Clip.duration_s, Clip.error)).all()))
        tags = {(c, r): (label, p) for c, r, label, p in s.execute(select(Tag.clip_id, Tag.rank, Tag.label,
                                                                         Tag.confidence)).all()}
    return clips, tags


def test_ingest_on_the_accelerator_stores_what_the_cpu_stores(tmp_path, shipped_model_path):
    folder = make_mixed_folder(tmp_path / "in", good=9)
    with migrated_database("soundtag_gpu_ingest") as (_, on_gpu), \
            migrated_database("soundtag_cpu_ingest") as (_, on_cpu):
        # Three processes: on a GPU one tags and stores, two decode and compute log-mels for it.
        job = PipelineJob(model_path=str(shipped_model_path), database_url=on_gpu, device=ACCELERATOR, batch_size=4)
        summary = ingest_job([folder], job, processes=3, progress=False)
        assert_mixed_folder_tagged_and_stored(summary, db.session_factory(on_gpu))
        cpu_job = PipelineJob(model_path=str(shipped_model_path), database_url=on_cpu, device="cpu", batch_size=4)
        ingest_job([folder], cpu_job, processes=1, progress=False)
        (gpu_clips, gpu_tags), (cpu_clips, cpu_tags) = _answers(on_gpu), _answers(on_cpu)
    assert gpu_clips == cpu_clips  # the same clips tagged, the same failures with the same reasons
    assert gpu_tags.keys() == cpu_tags.keys()
    for key, (label, p) in gpu_tags.items():  # the GPU runs fp32: the CPU's answers
        assert label == cpu_tags[key][0] and abs(p - cpu_tags[key][1]) <= 1e-3, (key, label, p, cpu_tags[key])


def test_the_workers_runner_on_the_accelerator_tags_stores_and_records_what_it_cannot(
        monkeypatch, shipped_model_path, tmp_path):
    from stream import worker
    from tagger.config import Settings

    monkeypatch.setattr(worker, "_on_cpu", lambda settings: False)  # a no-op on a GPU; the GPU's wiring on a CPU
    monkeypatch.setattr(worker, "worker_processes", lambda settings: 2)
    good = [Payload(data=audio_bytes("OGG", seconds=1.0 + i, sr=[22050, 44100, 48000][i % 3], seed=i),
                    source=f"test:good-{i}", clip_id=f"good-{i}") for i in range(5)]
    bad = [Payload(data=b"", source="test:empty", clip_id="empty"),
           Payload(data=b"RIFF\x00\x00\x00\x00WAVE junk", source="test:junk", clip_id="junk"),
           Payload(data=KillsTheProcessThatReadsIt(), source="test:deadly", clip_id="deadly")]  # type: ignore[arg-type]
    with migrated_database("soundtag_gpu_worker") as (_, url):
        settings = Settings(device=ACCELERATOR, database_url=url, model_path=shipped_model_path,
                            cache_dir=tmp_path)
        runner, where, close = worker._stage_runner(settings)
        try:
            assert where.endswith(f"on {ACCELERATOR}, decoding in 2 processes") or \
                where.endswith(f"on {ACCELERATOR}:0, decoding in 2 processes"), where
            records = asyncio.run(runner.run([*good, *bad]))
            again = asyncio.run(runner.run(good[:2]))  # the pool serves on after losing a process
        finally:
            close()
        stored, tags = _answers(url)
    by_id = {r.clip_id: r for r in records}
    assert all(by_id[p.clip_id].status == Status.TAGGED and len(by_id[p.clip_id].top3) == 3 for p in good)
    assert all(by_id[p.clip_id].status == Status.FAILED and by_id[p.clip_id].error for p in bad)
    assert "died" in (by_id["deadly"].error or ""), by_id["deadly"].error
    assert [r.status for r in again] == [Status.TAGGED] * 2
    assert {c[0] for c in stored} == {p.clip_id for p in [*good, *bad]}
    assert {c for c, _ in tags} == {p.clip_id for p in good}

