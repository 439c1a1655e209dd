"""Device choice (SOUNDTAG_DEVICE) and the autocast dtype that is fast there."""

from __future__ import annotations

import functools
import os

import torch


def cpu_cores() -> int:
    """The cores this process may use: its affinity (which a container's CPU set limits),
    and no more than a container's CPU quota (``cpus:`` in docker-compose.yml)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPU quota of this cgroup (v2) in whole cores, rounded up; None where there is none."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or int(period) <= 0:
        return None
    return -(-int(quota) // int(period))


PROCESS_MEMORY = 600 * 2**20  # what one tagging process may hold (about 450 MB measured), with room


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux); elsewhere no limit from memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def processes_that_fit(gpu: bool = False) -> int:
    """Tagging processes this machine holds: one per core as available memory allows. With a
    GPU one core is left to the process that owns it (the others decode for it)."""
    return max(1, min(cpu_cores() - gpu, available_memory() // PROCESS_MEMORY))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SOUNDTAG_DEVICE=cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision where the hardware runs it natively (training); None means plain fp32."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return None


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """What the torch forward pass runs in for serving and validation: as ``autocast_dtype``
    but fp32 on CUDA, where the network is a fraction of a percent of a clip's time and fp16
    changed the top 3 of 1 clip in 400 against the CPU's (deploy/benchmarks/README.md)."""
    return None if device.type == "cuda" else autocast_dtype(device)
