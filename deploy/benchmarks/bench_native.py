"""The compiled parts against what runs without them, on the same clips, taking turns:

- decoding: ``decode_file`` through ``tagger._vorbis`` (libvorbisfile built with the package,
  its inverse MDCT through PFFFT, shared codebooks, one-lookup codewords) against
  libsndfile, the reader used where the extension is not built; CPU ms per clip, the
  largest sample difference;
- the log-mel: ``clip_log_mel`` through ``tagger._spectrum`` (PFFFT, the mel sums four frames at a time)
  against ``torch.stft`` and the banded filterbank, the path on a GPU and without the
  extension; CPU ms per clip on one thread, the largest difference in dB.

Each pair takes turns for several rounds (this VM's speed drifts within minutes), and the
medians are compared. Every clip is read from memory, so the disk is not timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import tagger.audio as audio
import tagger.features as features
from deploy.benchmarks.common import real_clips
from tagger.audio import decode_bytes
from tagger.features import clip_log_mel


def _alternating(runs: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, list[float]]:
    """CPU seconds of each run, ``rounds`` times in turn."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.process_time()
            run()
            times[name].append((time.process_time() - t0) / per_round)
    return times


def _without(module: Any, name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``module.name`` set to None (the path when the extension is not built)."""
    kept = getattr(module, name)
    setattr(module, name, None)
    try:
        return fn()
    finally:
        setattr(module, name, kept)


def run(quick: bool = False) -> dict[str, Any]:
    if getattr(audio, "_vorbis", None) is None or getattr(features, "_spectrum", None) is None:
        return {"skipped": "tagger._vorbis or tagger._spectrum is not built here (setup.py build_ext)"}
    torch.set_num_threads(1)  # as on the pipeline's threads and in its stage processes
    clips = [p.read_bytes() for p in real_clips(20 if quick else 200)]
    rounds = 2 if quick else 6

    def decode_all() -> list[np.ndarray]:
        return [decode_bytes(c).samples for c in clips]

    ours = decode_all()
    theirs = _without(audio, "_vorbis", decode_all)
    decode = _alternating({"compiled": decode_all, "libsndfile": lambda: _without(audio, "_vorbis", decode_all)},
                          rounds, len(clips))

    def log_mels() -> list[torch.Tensor]:
        return [clip_log_mel(s) for s in ours]

    mel_ours, mel_torch = log_mels(), _without(features, "_spectrum", log_mels)
    log_mel = _alternating({"compiled": log_mels, "torch": lambda: _without(features, "_spectrum", log_mels)},
                           rounds, len(clips))
    decode_ms = {k: 1000 * statistics.median(v) for k, v in decode.items()}
    log_mel_ms = {k: 1000 * statistics.median(v) for k, v in log_mel.items()}
    return {
        "clips": len(clips),
        "rounds": rounds,
        "decode_ms_per_clip_compiled": round(decode_ms["compiled"], 3),
        "decode_ms_per_clip_libsndfile": round(decode_ms["libsndfile"], 3),
        "decode_compiled_to_libsndfile": round(decode_ms["compiled"] / decode_ms["libsndfile"], 2),
        "decode_largest_sample_difference": float(max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True))),
        "log_mel_ms_per_clip_compiled": round(log_mel_ms["compiled"], 3),
        "log_mel_ms_per_clip_torch": round(log_mel_ms["torch"], 3),
        "log_mel_compiled_to_torch": round(log_mel_ms["compiled"] / log_mel_ms["torch"], 2),
        "log_mel_largest_difference_db": round(max(float((a - b).abs().max())
                                                   for a, b in zip(mel_ours, mel_torch, strict=True)), 4),
    }
