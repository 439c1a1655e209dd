"""Which engine runs the network: speed on this CPU and answers on ESC-50's fold 5.

For each engine, the network with its feature-map taps on batches of 32 real 5 s
log-mel windows, at 1 and 2 intra-op threads: wall ms per clip and CPU ms per clip
(process time, so a second thread's synchronisation shows). Then all 400 fold-5 clips
through each engine against eager PyTorch fp32, the reference: how many clips keep
exactly the same top 3, and the largest difference of any class probability. The rule
(issue 16): the fastest engine whose top 3 are identical on every clip and whose
probabilities stay within 1e-3.

Engines: eager PyTorch fp32 (channels-last, as served), eager bf16 autocast (only timed
where the CPU has AVX-512 BF16; elsewhere its answers are still compared), torch.compile
(fp32), ONNX Runtime (fp32, the exported graph the service runs) and OpenVINO (fp32, the
same ONNX graph; only if the `openvino` package is installed: not a dependency).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deploy.benchmarks.common import cpu_name, load_tagger
from tagger.device import _cpu_has_bf16, cpu_cores
from tagger.engine import OnnxRuntimeEngine, _Outputs, export_onnx
from tagger.network import FEATURE_TAPS

Run = Callable[[torch.Tensor], torch.Tensor]  # windows → logits (the taps computed, then dropped)
BATCH = 32


def _torch(model: torch.nn.Module, dtype: torch.dtype | None) -> Run:
    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits, _, _ = model(x.contiguous(memory_format=torch.channels_last), with_features=True)
        return logits.float()
    return run


def _compiled(model: torch.nn.Module) -> Run:
    compiled = torch.compile(_Outputs(model).eval())

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return compiled(x.contiguous(memory_format=torch.channels_last))[0]
    return run


def _onnxruntime(model: torch.nn.Module, threads: int) -> Run:
    engine = OnnxRuntimeEngine(model, threads)
    return lambda x: engine(x, False)


def _openvino(model: torch.nn.Module, threads: int) -> Run | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(export_onnx(model)), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                   "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[compiled.outputs[0]].copy())


def _time(run: Run, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(wall, CPU) ms per clip, medians over ``repeats`` calls after a warm-up."""
    run(batch)
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        run(batch)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1000 * float(np.median(wall)) / len(batch), 1000 * float(np.median(cpu)) / len(batch)


def _probabilities(run: Run, windows: torch.Tensor) -> np.ndarray:
    out = []
    for i in range(0, len(windows), BATCH):
        chunk = windows[i : i + BATCH]
        padded = torch.cat([chunk, chunk[:1].expand(BATCH - len(chunk), *chunk.shape[1:])]) if len(chunk) < BATCH \
            else chunk  # one batch shape: torch.compile does not recompile
        out.append(torch.softmax(run(padded)[: len(chunk)].float(), dim=-1).numpy())
    return np.concatenate(out)


def _fold5_windows(tagger: Any, quick: bool) -> torch.Tensor:
    from tagger.audio import decode_file
    from training.data import TEST_FOLD, read_esc50

    data = read_esc50()
    files = [data.root / "audio" / f for f, fold in zip(data.files, data.folds, strict=True) if fold == TEST_FOLD]
    return torch.cat([tagger.features(decode_file(p)) for p in files[: 64 if quick else None]])


def run(quick: bool = False) -> dict[str, Any]:
    tagger, _ = load_tagger()
    model = tagger.model.float().eval()
    torch.set_num_threads(1)
    windows = _fold5_windows(tagger, quick)
    batch = windows[:BATCH]
    bf16 = _cpu_has_bf16()
    figures: dict[str, Any] = {"cpu": cpu_name(), "cores": cpu_cores(),
                               "model_version": tagger.version, "batch": BATCH, "fold5_clips": len(windows)}
    makers: dict[str, Callable[[int], Run | None]] = {
        "torch_fp32": lambda t: _torch(model, None),
        "torch_bf16": lambda t: _torch(model, torch.bfloat16),
        "torch_compile_fp32": lambda t: _compiled(model),
        "onnxruntime_fp32": lambda t: _onnxruntime(model, t),
        "openvino_fp32": lambda t: _openvino(model, t),
    }
    # Answers (they do not depend on the thread count), against eager fp32.
    engines: dict[str, Run] = {}
    reference = np.zeros(0)
    for name, make in makers.items():
        t0 = time.perf_counter()
        engine = make(1)
        if engine is None:
            figures[name] = "not installed"
            continue
        if name == "torch_compile_fp32":
            engine(batch)
            figures[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
        engines[name] = engine
        probs = _probabilities(engine, windows)
        if name == "torch_fp32":
            reference = probs
        top3 = np.argsort(-probs, axis=1)[:, :3]
        same = int((top3 == np.argsort(-reference, axis=1)[:, :3]).all(axis=1).sum())
        figures[f"{name}_top3_identical"] = f"{same}/{len(windows)}"
        figures[f"{name}_max_abs_dprob"] = float(f"{np.abs(probs - reference).max():.2e}")
    if not bf16:
        engines.pop("torch_bf16")
        figures["torch_bf16_ms_per_clip"] = "no AVX-512 BF16 here: emulated, not timed"
    # Speed: the engines take turns, several rounds, and each keeps its fastest round, so a
    # noisy neighbour on a shared machine slows one round, not one engine.
    for threads in (1, 2):
        torch.set_num_threads(threads)
        timed: dict[str, Run] = {}
        for name, engine in engines.items():  # the engines with their own thread pools, rebuilt
            rebuilt = makers[name](threads) if name in ("onnxruntime_fp32", "openvino_fp32") else engine
            timed[name] = rebuilt or engine
        best: dict[str, tuple[float, float]] = {}
        for _ in range(2 if quick else 5):
            for name, engine in timed.items():
                wall, cpu = _time(engine, batch, 3)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
        for name, (wall, cpu) in best.items():
            figures[f"{name}_{threads}t_ms_per_clip"] = round(wall, 2)
            figures[f"{name}_{threads}t_cpu_ms_per_clip"] = round(cpu, 2)
    torch.set_num_threads(tagger.threads)
    figures["served_engine"] = tagger.engine.name
    figures["taps"] = ",".join(FEATURE_TAPS)
    return figures
