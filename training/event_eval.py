"""Event detection on long recordings built from ESC-50 clips: event-based F1, onset within 1 s.

Each recording is ``SECONDS`` of background (brown noise at −50 dBFS under pink noise at
−56 dBFS, about −49 dBFS in all, a quiet outdoor bed) with ``PER_RECORDING`` clips of one
fold placed at random, at least 1 s apart. A clip's true event runs from its first to its
last sample above digital silence (ESC-50 pads clips with zeros). A detected event matches a
true one with the same label whose onset is within ``ONSET_TOLERANCE_S`` (each true event
matched at most once); precision, recall and F1 count matches.

    python -m training.event_eval --model tagger/assets/audiocnn-esc50.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tagger.audio import DIGITAL_SILENCE, SAMPLE_RATE, DecodedAudio, decode_file
from tagger.inference import Tagger
from training.data import TEST_FOLD, read_esc50

SECONDS = 60
PER_RECORDING = 5
ONSET_TOLERANCE_S = 1.0


def background(n: int, rng: np.random.Generator) -> np.ndarray:
    def coloured(slope: float, dbfs: float) -> np.ndarray:
        spectrum = np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0) ** slope
        x = np.fft.irfft(spectrum, n)
        return x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)

    return (coloured(1.0, -50) + coloured(0.5, -56)).astype(np.float32)


def build_recording(clips: list[tuple[np.ndarray, str]], rng: np.random.Generator
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    n = SECONDS * SAMPLE_RATE
    x = background(n, rng)
    truth: list[dict[str, Any]] = []
    # Random gaps (at least 1 s) between the clips, in a random order.
    lengths = [len(c) for c, _ in clips]
    spare = n - sum(lengths) - SAMPLE_RATE * (len(clips) + 1)
    cuts = np.sort(rng.uniform(0, max(spare, 0), size=len(clips)))
    gaps = np.diff(np.concatenate([[0.0], cuts])).astype(int) + SAMPLE_RATE
    at = 0
    for (clip, label), gap in zip(clips, gaps, strict=True):
        at += int(gap)
        x[at : at + len(clip)] += clip
        sound = np.flatnonzero(np.abs(clip) > DIGITAL_SILENCE)
        if len(sound):
            truth.append({"start_s": (at + sound[0]) / SAMPLE_RATE, "end_s": (at + sound[-1] + 1) / SAMPLE_RATE,
                          "label": label})
        at += len(clip)
    return x, truth


def match(detected: list[dict[str, Any]], truth: list[dict[str, Any]]) -> int:
    used: set[int] = set()
    hits = 0
    for d in sorted(detected, key=lambda e: -e["confidence"]):
        for k, t in enumerate(truth):
            if k not in used and t["label"] == d["label"] and abs(t["start_s"] - d["start_s"]) <= ONSET_TOLERANCE_S:
                used.add(k)
                hits += 1
                break
    return hits


def evaluate_events(model_path: str | Path, recordings: int = 20, fold: int = TEST_FOLD, seed: int = 0,
                    data_dir: str | None = None) -> dict[str, Any]:
    tagger = Tagger.load(model_path, batch_size=64)
    data = read_esc50(data_dir)
    idx = np.flatnonzero(data.folds == fold)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(idx)[: recordings * PER_RECORDING]
    detected_n = truth_n = hits = 0
    onset_errors = []
    for r in tqdm(range(recordings), desc="recordings", unit="recording"):
        part = chosen[r * PER_RECORDING : (r + 1) * PER_RECORDING]
        clips = [(decode_file(data.root / "audio" / data.files[i]).samples, data.class_names[data.targets[i]])
                 for i in part]
        x, truth = build_recording(clips, rng)
        events = tagger.tag([DecodedAudio(x, SAMPLE_RATE, 1)])[0].events
        detected_n += len(events)
        truth_n += len(truth)
        hits += match(events, truth)
        for t in truth:
            same = [e for e in events if e["label"] == t["label"]]
            if same:
                onset_errors.append(min(abs(e["start_s"] - t["start_s"]) for e in same))
    precision = hits / detected_n if detected_n else 0.0
    recall = hits / truth_n if truth_n else 0.0
    return {
        "model_version": tagger.version, "fold": fold, "recordings": recordings, "seconds_each": SECONDS,
        "true_events": truth_n, "detected_events": detected_n, "matched": hits,
        "precision": round(precision, 3), "recall": round(recall, 3),
        "f1": round(2 * precision * recall / (precision + recall), 3) if hits else 0.0,
        "median_onset_error_s_when_labelled_right": round(float(np.median(onset_errors)), 3) if onset_errors else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.event_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--recordings", type=int, default=20)
    p.add_argument("--fold", type=int, default=TEST_FOLD)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    print(json.dumps(evaluate_events(args.model, args.recordings, args.fold, data_dir=args.data_dir), indent=1))


if __name__ == "__main__":
    main()
