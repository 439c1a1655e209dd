"""What every benchmark needs: the model to time, real clips, a scratch PostgreSQL database."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tagger import db
from tagger.config import SAMPLES_DIR, SHIPPED_MODEL_PATH
from tagger.inference import Tagger

PG_ADMIN_URL = os.environ.get("SOUNDTAG_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def load_tagger() -> tuple[Tagger, Path]:
    """The shipped model; a random one of the same layout if it is missing (timings do not
    depend on the weights; the figures say which was used)."""
    if SHIPPED_MODEL_PATH.is_file():
        return Tagger.load(SHIPPED_MODEL_PATH, device="cpu"), SHIPPED_MODEL_PATH
    from tagger.checkpoint import save_checkpoint
    from tagger.network import AudioCNN

    path = Path(tempfile.mkdtemp()) / "untrained.safetensors"
    save_checkpoint(path, AudioCNN(num_classes=50), [f"class_{i}" for i in range(50)], trained=False)
    return Tagger.load(path, device="cpu"), path


CLIPS_DIR: Path | None = None  # `run --clips DIR`: the clips on a machine without ESC-50


def real_clips(n: int) -> list[Path]:
    """n distinct real 5 s clips: the .ogg files in CLIPS_DIR when it is set, else ESC-50 when
    it is here, else the bundled samples (fewer)."""
    if CLIPS_DIR is not None:
        return sorted(CLIPS_DIR.glob("*.ogg"))[:n]
    try:
        from training.data import read_esc50

        data = read_esc50()
        return [data.root / "audio" / f for f in data.files[:n]]
    except FileNotFoundError:
        return sorted(SAMPLES_DIR.glob("*.ogg"))[:n]


@contextmanager
def scratch_postgres(prefix: str = "soundtag_bench"):
    name, url = db.create_database(PG_ADMIN_URL, prefix)
    try:
        db.upgrade(url)
        yield url
    finally:
        db.drop_database(PG_ADMIN_URL, name)


def model_windows(tagger: Tagger, clips: list[Path], count: int = 32) -> torch.Tensor:
    """(count, 1, n_mels, frames) first-window log-mels of real clips: the model-only input."""
    from tagger.audio import decode_file
    from tagger.features import WINDOW_SAMPLES, log_mel, window_input

    audio = [window_input(torch.from_numpy(decode_file(p).samples))[:WINDOW_SAMPLES] for p in clips[:count]]
    windows = log_mel(torch.stack(audio))
    while len(windows) < count:  # fewer clips than asked: repeat them
        windows = torch.cat([windows, windows])[:count]
    return windows


def time_model(tagger: Tagger, batch: torch.Tensor, with_features: bool, repeats: int, warmups: int = 1,
               sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per clip of the bare forward pass through the engine serving uses, on the
    threads it uses; ``with_features``: with the taps' summaries that tagging stores, as
    serving runs it (``Engine.summarized``). On a GPU ``sync`` waits for the device, so
    each reading includes its work."""
    import time

    torch.set_num_threads(tagger.threads)
    run = tagger.engine.summarized if with_features else lambda x: tagger.engine(x, False)
    for _ in range(warmups):  # allocator, kernels (and cuDNN's choice of algorithm)
        run(batch)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(batch)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds so far of a process and the processes it started that still run (a
    worker's stage processes)."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for child, text in stats.items():
        children.setdefault(int(text.rsplit(")", 1)[1].split()[1]), []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += _stat_cpu_s(stats[p])
        todo.extend(children.get(p, []))
    return total


def _all_stats() -> dict[int, str]:
    """Every process's /proc/PID/stat text, by pid."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text()
        except OSError:
            continue  # it ended meanwhile
    return stats


def _stat_cpu_s(stat: str, ended_children: bool = False) -> float:
    """User + system CPU seconds from the text of a /proc/PID/stat file; with
    ``ended_children`` also those of its children that ended and were waited for."""
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if ended_children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def processes_cpu_s(command: str) -> float:
    """CPU seconds so far of every process whose command name is ``command`` (Linux /proc;
    PostgreSQL's server runs as many ``postgres`` processes), with that of their children
    that ended: a connection's server process hands its CPU to the postmaster's count of
    waited-for children when the client disconnects, so without it a command that
    connects and exits between two readings (``soundtag ingest``) would seem to cost the
    server nothing."""
    return sum(_stat_cpu_s(text, ended_children=True) for text in _all_stats().values()
               if text[text.index("(") + 1 : text.rindex(")")] == command)


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds so far of the whole machine (Linux /proc/stat, all cores): busy (user,
    nice, system, interrupts) and stolen by the hypervisor. Busy time also counts what no
    process is charged for (the kernel's network and interrupt work)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cpu_name() -> str:
    """The CPU model and whether it has AVX-512 BF16 (bf16 autocast) or runs fp32."""
    import re

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    kind = "AVX-512 BF16" if "avx512_bf16" in info else "AVX2 only, fp32" if "avx2" in info else "no AVX2"
    return f"{model.group(1).strip() if model else 'unknown CPU'} ({kind}, {os.cpu_count()} cores)"


def write_noise_wav(path: Path, seconds: int, sample_rate: int = 44_100) -> Path:
    """A 16-bit WAV of band-passed noise of any length, written a minute at a time."""
    import soundfile as sf

    rng = np.random.default_rng(seconds)
    with sf.SoundFile(path, "w", sample_rate, 1, "PCM_16") as f:
        for start in range(0, seconds, 60):
            walk = np.cumsum(rng.standard_normal(min(60, seconds - start) * sample_rate))
            f.write((0.025 * (walk - np.convolve(walk, np.ones(64) / 64, "same"))).astype(np.float32))
    return path


# Peak RSS (kB) of everything `soundtag ingest PATH` ran, its pool processes included.
_PEAK_OF_INGEST = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", sys.argv[1], "--quiet"], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode, time.perf_counter() - t0)
"""


def ingest_peak(path: Path, env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `soundtag ingest PATH` in a fresh process tree."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_OF_INGEST, str(path)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    if out[1] != "0":
        raise RuntimeError(f"soundtag ingest {path} exited {out[1]}")
    return int(out[0]) / 1024, float(out[2])
