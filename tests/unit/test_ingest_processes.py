"""How `soundtag ingest` splits its work between processes (the runs themselves are in
tests/integration/test_ingest.py, on the real PostgreSQL)."""

import pytest

from tagger.device import PROCESS_MEMORY
from tagger.ingest_processes import (
    FILES_PER_PROCESS,
    MIN_TAIL_BATCH,
    auto_processes,
    ingest_job,
    tail_batch_size,
)
from tagger.stages import PipelineJob


@pytest.mark.parametrize(("files", "processes"), [(1000, 2), (1000, 16), (33, 2), (5, 4), (4097, 3)])
def test_batches_are_full_until_the_end_is_near_then_shrink_so_the_processes_finish_together(files, processes):
    sizes, remaining = [], files
    while remaining:
        sizes.append(tail_batch_size(remaining, processes, 32))
        remaining -= sizes[-1]
    assert sum(sizes) == files and all(1 <= n <= 32 for n in sizes)
    assert sizes == sorted(sizes, reverse=True)  # never larger again once they shrink
    full = [n for n in sizes if n == 32]
    if files >= 4 * processes * 32:
        assert len(full) >= len(sizes) - 16  # only the last few shrink
    # what a process can still be busy with while the others have nothing left: one small batch
    assert sizes[-1] <= MIN_TAIL_BATCH


def test_auto_processes_one_per_share_of_files_at_most_one_per_core(monkeypatch):
    monkeypatch.setattr("tagger.device.cpu_cores", lambda: 2)
    assert auto_processes(FILES_PER_PROCESS - 1, "cpu") == 1  # start-up would cost what it saves
    assert auto_processes(2 * FILES_PER_PROCESS, "cpu") == 2
    assert auto_processes(100 * FILES_PER_PROCESS, "cpu") == 2
    assert auto_processes(100 * FILES_PER_PROCESS, "cpu", "sqlite:///x.db") == 1  # one writer at a time
    monkeypatch.setattr("tagger.device.available_memory", lambda: PROCESS_MEMORY * 3 // 2)
    assert auto_processes(100 * FILES_PER_PROCESS, "cpu") == 1  # memory for one only


def test_several_processes_on_sqlite_are_refused_with_the_way_out(tmp_path):
    job = PipelineJob(model_path="unused", database_url=f"sqlite:///{tmp_path / 'x.db'}", device="cpu")
    with pytest.raises(ValueError, match=r"PostgreSQL only.*leave --processes out"):
        ingest_job([tmp_path], job, processes=2, progress=False)


def test_nothing_to_tag_starts_no_process(tmp_path, random_checkpoint, monkeypatch):
    def no_processes(*args, **kwargs):
        raise AssertionError("started processes with nothing to tag")

    monkeypatch.setattr("tagger.ingest_processes.ProcessPool", no_processes)
    (tmp_path / "notes.txt").write_text("not audio")
    # Nothing to tag: the database is never reached, so an unreachable one does.
    job = PipelineJob(model_path=str(random_checkpoint), database_url="postgresql://nobody@127.0.0.1:9/none",
                      device="cpu")
    summary = ingest_job([tmp_path], job, processes=2, progress=False)
    assert (summary.tagged, summary.failed) == (0, 0) and summary.not_audio == [str(tmp_path / "notes.txt")]
