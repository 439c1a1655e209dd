"""ESC-50: metadata, and log-mel spectrograms cached once per preprocessing setup.

The spectrograms come from ``tagger.audio.decode_file`` and ``tagger.features.log_mel``,
exactly the path the tagger takes, so training and serving see identical inputs.
The cache file's name carries a hash of the preprocessing settings; change a setting
and a new cache is built.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tagger.audio import decode_file
from tagger.config import get_settings
from tagger.features import PREPROCESSING, SAMPLE_RATE, WINDOW_SAMPLES, log_mel, window_input

DEFAULT_ESC50_DIRS = (
    Path("../shared/datasets/esc50"),
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "esc50",
)


TEST_FOLD = 5  # ESC-50's test fold: never trained on, validated on or calibrated on


@dataclass
class Esc50:
    root: Path
    files: list[str]
    folds: np.ndarray
    targets: np.ndarray
    class_names: list[str]


def find_esc50_dir(explicit: str | Path | None = None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if (configured := get_settings().esc50_dir) is not None:
        candidates.append(configured)
    candidates += list(DEFAULT_ESC50_DIRS)
    for c in candidates:
        if (c / "meta" / "esc50.csv").is_file():
            return c.resolve()
    raise FileNotFoundError(
        "ESC-50 not found: pass --data-dir or set SOUNDTAG_ESC50_DIR to the folder "
        "holding meta/esc50.csv and audio/"
    )


def read_esc50(root: str | Path | None = None) -> Esc50:
    root = find_esc50_dir(root)
    with open(root / "meta" / "esc50.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names: dict[int, str] = {}
    for r in rows:
        names[int(r["target"])] = r["category"]
    return Esc50(
        root=root,
        # The compact copy stores Ogg Vorbis under the official .wav names.
        files=[r["filename"].rsplit(".", 1)[0] + ".ogg" for r in rows],
        folds=np.array([int(r["fold"]) for r in rows]),
        targets=np.array([int(r["target"]) for r in rows]),
        class_names=[names[i] for i in range(len(names))],
    )


BAND_LIMITS = {"full": None, "16k": 16_000, "8k": 8_000}  # training variants: what low-rate files sound like


def through_rate(samples: np.ndarray, rate: int | None) -> np.ndarray:
    """A 44.1 kHz clip as it sounds after a trip through ``rate`` (the decoder's own soxr)."""
    if rate is None:
        return samples
    import soxr

    down = soxr.resample(samples, SAMPLE_RATE, rate)
    return soxr.resample(down, rate, SAMPLE_RATE).astype(np.float32)[: len(samples)]


def clip_spectrogram(path: Path, rate: int | None = None) -> torch.Tensor:
    """(1, n_mels, 431) log-mel of one ESC-50 clip: the tagger's own decode and features."""
    samples = through_rate(decode_file(path).samples, rate)
    return log_mel(window_input(torch.from_numpy(samples))[:WINDOW_SAMPLES].unsqueeze(0))[0]


def cache_path(cache_dir: Path, data: Esc50, variant: str = "full") -> Path:
    # Keyed by the preprocessing and by which clips, so a changed setting or another copy
    # of the data set never reads a stale cache.
    key = hashlib.sha256(json.dumps([PREPROCESSING, str(data.root), data.files, variant],
                                    sort_keys=True).encode())
    return cache_dir / f"esc50-logmel-{variant}-{key.hexdigest()[:12]}.npy"


def load_spectrograms(data: Esc50, cache_dir: str | Path | None = None, variant: str = "full") -> np.ndarray:
    """All clips' log-mel as float16 (N, 1, n_mels, 431), built once and then memory-mapped.

    ``variant`` names a band limit from ``BAND_LIMITS`` (the clip through 8 or 16 kHz).
    """
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_path(cache_dir, data, variant)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape[0] == len(data.files):
            return arr
    specs = [
        clip_spectrogram(data.root / "audio" / name, BAND_LIMITS[variant]).numpy().astype(np.float16)
        for name in tqdm(data.files, desc=f"caching log-mel spectrograms ({variant})", unit="clip")
    ]
    arr = np.stack(specs)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    return arr
