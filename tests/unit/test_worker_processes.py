"""How many processes a stream worker runs."""

from __future__ import annotations

from stream import worker
from tagger import device
from tagger.config import Settings
from tagger.device import PROCESS_MEMORY


def test_the_worker_runs_one_process_per_core_as_memory_allows_one_core_left_to_a_gpu(monkeypatch):
    monkeypatch.setattr(device, "cpu_cores", lambda: 4)
    monkeypatch.setattr(device, "available_memory", lambda: 100 * PROCESS_MEMORY)
    assert worker.worker_processes(Settings(device="cpu")) == 4
    assert worker.worker_processes(Settings(device="cuda")) == 3  # decoding for the one that owns the GPU
    monkeypatch.setattr(device, "available_memory", lambda: PROCESS_MEMORY * 5 // 2)
    assert worker.worker_processes(Settings(device="cpu")) == 2
    monkeypatch.setattr(device, "cpu_cores", lambda: 2)
    monkeypatch.setattr(device, "available_memory", lambda: 100 * PROCESS_MEMORY)
    assert worker.worker_processes(Settings(device="cuda")) == 1  # two cores: decoding on threads
