"""How `soundtag ingest` splits its work between processes (the runs themselves are in
tests/integration/test_ingest.py, on the real PostgreSQL)."""

from pathlib import Path

import pytest

from tagger.ingest_processes import FILES_PER_PROCESS, IngestJob, _shards, auto_processes, ingest_job


def test_shards_deal_whole_batches_in_turn():
    files = [Path(f"f{i:02d}") for i in range(10)]
    shards = _shards(files, batch_size=3, processes=2)
    assert [[p.name for p in s] for s in shards] == [
        ["f00", "f01", "f02", "f06", "f07", "f08"],
        ["f03", "f04", "f05", "f09"],
    ]
    assert sorted(p for s in shards for p in s) == files  # every file once


def test_auto_processes_one_per_share_of_files_at_most_one_per_core(monkeypatch):
    monkeypatch.setattr("tagger.ingest_processes.cpu_cores", lambda: 2)
    assert auto_processes(FILES_PER_PROCESS - 1, "cpu") == 1  # start-up would cost what it saves
    assert auto_processes(2 * FILES_PER_PROCESS, "cpu") == 2
    assert auto_processes(100 * FILES_PER_PROCESS, "cpu") == 2
    assert auto_processes(100 * FILES_PER_PROCESS, "cpu", "sqlite:///x.db") == 1  # one writer at a time


def test_several_processes_on_sqlite_are_refused_with_the_way_out(tmp_path):
    job = IngestJob(model_path="unused", database_url=f"sqlite:///{tmp_path / 'x.db'}", device="cpu")
    with pytest.raises(ValueError, match="PostgreSQL only.*leave --processes out"):
        ingest_job([tmp_path], job, processes=2, progress=False)
