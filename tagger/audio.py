"""Decode audio bytes or files into mono float32 at the model's sample rate.

Everything that can go wrong with user audio ends here as an ``AudioError`` with a
message a person can act on; callers record it as a failed clip.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from tagger.features import SAMPLE_RATE

AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus"}


class AudioError(ValueError):
    """The input cannot be tagged; the message says why."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # mono float32 at SAMPLE_RATE
    sample_rate: int  # of the original file
    channels: int  # of the original file
    sha256: str  # of the original bytes

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_bytes(data: bytes, max_duration_s: float | None = None) -> DecodedAudio:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"expected audio bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise AudioError("empty file: no audio data")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sample_rate, channels, frames = f.samplerate, f.channels, f.frames
            if sample_rate <= 0 or channels <= 0:
                raise AudioError(f"invalid header: {sample_rate} Hz, {channels} channels")
            # Check the declared length before reading so a 30-minute clip is refused
            # without decoding it.
            if max_duration_s is not None and frames / sample_rate > max_duration_s:
                raise AudioError(
                    f"clip is {frames / sample_rate:.1f} s long, over the limit of "
                    f"{max_duration_s:.0f} s (SOUNDTAG_MAX_DURATION_S)"
                )
            pcm = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise AudioError(f"not a readable WAV/FLAC/Ogg file: {_soundfile_reason(exc)}") from None
    if pcm.shape[0] == 0:
        raise AudioError("file holds no audio samples (0 frames)")
    if not np.isfinite(pcm).all():
        raise AudioError("audio contains NaN or infinite samples")
    mono = pcm.mean(axis=1, dtype=np.float32)
    return DecodedAudio(
        samples=resample(mono, sample_rate),
        sample_rate=int(sample_rate),
        channels=int(channels),
        sha256=sha256_hex(data),
    )


def decode_file(path: str | Path, max_duration_s: float | None = None) -> DecodedAudio:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_bytes(data, max_duration_s=max_duration_s)


def resample(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    out = AF.resample(torch.from_numpy(mono), int(sample_rate), SAMPLE_RATE)
    return out.numpy().astype(np.float32, copy=False)


def _soundfile_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # libsndfile prefixes messages with the file object's repr; keep the reason only.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
