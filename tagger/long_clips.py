"""A recording longer than one window, tagged as a stream: samples → mel frames → 5 s windows
→ the network, a block at a time, so memory does not grow with the recording's length.

What is kept of a recording as it streams past: each window's probabilities, each frame's
power summed over the bands (the levels the silence gate and events are read from), a
spectrogram max-pooled in time to at most ``MAX_STORED_COLUMNS`` columns, and the
waveform's envelope. A window's dB are floored ``TOP_DB`` below its own peak, as a 5 s
training clip's are below its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tagger.features import (
    HOP_LENGTH,
    N_MELS,
    TOP_DB,
    WINDOW_FRAMES,
    MelStream,
    power_to_db,
    window_starts,
)
from tagger.verdicts import levels_dbfs

MAX_STORED_COLUMNS = 4096  # a long recording's stored spectrogram: the page draws at most this many
Score = Callable[[torch.Tensor], np.ndarray]  # (B, 1, n_mels, WINDOW_FRAMES) → (B, classes) probabilities


def frames_of(num_samples: int) -> int:
    return 1 + num_samples // HOP_LENGTH


def stored_frame_step(frames: int) -> int:
    """Frames per stored spectrogram column for a clip of ``frames`` frames."""
    return max(1, -(-frames // MAX_STORED_COLUMNS))


@dataclass
class StreamedRecording:
    starts: list[int]  # each window's first frame
    probabilities: np.ndarray  # (windows, classes)
    levels: np.ndarray  # (frames,) dBFS around each frame
    spectrogram: np.ndarray  # (n_mels, ≤ MAX_STORED_COLUMNS) dB, max-pooled over ``frame_step`` frames
    frame_step: int
    envelope: np.ndarray  # (2, points) min and max of the waveform per bucket


class RecordingStream:
    """Feed it a recording of ``num_samples`` samples in blocks (``push``), then ``finish``."""

    def __init__(self, num_samples: int, score: Score, batch_size: int, envelope_points: int) -> None:
        self.frames = frames_of(num_samples)
        self.starts = window_starts(self.frames)
        self.score, self.batch_size = score, batch_size
        self.step = stored_frame_step(self.frames)
        self._mel = MelStream()
        self._power = torch.zeros(N_MELS, 0)  # frames from ``_offset`` on that a window still needs
        self._offset = 0
        self._next = 0  # the next window to cut
        self._batch: list[torch.Tensor] = []
        # Filled in place: many small pieces kept among the large passing ones would leave
        # the allocator's heap too fragmented to give memory back.
        self._probs: np.ndarray | None = None  # (windows, classes), once the first batch is scored
        self._scored = 0
        self._frame_power = np.empty(self.frames, np.float32)
        self._columns = np.empty((N_MELS, -(-self.frames // self.step)), np.float32)
        self._pooled = 0
        self._unpooled = torch.zeros(N_MELS, 0)  # dB frames of a column not yet complete
        self._envelope = EnvelopeStream(num_samples, envelope_points)

    def push(self, samples: np.ndarray) -> None:
        self._envelope.push(samples)
        self._add(self._mel.push(samples))

    def finish(self) -> StreamedRecording:
        self._add(self._mel.finish())
        got = self._offset + self._power.shape[-1]
        if got != self.frames or self._next != len(self.starts):
            raise ValueError(f"the recording changed while it was read: {got} frames, not {self.frames}")
        self._score_batch()
        if self._unpooled.shape[-1]:
            self._columns[:, self._pooled] = self._unpooled.amax(dim=-1).numpy()
        spec = np.maximum(self._columns, self._columns.max() - TOP_DB)  # as ``log_mel`` floors a clip
        assert self._probs is not None
        return StreamedRecording(
            self.starts, self._probs, levels_dbfs(self._frame_power), spec, self.step, self._envelope.finish()
        )

    def _add(self, power: torch.Tensor) -> None:
        if not power.shape[-1]:
            return
        done = self._offset + self._power.shape[-1]
        if done + power.shape[-1] > self.frames:
            raise ValueError(f"the recording changed while it was read: over {self.frames} frames")
        self._frame_power[done : done + power.shape[-1]] = power.sum(dim=0).numpy()
        self._pool(10.0 * torch.log10(power.clamp(min=1e-10)))
        self._power = torch.cat([self._power, power], dim=-1)
        while (
            self._next < len(self.starts)
            and self.starts[self._next] + WINDOW_FRAMES <= self._offset + self._power.shape[-1]
        ):
            start = self.starts[self._next] - self._offset
            self._batch.append(power_to_db(self._power[:, start : start + WINDOW_FRAMES]))
            self._next += 1
            if len(self._batch) == self.batch_size:
                self._score_batch()
        keep_from = self.starts[self._next] if self._next < len(self.starts) else self._offset + self._power.shape[-1]
        self._power = self._power[:, keep_from - self._offset :]
        self._offset = keep_from

    def _score_batch(self) -> None:
        if self._batch:
            probs = self.score(torch.stack(self._batch)[:, None])
            if self._probs is None:
                self._probs = np.empty((len(self.starts), probs.shape[-1]), np.float32)
            self._probs[self._scored : self._scored + len(probs)] = probs
            self._scored += len(probs)
            self._batch = []

    def _pool(self, db: torch.Tensor) -> None:
        frames = torch.cat([self._unpooled, db], dim=-1)
        whole = frames.shape[-1] // self.step * self.step
        if whole:
            columns = frames[:, :whole].reshape(N_MELS, -1, self.step).amax(dim=-1).numpy()
            self._columns[:, self._pooled : self._pooled + columns.shape[-1]] = columns
            self._pooled += columns.shape[-1]
        self._unpooled = frames[:, whole:].clone()


class EnvelopeStream:
    """``tagger.inference.waveform_envelope`` of a recording handed over in blocks."""

    def __init__(self, num_samples: int, points: int) -> None:
        points = max(1, min(points, num_samples))
        self.edges = np.linspace(0, num_samples, points + 1).astype(np.int64)
        self.lo = np.full(points, np.inf, np.float32)
        self.hi = np.full(points, -np.inf, np.float32)
        self.seen = 0

    def push(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        start, end = self.seen, self.seen + len(samples)
        self.seen = end
        first = max(0, int(np.searchsorted(self.edges, start, side="right")) - 1)
        last = min(len(self.lo) - 1, int(np.searchsorted(self.edges, end - 1, side="right")) - 1)
        cuts = np.clip(self.edges[first : last + 1], start, end) - start
        cuts[0] = 0
        self.lo[first : last + 1] = np.minimum(self.lo[first : last + 1], np.minimum.reduceat(samples, cuts))
        self.hi[first : last + 1] = np.maximum(self.hi[first : last + 1], np.maximum.reduceat(samples, cuts))

    def finish(self) -> np.ndarray:
        return np.nan_to_num(np.stack([self.lo, self.hi]), posinf=0.0, neginf=0.0).astype(np.float32)
