"""The one inference core: decoded clips → top-3, timeline, feature maps, embedding.

Used by bulk ingest, the Faust worker and the API. A batch of clips becomes one
stack of 5 s windows (short clips repeated to fill one, long ones tagged with windows
inside the clip that overlap by half, the last ending at the clip's end),
run through the network in chunks of ``batch_size``. A clip's top-3 is the mean of
its windows' class probabilities; clips longer than one window also get a per-window
timeline, and their feature maps come from one extra fully-convolutional pass over
the clip (its first minute) so the page can draw them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagger.audio import DecodedAudio
from tagger.checkpoint import Checkpoint, load_checkpoint
from tagger.device import resolve_device
from tagger.engine import (
    Engine,
    EngineName,
    Summaries,
    default_threads,
    forward,
    intra_op_threads,
    make_engine,
)
from tagger.events import Window, detect_events
from tagger.features import (
    HOP_LENGTH,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    WINDOW_SECONDS,
    clip_log_mel,
    window_starts,
)
from tagger.verdicts import OpenSet, Verdict, frame_levels_dbfs

ENVELOPE_POINTS = 1000
FEATURE_MAP_MAX_SECONDS = 60  # feature maps of a long clip cover its first minute
FEATURE_MAP_MAX_FRAMES = 1 + FEATURE_MAP_MAX_SECONDS * SAMPLE_RATE // HOP_LENGTH


def feature_map_span_s(duration_s: float) -> float:
    """Seconds of model input across a stored feature map's width: a clip that fits one
    window is repeated to fill it, a longer one is seen whole (up to its first minute)."""
    if 1 + int(duration_s * SAMPLE_RATE) // HOP_LENGTH <= WINDOW_FRAMES:
        return WINDOW_SECONDS
    return min(duration_s, FEATURE_MAP_MAX_SECONDS)


@dataclass
class TagResult:
    top3: list[tuple[str, float]]
    probabilities: np.ndarray  # (num_classes,)
    spectrogram: np.ndarray  # (n_mels, frames) dB, what the model saw, over the clip's real length
    feature_maps: dict[str, dict[str, np.ndarray]]  # tap → {"mean", "channels", "channel_index"}
    embedding: np.ndarray  # (512,)
    envelope: np.ndarray  # (2, points): min and max of the waveform per bucket
    timeline: list[dict[str, Any]] = field(default_factory=list)  # per 5 s window when longer than one
    verdict: str = Verdict.LABEL  # label, unknown or silence (tagger.verdicts)
    events: list[dict[str, Any]] = field(default_factory=list)  # tagger.events


class Tagger:
    def __init__(self, checkpoint: Checkpoint, device: torch.device, batch_size: int = 32,
                 engine: EngineName = "auto", threads: int | None = None, export_cache: Path | None = None) -> None:
        self.device = device
        self.batch_size = batch_size
        self.model = checkpoint.model.to(device).to(memory_format=torch.channels_last).eval()
        self.class_names = checkpoint.class_names
        self.version = checkpoint.version
        self.open_set = OpenSet.from_metrics(checkpoint.metrics)
        self.threads = threads or default_threads()
        self.engine: Engine = make_engine(self.model, device, engine, self.threads, checkpoint.sha256, export_cache)
        # One forward at a time: on a few cores concurrent forwards only fight for them.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 32, engine: EngineName = "auto",
             threads: int | None = None, export_cache: str | Path | None = None) -> Tagger:
        """``export_cache``: a folder where the ONNX export of this file is kept between loads."""
        dev = resolve_device(device)
        if dev.type == "cuda":
            batch_size *= 4  # a GPU has memory to spare and is idle between small batches
        return cls(load_checkpoint(path, dev), dev, batch_size, engine, threads,
                   Path(export_cache) if export_cache is not None else None)

    # -- model ---------------------------------------------------------------
    def _forward(self, x: torch.Tensor, with_features: bool,
                 block_taps: dict[str, torch.Tensor] | None = None) -> Any:
        with self._lock:
            if block_taps is not None:  # every block's output: only the torch module has them
                return forward(self.model, x, self.device, with_features=with_features, block_taps=block_taps)
            return self.engine(x, with_features)

    def _summarized(self, x: torch.Tensor) -> tuple[torch.Tensor, Summaries, torch.Tensor]:
        with self._lock:
            return self.engine.summarized(x)

    def probabilities(self, windows: torch.Tensor | list[torch.Tensor]) -> np.ndarray:
        """Class probabilities of (1, n_mels, frames) spectrogram windows (a tensor or a list
        of views into a long clip's spectrogram, stacked one batch at a time)."""
        out = []
        for i in range(0, len(windows), self.batch_size):
            batch = windows[i : i + self.batch_size]
            logits = self._forward(batch if isinstance(batch, torch.Tensor) else torch.stack(batch),
                                   with_features=False)
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    # -- clips ---------------------------------------------------------------
    def tag(self, clips: list[DecodedAudio], specs: list[torch.Tensor] | None = None) -> list[TagResult]:
        """Each clip's top 3, probabilities, feature maps and, past one window, its timeline.

        ``specs``: the clips' ``features`` when the caller computed them already (the
        pipeline does, on its decode threads)."""
        if specs is None:
            with intra_op_threads(self.threads):
                specs = [self.features(c) for c in clips]
        single = [i for i, spec in enumerate(specs) if len(window_starts(spec.shape[-1])) == 1]
        long = [i for i in range(len(clips)) if i not in set(single)]
        results = self._tag_single_windows(clips, specs, single) | self._tag_long(clips, specs, long)
        return [results[i] for i in range(len(clips))]

    def features(self, clip: DecodedAudio) -> torch.Tensor:
        """(1, 1, n_mels, frames): the log-mel of what the model sees of a clip (``window_input``).

        One clip at a time, on the calling thread: the pipeline runs it on its decode
        threads, in parallel, next to the decoding."""
        if clip.length >= 0:
            raise ValueError("the clip came without its samples; its features were computed where it was decoded")
        return clip_log_mel(clip.samples, self.device)

    def _tag_single_windows(self, clips: list[DecodedAudio], specs: list[torch.Tensor],
                            chosen: list[int]) -> dict[int, TagResult]:
        """The common case: probabilities and feature maps from one batched pass."""
        out = {}
        for c in range(0, len(chosen), self.batch_size):
            chunk = chosen[c : c + self.batch_size]
            batch = torch.stack([specs[i][0] for i in chunk])
            logits, maps, emb = self._summarized(batch)
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            # One copy to the host per batch, not two per clip (no-ops on a CPU).
            batch, emb = batch.cpu(), emb.float().cpu()
            for j, i in enumerate(chunk):
                result = self._result(clips[i], batch[j : j + 1], probs[j], _clip_maps(maps, j), emb[j])
                levels = frame_levels_dbfs(result.spectrogram)
                result.verdict = self.open_set.decide(probs[j], _loudest(levels), result.embedding)
                label, confidence = result.top3[0]
                result.events = detect_events([Window(0.0, round(clips[i].duration_s, 3), result.verdict, label,
                                                      confidence)], levels, FRAME_SECONDS,
                                              self.open_set.silence_gate_dbfs)
                out[i] = result
        return out

    def _tag_long(self, clips: list[DecodedAudio], specs: list[torch.Tensor],
                  chosen: list[int]) -> dict[int, TagResult]:
        """Clips longer than a window: every window's probabilities (batched across clips),
        averaged; feature maps of the clip's first minute (all of a long recording's would
        cost gigabytes: they are 16× the spectrogram at the stem)."""
        windows = [(i, start) for i in chosen for start in window_starts(specs[i].shape[-1])]
        probs = self.probabilities([specs[i][0, ..., s : s + WINDOW_FRAMES] for i, s in windows])
        rows: dict[int, list[int]] = {i: [] for i in chosen}
        for n, (i, _) in enumerate(windows):
            rows[i].append(n)
        out = {}
        for i in chosen:
            levels = frame_levels_dbfs(specs[i][0, 0, :, : 1 + clips[i].num_samples // HOP_LENGTH])
            loudest = [_loudest(levels[s : s + WINDOW_FRAMES]) for _, s in (windows[n] for n in rows[i])]
            verdicts = [self.open_set.decide(probs[n], level) for n, level in zip(rows[i], loudest, strict=True)]
            # The clip's answer is its audible windows' mean: silent stretches of a long
            # recording would otherwise pull it towards whatever silence is mistaken for.
            audible = [n for n, v in zip(rows[i], verdicts, strict=True) if v != Verdict.SILENCE] or rows[i]
            _, maps, emb = self._summarized(specs[i][..., :FEATURE_MAP_MAX_FRAMES])
            clip_probs = probs[audible].mean(0)
            result = self._result(clips[i], specs[i], clip_probs, _clip_maps(maps, 0), emb[0])
            result.verdict = self.open_set.decide(clip_probs, max(loudest), result.embedding)
            result.timeline = [self._window_entry(clips[i], windows[n][1], probs[n], v)
                               for n, v in zip(rows[i], verdicts, strict=True)]
            result.events = detect_events(
                [Window(w["start_s"], w["end_s"], w["verdict"], *w["top3"][0]) for w in result.timeline],
                levels, FRAME_SECONDS, self.open_set.silence_gate_dbfs)
            out[i] = result
        return out

    def _window_entry(self, clip: DecodedAudio, start_frame: int, probs: np.ndarray,
                      verdict: str) -> dict[str, Any]:
        start = start_frame * HOP_LENGTH
        return {"start_s": round(start / SAMPLE_RATE, 3),
                "end_s": round(min((start + WINDOW_SAMPLES) / SAMPLE_RATE, clip.duration_s), 3),
                "top3": self._top3(probs), "verdict": str(verdict)}

    def layer_maps(self, clip: DecodedAudio) -> dict[str, np.ndarray]:
        """Channel means of the stem, every stage and every residual block (before and after
        its last activation) for one clip, over what the model sees of it."""
        with intra_op_threads(self.threads):
            spec = self.features(clip)[..., :FEATURE_MAP_MAX_FRAMES]
            taps: dict[str, torch.Tensor] = {}
            _, feats, _ = self._forward(spec, with_features=True, block_taps=taps)
        ordered = {"stem": feats["stem"]}
        for i in range(1, len(feats)):
            ordered.update({k: v for k, v in taps.items() if k.startswith(f"stage{i}.")})
            ordered[f"stage{i}"] = feats[f"stage{i}"]
        return {name: fm[0].float().mean(dim=0).cpu().numpy() for name, fm in ordered.items()}

    def _top3(self, probs: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-probs)[:3]
        return [(self.class_names[k], float(probs[k])) for k in order]

    def _result(self, clip: DecodedAudio, spec: torch.Tensor, probs: np.ndarray,
                feats: dict[str, dict[str, np.ndarray]], embedding: torch.Tensor) -> TagResult:
        return TagResult(
            top3=self._top3(probs),
            probabilities=np.asarray(probs, dtype=np.float32),
            # What the model saw, over the clip's real length: a short clip's repeated fill
            # is not drawn as if it were data.
            spectrogram=spec[0, 0, :, : 1 + clip.num_samples // HOP_LENGTH].float().cpu().numpy(),
            feature_maps=feats,
            embedding=embedding.float().cpu().numpy(),
            envelope=clip.envelope if clip.envelope is not None else waveform_envelope(clip.samples),
        )


FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE


def _loudest(levels: np.ndarray) -> float:
    return float(levels.max()) if len(levels) else float("-inf")


def _clip_maps(maps: Summaries, j: int) -> dict[str, dict[str, np.ndarray]]:
    return {tap: {part: values[j] for part, values in parts.items()} for tap, parts in maps.items()}


def waveform_envelope(samples: np.ndarray, points: int = ENVELOPE_POINTS) -> np.ndarray:
    """(2, points) min/max per bucket: draws the waveform faithfully at any width."""
    n = len(samples)
    points = max(1, min(points, n))
    edges = np.linspace(0, n, points + 1).astype(int)
    mins = np.minimum.reduceat(samples, edges[:-1])
    maxs = np.maximum.reduceat(samples, edges[:-1])
    return np.stack([mins, maxs]).astype(np.float32)
