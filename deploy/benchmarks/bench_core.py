"""Issue 2 figures: model-only inference, `soundtag ingest` end to end, bytes stored per clip.

- model-only: the Tagger's engine (ONNX Runtime fp32 on CPU by default) on its threads,
  on precomputed 5 s log-mel windows, ms per clip at batch 1 and batch 32, with the
  feature-map taps the pipeline stores and without; and the network's multiply-adds per
  5 s window with the arithmetic rate that batch 32 with taps reached (GFLOP/s, two
  operations per multiply-add): against the core's fp32 FMA peak it tells whether the
  engine or the arithmetic bounds the network on this machine;
- ingest: `tagger.ingest.ingest` on real 5 s clips into a fresh PostgreSQL database
  (decode → log-mel → model → codec → upsert), clips/s, and its ratio to the model-only
  rate with taps at batch 32 measured just before in the same process;
- storage: bytes in `clip_features` (+ the timeline JSON) per clip against the JSON
  the original service returned for the same clip (`POST /inference` shape).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from deploy.benchmarks.common import load_tagger, model_windows, real_clips, scratch_postgres, time_model
from tagger.audio import decode_file
from tagger.db import session_factory
from tagger.ingest import ingest
from tagger.pipeline import features_row


def model_only(tagger, clips: list[Path], repeats: int) -> dict:
    windows = model_windows(tagger, clips)
    out = {}
    for taps in (True, False):
        for bs in (1, 32):
            reps = repeats if bs == 32 else 4 * repeats
            ms = 1000 * time_model(tagger, windows[:bs], with_features=taps, repeats=reps)
            out[f"model_ms_per_clip_batch{bs}{'_taps' if taps else ''}"] = round(ms, 2)
    return out


def multiply_adds(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``x`` through the convolutions and the linear
    layer (everything else is a few per element: below a percent of the total here)."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * per_output
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def arithmetic_rate(tagger, ms_per_clip: float) -> dict:
    """The network's multiply-adds per 5 s window and the GFLOP/s that ``ms_per_clip`` means."""
    from tagger.features import N_MELS, WINDOW_FRAMES

    macs = multiply_adds(tagger.model, torch.zeros(1, 1, N_MELS, WINDOW_FRAMES))
    return {"model_mmac_per_clip": round(macs / 1e6, 1),
            "model_gflops_batch32_taps": round(2 * macs / (ms_per_clip / 1000) / 1e9, 1)}


def previous_layout_ratio(tagger, repeats: int) -> dict:
    """Model-only ms per clip of the layout shipped before (ResNet-18 widths 64→512 on 128
    mel bins) against today's, same batch, engine (eager torch: a layout comparison),
    precision and thread count, in this run."""
    from tagger.checkpoint import Checkpoint
    from tagger.features import N_MELS, WINDOW_FRAMES
    from tagger.inference import Tagger
    from tagger.network import AudioCNN

    previous = Tagger(Checkpoint(AudioCNN(widths=(64, 128, 256, 512)).eval(), tagger.class_names, "previous", {}),
                      tagger.device, engine="torch", threads=tagger.threads)
    current = Tagger(Checkpoint(tagger.model, tagger.class_names, tagger.version, {}), tagger.device,
                     engine="torch", threads=tagger.threads)
    out = {}
    for bs in (1, 32):
        n = repeats if bs == 32 else 4 * repeats
        now = time_model(current, torch.randn(bs, 1, N_MELS, WINDOW_FRAMES), True, n)
        before = time_model(previous, torch.randn(bs, 1, 128, WINDOW_FRAMES), True, n)
        out[f"previous_layout_ms_per_clip_batch{bs}_taps"] = round(1000 * before, 2)
        out[f"model_to_previous_ratio_batch{bs}"] = round(now / before, 3)
    return out


def ingest_rate(tagger, clips: list[Path]) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="soundtag-bench-"))
    try:
        for p in clips:
            shutil.copy(p, folder / p.name)
        with scratch_postgres() as url:
            sessions = session_factory(url)
            summary = ingest([folder], tagger, sessions, batch_size=32, progress=False)
            again = ingest([folder], tagger, sessions, batch_size=32, progress=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"ingest_clips": summary.tagged, "ingest_failed": summary.failed,
            "ingest_clips_per_s": round(summary.clips_per_second, 2),
            "ingest_rerun_seconds": round(again.seconds, 2), "ingest_rerun_skipped": again.skipped}


def storage(tagger, clips: list[Path]) -> dict:
    from api.original_response import inference_response

    stored, payload = [], []
    for p in clips:
        audio = decode_file(p)
        result = tagger.tag([audio])[0]
        row = features_row(result)
        stored.append(sum(len(row[k]) for k in ("spectrogram", "feature_maps", "waveform", "embedding"))
                      + len(json.dumps(row["timeline"] or [])))
        payload.append(len(json.dumps(inference_response(audio, result, tagger.layer_maps(audio)))))
    mean_stored, mean_payload = sum(stored) / len(stored), sum(payload) / len(payload)
    return {"stored_bytes_per_clip": round(mean_stored), "json_bytes_per_clip": round(mean_payload),
            "storage_ratio": round(mean_payload / mean_stored, 1)}


def run(quick: bool = False) -> dict:
    tagger, path = load_tagger()
    n = 40 if quick else 200
    clips = real_clips(n)
    figures: dict[str, Any] = {"model": path.name, "model_version": tagger.version,
                               "threads": torch.get_num_threads()}
    figures.update(model_only(tagger, clips, repeats=3 if quick else 10))
    figures.update(arithmetic_rate(tagger, figures["model_ms_per_clip_batch32_taps"]))
    figures.update(previous_layout_ratio(tagger, repeats=3 if quick else 10))
    figures.update(ingest_rate(tagger, clips))
    model_rate = 1000 / figures["model_ms_per_clip_batch32_taps"]
    figures["model_clips_per_s_batch32_taps"] = round(model_rate, 2)
    figures["ingest_to_model_ratio"] = round(figures["ingest_clips_per_s"] / model_rate, 3)
    figures.update(storage(tagger, clips[:5 if quick else 20]))
    return figures
