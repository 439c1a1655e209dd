"""The one inference core: decoded clips → top-3, timeline, feature maps, embedding.

Used by bulk ingest, the Faust worker and the API. Clips that fit one 5 s window (short
ones repeated to fill it) run through the network together, in chunks of ``batch_size``.
A longer clip is tagged as a stream of windows inside it that overlap by half, the last
ending at the clip's end (``tagger.long_clips``): from its samples when it was held, or
decoded again block by block when it was too long to hold. Its top-3 is the mean of its
audible windows' probabilities; it also gets a per-window timeline, and its feature maps
and embedding come from one fully-convolutional pass over its first minute.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagger.audio import DecodedAudio, decode_stream
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
    log_mel,
    one_window_log_mel,
)
from tagger.long_clips import EnvelopeStream, RecordingStream, StreamedRecording
from tagger.verdicts import OpenSet, Verdict, frame_levels_dbfs

ENVELOPE_POINTS = 1000
FEATURE_MAP_MAX_SECONDS = 60  # feature maps of a long clip cover its first minute
# Decoders keep this much of a clip (``hold_samples``): all of most clips, and of a longer
# recording what its feature maps need; the rest is decoded again as a stream.
HELD_SAMPLES = FEATURE_MAP_MAX_SECONDS * SAMPLE_RATE
STREAM_BLOCK = 1 << 18  # samples of a held clip per step of its stream (6 s)


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
    def tag(self, clips: list[DecodedAudio], specs: list[torch.Tensor | None] | None = None) -> list[TagResult]:
        """Each clip's top 3, probabilities, feature maps and, past one window, its timeline.

        ``specs``: the clips' ``features`` when the caller computed them already (the
        pipeline does, on its decode threads); None for a clip longer than one window."""
        if specs is None:
            with intra_op_threads(self.threads):
                specs = [self.features(c) for c in clips]
        single = {i: spec for i, spec in enumerate(specs) if spec is not None}
        results = self._tag_single_windows(clips, single)
        with intra_op_threads(self.threads):
            results |= {i: self._tag_long(clip) for i, clip in enumerate(clips) if i not in single}
        return [results[i] for i in range(len(clips))]

    def features(self, clip: DecodedAudio) -> torch.Tensor | None:
        """(1, 1, n_mels, frames): the log-mel of the one window the model sees of a clip
        (``window_input``); None for a clip longer than that (``_tag_long`` streams it).

        One clip at a time, on the calling thread: the pipeline runs it on its decode
        threads, in parallel, next to the decoding."""
        return one_window_log_mel(clip, self.device)

    def _tag_single_windows(self, clips: list[DecodedAudio], specs: dict[int, torch.Tensor]) -> dict[int, TagResult]:
        """The common case: probabilities and feature maps from one batched pass (``specs``:
        the one-window clips' log-mels by their place in ``clips``)."""
        out = {}
        chosen = list(specs)
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

    def _tag_long(self, clip: DecodedAudio) -> TagResult:
        """A clip longer than a window: every window's probabilities, streamed
        (``tagger.long_clips``); the clip's answer is its audible windows' mean, and its
        feature maps and embedding are those of its first minute (all of a long
        recording's would cost gigabytes: they are 16× the spectrogram at the stem)."""
        streamed = self._stream(clip)
        starts, probs = streamed.starts, streamed.probabilities
        loudest = [_loudest(streamed.levels[s : s + WINDOW_FRAMES]) for s in starts]
        verdicts = [self.open_set.decide(p, level) for p, level in zip(probs, loudest, strict=True)]
        # The clip's answer is its audible windows' mean: silent stretches of a long
        # recording would otherwise pull it towards whatever silence is mistaken for.
        audible = [n for n, v in enumerate(verdicts) if v != Verdict.SILENCE] or list(range(len(starts)))
        first_minute = log_mel(torch.from_numpy(clip.samples[:HELD_SAMPLES]).to(self.device))
        _, maps, emb = self._summarized(first_minute)
        clip_probs = probs[audible].mean(0)
        result = TagResult(
            top3=self._top3(clip_probs), probabilities=clip_probs.astype(np.float32),
            spectrogram=streamed.spectrogram, feature_maps=_clip_maps(maps, 0),
            embedding=emb[0].float().cpu().numpy(),
            envelope=clip.envelope if clip.envelope is not None else streamed.envelope)
        result.verdict = self.open_set.decide(clip_probs, max(loudest), result.embedding)
        result.timeline = [self._window_entry(clip, start, p, v)
                           for start, p, v in zip(starts, probs, verdicts, strict=True)]
        result.events = detect_events(
            [Window(w["start_s"], w["end_s"], w["verdict"], *w["top3"][0]) for w in result.timeline],
            streamed.levels, FRAME_SECONDS, self.open_set.silence_gate_dbfs)
        return result

    def _stream(self, clip: DecodedAudio) -> StreamedRecording:
        stream = RecordingStream(clip.num_samples, self.probabilities, self.batch_size, ENVELOPE_POINTS)
        if clip.held_whole:
            for start in range(0, len(clip.samples), STREAM_BLOCK):
                stream.push(clip.samples[start : start + STREAM_BLOCK])
        elif clip.source is not None:
            # Bounded by what the first decoding found, should the file have grown since.
            decode_stream(clip.source, stream.push, max_duration_s=clip.duration_s + 1.0)
        else:
            raise ValueError("a long clip came without its samples or a way to decode it again")
        return stream.finish()

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
            spec = clip_log_mel(clip.samples[:HELD_SAMPLES], self.device)
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
    stream = EnvelopeStream(len(samples), points)
    stream.push(samples)
    return stream.finish()
