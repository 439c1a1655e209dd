"""How many stage processes a stream worker runs."""

from __future__ import annotations

import pytest

from stream import worker
from tagger.config import Settings
from tagger.device import PROCESS_MEMORY
from tagger.stage_processes import StageProcessError


def test_the_worker_runs_one_stage_process_per_core_on_cpu_as_memory_allows(monkeypatch):
    monkeypatch.setattr(worker, "cpu_cores", lambda: 4)
    monkeypatch.setattr(worker, "available_memory", lambda: 100 * PROCESS_MEMORY)
    assert worker.worker_processes(Settings(device="cpu")) == 4
    assert worker.worker_processes(Settings(device="cpu", worker_processes=1)) == 1  # stages on threads
    assert worker.worker_processes(Settings(device="cuda")) == 1  # one process feeds the GPU
    with pytest.raises(StageProcessError, match="CPU only"):
        worker.worker_processes(Settings(device="cuda", worker_processes=2))
    monkeypatch.setattr(worker, "available_memory", lambda: PROCESS_MEMORY * 5 // 2)
    assert worker.worker_processes(Settings(device="cpu")) == 2
