"""Verdicts: is a clip (or a window of one) one of the labels, an unknown sound, or silence?

* ``silence``: its loudest 23 ms frame is below ``SILENCE_GATE_DBFS``. The network never
  sees levels (it references every window to its own peak, so quiet recordings are tagged
  like loud ones); that is why hiss 70 dB down used to be tagged with full confidence.
  The gate is measured from the log-mel the network sees, so it costs nothing extra.
* ``unknown``: audible, but none of the labels fits. Two tests, both fitted on ESC-50
  folds 1–4 and never on fold 5 (``training/open_set.py``):
  - the calibrated top-1 confidence is below ``min_confidence`` (the network is torn
    between labels), or
  - the clip's embedding is far from every label's prototype (the mean embedding of its
    folds 1–4 clips, by cosine): the network can be confidently wrong on speech or tones,
    having never been shown any, but their embeddings lie away from every class.
* ``label``: otherwise; the top-3 is shown in every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch


class Verdict(StrEnum):
    LABEL = "label"
    UNKNOWN = "unknown"
    SILENCE = "silence"


# ffmpeg's silencedetect uses the same default. Measured on the loudest 70 ms (the silence
# set of training/open_set.py): digital silence reads −135 dBFS, hiss at −70 dBFS −69.5,
# room tone (brown noise under a 50 Hz hum, −65 dBFS RMS) −62.3. ESC-50 folds 1–4 peak at
# −45.7 dBFS at the quietest (median −13.4): none is silence as recorded, 0.4 % would be
# 20 dB quieter, 4.9 % 30 dB quieter, 24 % 40 dB quieter.
SILENCE_GATE_DBFS = -60.0
# A frame's summed mel power in dB reads a signal's RMS level in dBFS plus this (white noise
# at r dBFS reads r + 52.8; a full-scale sine, −3.01 dBFS RMS, reads 49.9).
LEVEL_OFFSET_DB = 52.9


# Levels are power means over this many frames (70 ms): a 23 ms frame of brown noise or
# hum swings ±3 dB around its level, and hearing integrates over about 100 ms anyway.
LEVEL_FRAMES = 3


def frame_levels_dbfs(spectrogram: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n_mels, frames) log-mel in dB (reference 1, as ``tagger.features.log_mel`` gives it)
    → the level in dBFS (RMS) around each frame."""
    db = torch.as_tensor(spectrogram, dtype=torch.float32)
    return levels_dbfs(torch.pow(10.0, db / 10.0).sum(dim=-2))


def levels_dbfs(frame_power: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each frame's mel power summed over the bands → the level in dBFS (RMS) around it."""
    power = torch.as_tensor(frame_power, dtype=torch.float32)
    if power.shape[-1] >= LEVEL_FRAMES:
        power = torch.nn.functional.avg_pool1d(power[None, None], LEVEL_FRAMES, stride=1,
                                               padding=LEVEL_FRAMES // 2, count_include_pad=False)[0, 0]
    return (10.0 * torch.log10(power.clamp(min=1e-30)) - LEVEL_OFFSET_DB).cpu().numpy()


@dataclass(frozen=True)
class OpenSet:
    """The fitted decision. Without ``prototypes`` (a checkpoint never fitted) only the
    confidence test applies."""

    min_confidence: float = 0.0
    prototypes: np.ndarray | None = None  # (classes, embedding), L2-normalised
    min_similarity: float = -1.0  # cosine to the nearest prototype below this: unknown
    silence_gate_dbfs: float = SILENCE_GATE_DBFS

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> OpenSet:
        fitted = metrics.get("open_set")
        if not fitted:
            return cls()
        prototypes = fitted.get("prototypes")
        return cls(
            min_confidence=float(fitted["min_confidence"]),
            prototypes=unit_rows(np.asarray(prototypes, dtype=np.float32)) if prototypes else None,
            min_similarity=float(fitted.get("min_similarity", -1.0)),
            silence_gate_dbfs=float(fitted.get("silence_gate_dbfs", SILENCE_GATE_DBFS)),
        )

    def similarity(self, embedding: np.ndarray) -> float:
        """Cosine similarity to the nearest label prototype (1.0 without prototypes)."""
        if self.prototypes is None:
            return 1.0
        return float(np.max(self.prototypes @ unit_rows(np.asarray(embedding, dtype=np.float32)[None])[0]))

    def is_silent(self, loudest_dbfs: float) -> bool:
        return not loudest_dbfs >= self.silence_gate_dbfs  # NaN (no frames) is silence too

    def decide(self, probabilities: np.ndarray, loudest_dbfs: float, embedding: np.ndarray | None = None) -> Verdict:
        if self.is_silent(loudest_dbfs):
            return Verdict.SILENCE
        if float(np.max(probabilities)) < self.min_confidence:
            return Verdict.UNKNOWN
        if embedding is not None and self.similarity(embedding) < self.min_similarity:
            return Verdict.UNKNOWN
        return Verdict.LABEL


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.asarray(x / norms, dtype=np.float32)
