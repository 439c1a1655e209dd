"""Issue 16 item 5: the ingest command and the stream worker on a GPU, and where the time goes.

Meant for a machine with CUDA (`python -m deploy.benchmarks.run --clips DIR gpu`; on a
bare lent machine `bash deploy/benchmarks/gpu_machine.sh` sets everything up first).
Without a GPU the same steps run on the CPU as a smoke run; the figures name the device.

- precisions: the GPU's top 3 in fp32 (what serving runs there, with the log-mel on the GPU
  and, as ``served_fp32``, from the CPU as the decoding processes send it), TF32 and fp16 against the
  CPU's (ONNX Runtime fp32) on the same clips, and the network's ms per clip in each, when
  ``run --reference DIR`` names a folder of clips with the CPU's answers in ``reference.json``
  (``python -m deploy.benchmarks.bench_gpu reference DIR`` writes it on a CPU);
- model: the forward pass with its feature-map taps, ms per clip at the GPU batch (128)
  and at 32, waiting for the device;
- stages: wall ms per clip of each stage run one after the other on one thread, batches
  of 128, each including its device time (``bench_versus.stage_cpu`` with a wall clock);
- ingest: the `soundtag ingest` command with its decoding on threads (``--processes 1``) and
  in processes that decode for the one that owns the GPU (the default), taking turns twice,
  each into a fresh PostgreSQL database, and how busy the GPU was meanwhile (NVML);
- stream: one `soundtag worker` on the GPU behind a real tansu broker, decoding in the
  pool's processes, batches of 128; publish →
  row latency at half the default's rate.

``BENCH_GPU_SECTIONS=ingest,stream`` (names, comma-separated) runs those sections alone:
a second run on a lent machine's remaining minutes.

Each section's figures are printed as soon as it ends and kept in ``PARTIAL`` (a lent
machine's command can run out of time), and a section that fails records its error
instead of stopping the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import soundfile as sf
import torch

from deploy.benchmarks.bench_stream import dev_broker, run_stream_config
from deploy.benchmarks.bench_versus import cli_ingest_rate, stage_cpu
from deploy.benchmarks.common import cpu_name, model_windows, real_clips, scratch_postgres, time_model
from tagger.audio import DecodedAudio
from tagger.config import SHIPPED_MODEL_PATH
from tagger.device import cpu_cores, processes_that_fit
from tagger.features import clip_log_mel
from tagger.inference import Tagger
from tagger.ingest_processes import auto_processes

REFERENCE: Path | None = None  # `run --reference DIR`: clips and the CPU's answers to compare with
PARTIAL = Path("test-output/benchmarks-gpu.partial.json")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def answers(tagger: Tagger, clips: list[DecodedAudio], names: list[str],
            reference: dict[str, list[float]], cpu_log_mel: bool = False) -> dict[str, Any]:
    """Top-3 agreement and the largest probability difference against the reference.
    ``cpu_log_mel``: the network fed log-mels computed on the CPU, as the decoding processes
    compute them for the worker and ingest; otherwise on the tagger's device."""
    same_top3 = same_top1 = 0
    max_diff = 0.0
    for start in range(0, len(clips), 64):
        chunk = clips[start : start + 64]
        results = tagger.tag(chunk, [clip_log_mel(c.samples) for c in chunk] if cpu_log_mel else None)
        for name, result in zip(names[start : start + 64], results, strict=True):
            ref = np.asarray(reference[name], dtype=np.float32)
            same_top3 += bool(np.array_equal(np.argsort(-ref)[:3], np.argsort(-result.probabilities)[:3]))
            same_top1 += int(np.argmax(ref) == np.argmax(result.probabilities))
            max_diff = max(max_diff, float(np.abs(ref - result.probabilities).max()))
    return {"answers_compared": len(clips), "answers_top3_identical": same_top3,
            "answers_top1_identical": same_top1, "answers_max_abs_prob_diff": round(max_diff, 5)}


@contextlib.contextmanager
def precision(dtype: torch.dtype | None, tf32: bool) -> Iterator[None]:
    """The torch engine's forward pass in ``dtype`` (None: fp32), cuDNN's TF32 on or off."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    with mock.patch("tagger.engine.inference_dtype", lambda device: dtype):
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = before


PRECISIONS = {"fp32": (None, False), "tf32": (None, True), "fp16": (torch.float16, True)}


def precisions(tagger: Tagger, folder: Path, clips: list[Path]) -> dict[str, Any]:
    """What serving's fp32 answers against the CPU's, and what TF32 and fp16 would: answers
    and the network's ms per clip at the GPU batch, each (the log-mel on the GPU); and
    ``served_fp32``: the worker's and ingest's path, log-mels from the CPU into fp32."""
    from tagger.audio import decode_file

    reference = json.loads((folder / "reference.json").read_text())
    names = sorted(reference)
    decoded = [decode_file(folder / name) for name in names]
    out: dict[str, Any] = {}
    for name, (dtype, tf32) in PRECISIONS.items() if tagger.device.type == "cuda" else [("fp32", (None, False))]:
        with precision(dtype, tf32):
            out.update({f"{name}_{k}": v for k, v in answers(tagger, decoded, names, reference).items()})
            out[f"{name}_model_ms_per_clip_batch{tagger.batch_size}_taps"] = round(
                model_ms(tagger, clips, tagger.batch_size), 4)
    with precision(None, False):
        out.update({f"served_fp32_{k}": v for k, v in answers(tagger, decoded, names, reference, True).items()})
    return out


def model_ms(tagger: Tagger, clips: list[Path], batch: int) -> float:
    windows = model_windows(tagger, clips, count=batch).to(tagger.device)
    return 1000 * time_model(tagger, windows, True, repeats=20, warmups=3, sync=_sync)


class Utilization:
    """The GPU's busy percentage, sampled by NVML every 0.1 s while in the block."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Utilization:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (no GPU, or the package is missing): no figure
            return self

        def sample() -> None:
            while not self._stop.wait(0.1):
                self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def run(quick: bool = False) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = SHIPPED_MODEL_PATH
    tagger = Tagger.load(model_path, device=device)
    clips = real_clips(40 if quick else 4000)
    audio_s = sum(sf.info(str(p)).duration for p in clips)
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run: no GPU here)",
        "cpu": cpu_name(), "cores": cpu_cores(), "torch": torch.__version__, "engine": tagger.engine.name,
        "model_batch": tagger.batch_size, "clips": len(clips), "audio_seconds": round(audio_s, 1)}

    only = set(filter(None, os.environ.get("BENCH_GPU_SECTIONS", "").split(",")))  # a rerun: these alone

    def section(name: str, work: Callable[[], dict[str, Any]]) -> None:
        if only and name not in only:
            return
        t0 = time.perf_counter()
        try:
            got = work()
        except Exception as exc:  # broad on purpose: the other sections still run
            traceback.print_exc()
            got = {f"{name}_error": f"{type(exc).__name__}: {exc}"[:500]}
        got[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        figures.update(got)
        for key, value in got.items():
            print(f"{key:<44} {value}", flush=True)
        PARTIAL.parent.mkdir(exist_ok=True)
        PARTIAL.write_text(json.dumps(figures, indent=2))

    if REFERENCE is not None:
        reference = REFERENCE
        section("precisions", lambda: precisions(tagger, reference, clips))
    section("model", lambda: {f"model_ms_per_clip_batch{b}_taps": round(model_ms(tagger, clips, b), 3)
                              for b in (tagger.batch_size, 32)})

    def stages() -> dict[str, Any]:
        with scratch_postgres() as url:
            ms = stage_cpu(tagger, clips[:256], url, batch=tagger.batch_size, clock=time.perf_counter, sync=_sync)
        out = {f"stage_wall_ms_per_clip_{k}": round(1000 * v, 3) for k, v in ms.items()}
        out["stage_wall_ms_per_clip_sum"] = round(1000 * sum(ms.values()), 2)
        return out

    section("stages", stages)

    def ingest() -> dict[str, Any]:
        # --processes 1: one process, decoding on its threads; 0 (the default): on a GPU one
        # process tags, the others decode for it. Taking turns, each into a fresh database.
        out: dict[str, Any] = {"ingest_decode_processes": auto_processes(len(clips), device)}
        configs = (("threads", 1), ("decode_processes", 0))
        for _ in range(2):
            for name, processes in configs:
                with scratch_postgres() as url, Utilization() as busy:
                    rate = cli_ingest_rate(clips, url, model_path, processes, device=device)
                out.setdefault(f"ingest_{name}_clips_per_s_rounds", []).append(round(rate, 1))
                out.setdefault(f"ingest_{name}_gpu_busy_percent_rounds", []).append(busy.mean)
                print(f"ingest, {name}: {rate:.1f} clips/s", flush=True)
        for name, _ in configs:
            out[f"ingest_{name}_real_time_factor"] = round(
                float(np.mean(out[f"ingest_{name}_clips_per_s_rounds"])) * audio_s / len(clips))
        return out

    section("ingest", ingest)

    def stream() -> dict[str, Any]:
        # One worker, its batches decoded in the pool's processes (one per core but one);
        # then publish → row at half its rate.
        out: dict[str, Any] = {"stream_decode_processes": processes_that_fit(gpu=device == "cuda")}
        values = [p.read_bytes() for p in clips[: 40 if quick else 2000]]
        work = Path(tempfile.mkdtemp(prefix="soundtag-bench-gpu-"))
        with dev_broker(work) as (bootstrap, broker_pid), scratch_postgres("soundtag_bench_gpu") as url:
            for name in ("decode_processes",):
                with Utilization() as busy:
                    got = run_stream_config(bootstrap, url, model_path, values, None, work, device=device,
                                            broker_pid=broker_pid)
                key = f"stream_{name}"
                out[f"{key}_clips_per_s"] = got["clips_per_s"]
                out[f"{key}_real_time_factor"] = round(got["clips_per_s"] * audio_s / len(clips))
                out[f"{key}_cpu_ms_per_clip"] = got["cpu_ms_per_clip"]
                out[f"{key}_gpu_busy_percent"] = busy.mean
                print(f"{key}: {got['clips_per_s']} clips/s", flush=True)
            rate = out["stream_decode_processes_clips_per_s"]
            lat = run_stream_config(bootstrap, url, model_path, values[: 100 if quick else 1000], rate / 2,
                                    work, device=device)
            out.update({f"stream_{k}": v for k, v in lat.items() if k.startswith("latency")})
        out["stream_logs"] = str(work)
        return out

    section("stream", stream)
    return figures


def decode_threads(clips: list[Path], device: str) -> dict[str, Any]:
    """Whether decoding (and the log-mel) spreads over the cores inside one process: wall ms
    per clip on one thread and on one thread per core, each on clips of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from tagger.audio import decode_file

    tagger = Tagger.load(SHIPPED_MODEL_PATH, device=device)
    cores = cpu_cores()
    jobs: dict[str, Callable[[Path], object]] = {
        "decode_file": decode_file,
        "decode_file_and_log_mel": lambda p: tagger.features(decode_file(p)),
        "soundfile_read_path": lambda p: sf.read(str(p), dtype="float32"),
        "soundfile_read_file_object": lambda p: sf.read(open(p, "rb"), dtype="float32"),
    }
    out: dict[str, Any] = {}
    n, used = max(1, min(128, len(clips) // (2 * len(jobs)))), 0
    for name, job in jobs.items():
        for threads in (1, cores):
            chunk = clips[used : used + n]
            used += n
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(job, chunk[:threads]))  # warm-up: threads started, caches
                _sync()
                t0 = time.perf_counter()
                list(pool.map(job, chunk))
                _sync()
            out[f"{name}_{threads}_threads_wall_ms_per_clip"] = round(1000 * (time.perf_counter() - t0) / n, 3)
    for name in jobs:
        out[f"{name}_speedup_on_{cores}_threads"] = round(
            out[f"{name}_1_threads_wall_ms_per_clip"] / out[f"{name}_{cores}_threads_wall_ms_per_clip"], 2)
    return out


def probe(clips_dir: Path) -> None:
    """A short look at where one process's time goes on a machine with many cores: does
    decoding spread over them, and what a fresh process costs before its first clip."""
    import subprocess

    device = "cuda" if torch.cuda.is_available() else "cpu"
    clips = sorted(clips_dir.glob("*.ogg"))
    for key, value in decode_threads(clips, device).items():
        print(f"{key:<56} {value}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda' if torch.cuda.is_available() "
                    "else 'cpu'); import tagger.inference"], check=True)
    print(f"{'fresh_process_torch_device_and_tagger_import_s':<56} {time.perf_counter() - t0:.2f}", flush=True)


def write_reference(folder: Path, clips: list[Path]) -> None:
    """``clips`` copied into ``folder`` with the CPU's class probabilities for each (ONNX
    Runtime fp32) in ``reference.json``, for ``answers``."""
    import shutil

    from tagger.audio import decode_file

    tagger = Tagger.load(SHIPPED_MODEL_PATH, device="cpu")
    probs: dict[str, list[float]] = {}
    for start in range(0, len(clips), 32):
        chunk = clips[start : start + 32]
        for p, result in zip(chunk, tagger.tag([decode_file(p) for p in chunk]), strict=True):
            probs[p.name] = [float(x) for x in result.probabilities]  # unrounded: rounding makes ties
    folder.mkdir(parents=True, exist_ok=True)
    for p in clips:
        if p.parent.resolve() != folder.resolve():
            shutil.copy(p, folder / p.name)
    (folder / "reference.json").write_text(json.dumps(probs))
    print(f"{len(probs)} clips and their answers ({tagger.engine.name}) in {folder}")


def write_variants(src: Path, dst: Path, copies: int) -> None:
    """``copies`` distinct Ogg Vorbis files per clip in ``src`` (gains 1.0, 0.99, …, so every
    file has its own content hash), for a machine that can carry only a few clips."""
    from concurrent.futures import ProcessPoolExecutor

    dst.mkdir(parents=True, exist_ok=True)
    jobs = [(p, dst / f"{p.stem}-v{k}.ogg", 1.0 - 0.01 * k) for p in sorted(src.glob("*.ogg")) for k in range(copies)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_variant, jobs, chunksize=16))
    print(f"{len(jobs)} clips written to {dst}")


def _write_variant(job: tuple[Path, Path, float]) -> None:
    src, dst, gain = job
    data, rate = sf.read(str(src), dtype="float32")
    sf.write(str(dst), data * gain, rate, format="OGG", subtype="VORBIS")


def main(argv: list[str]) -> int:
    usage = ("usage: python -m deploy.benchmarks.bench_gpu reference DIR [CLIPS_DIR]  (default clips: ESC-50 fold 5)\n"
             "       python -m deploy.benchmarks.bench_gpu variants SRC_DIR DST_DIR COPIES")
    if len(argv) >= 2 and argv[0] == "reference":
        from training.data import read_esc50

        if len(argv) > 2:
            clips = sorted(Path(argv[2]).glob("*.ogg"))
        else:
            data = read_esc50()
            clips = [data.root / "audio" / f for f, fold in zip(data.files, data.folds, strict=True) if fold == 5]
        write_reference(Path(argv[1]), clips)
        return 0
    if len(argv) == 2 and argv[0] == "probe":
        probe(Path(argv[1]))
        return 0
    if len(argv) == 4 and argv[0] == "variants":
        write_variants(Path(argv[1]), Path(argv[2]), int(argv[3]))
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
