"""The one preprocessing function: mono waveform at 44.1 kHz → log-mel spectrogram.

Training, the worker, bulk ingest and the API all call ``log_mel``; nothing else in
the code computes features. The settings below travel inside every checkpoint and a
checkpoint whose settings differ is refused at load time, so serving can never
silently disagree with training.

f_min is 20 Hz, not 0: with n_fft=1024 at 44.1 kHz the FFT bins are 43 Hz apart and
from 0 Hz the lowest of 128 HTK mel filters falls between two bins and is empty
(torchaudio warns). From 20 Hz every filter covers at least one bin.
"""

from __future__ import annotations

import functools

import torch
import torchaudio.transforms as T

from tagger.audio import SAMPLE_RATE as SAMPLE_RATE  # the decoder's output rate, re-exported

N_FFT = 1024
HOP_LENGTH = 512
N_MELS = 64
F_MIN = 20.0
F_MAX = 22_050.0
TOP_DB = 80.0
WINDOW_SECONDS = 5.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_SECONDS)  # 220,500
WINDOW_FRAMES = 1 + WINDOW_SAMPLES // HOP_LENGTH  # 431 (centred frames)

PREPROCESSING = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "n_mels": N_MELS,
    "f_min": F_MIN,
    "f_max": F_MAX,
    "top_db": TOP_DB,
    "window_seconds": WINDOW_SECONDS,
    "mel_scale": "htk",
    "power": 2.0,
    "db_reference": "window peak (in the model)",
    "short_clips": "trailing silence trimmed, repeated to fill the window",
    "long_clips": "windows inside the clip, overlapping by half",
}
SILENCE = 1e-4  # |sample| below this is digital silence (ESC-50 pads clips with zeros)


class _LogMel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mel = T.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            n_mels=N_MELS,
            f_min=F_MIN,
            f_max=F_MAX,
            power=2.0,
        )
        self.to_db = T.AmplitudeToDB(stype="power", top_db=TOP_DB)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # (B, samples) → (B, 1, n_mels, frames). The channel axis matters:
        # AmplitudeToDB clamps to max-top_db over all but the leading axis, so with
        # it each clip is clamped against its own peak, not the batch's.
        db: torch.Tensor = self.to_db(self.mel(waveforms.unsqueeze(1)))
        return db


@functools.cache
def _log_mel_module(device: str) -> _LogMel:
    return _LogMel().to(device).eval()


@functools.cache
def _framed_mel_module(device: str) -> T.MelSpectrogram:
    """The same mel power, on frames the caller has already cut (no centre padding)."""
    return T.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS,
                            f_min=F_MIN, f_max=F_MAX, power=2.0, center=False).to(device).eval()


LONG_CLIP_CHUNK_FRAMES = 4096  # ≈ 47 s of audio per STFT call for clips longer than that


@torch.inference_mode()
def log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel (dB) of a batch of equal-length mono 44.1 kHz waveforms, shape (B, samples).

    Returns float32 (B, 1, N_MELS, 1 + samples // HOP_LENGTH). A single long clip is
    transformed in chunks of frames, so a 30-minute file never holds its whole complex
    STFT (0.6 GB) at once; the frames are the same as in one call.
    """
    if waveforms.dim() == 1:
        waveforms = waveforms.unsqueeze(0)
    waveforms = waveforms.float()
    frames = 1 + waveforms.shape[-1] // HOP_LENGTH
    if waveforms.shape[0] == 1 and frames > 2 * LONG_CLIP_CHUNK_FRAMES:
        return _long_log_mel(waveforms[0])
    db: torch.Tensor = _log_mel_module(str(waveforms.device))(waveforms)
    return db


def _long_log_mel(x: torch.Tensor) -> torch.Tensor:
    module = _log_mel_module(str(x.device))
    framed = _framed_mel_module(str(x.device))
    n, pad = x.shape[-1], N_FFT // 2
    frames = 1 + n // HOP_LENGTH
    parts = []
    for f0 in range(0, frames, LONG_CLIP_CHUNK_FRAMES):
        f1 = min(frames, f0 + LONG_CLIP_CHUNK_FRAMES)
        start, end = f0 * HOP_LENGTH - pad, (f1 - 1) * HOP_LENGTH + pad
        segment = x[max(start, 0) : min(end, n)]
        left, right = max(0, -start), max(0, end - n)
        if left or right:  # the clip's own edges: reflect, as the centred transform does
            segment = torch.nn.functional.pad(segment[None, None], (left, right), mode="reflect")[0, 0]
        parts.append(framed(segment))
    power = torch.cat(parts, dim=-1)
    db: torch.Tensor = module.to_db(power[None, None])
    return db


def window_input(samples: torch.Tensor) -> torch.Tensor:
    """The waveform the model sees for a clip: one filled window, or the clip itself.

    A clip whose sound (trailing digital silence trimmed) fits in one window is repeated
    to fill it, the way training fills ESC-50's padded clips; a longer clip is returned
    as it is and tagged with windows inside it (``window_starts``).
    """
    n = samples.shape[-1]
    end = _sound_end(samples) or n
    if end > WINDOW_SAMPLES:
        return samples
    sound = samples[:end] if end >= SAMPLE_RATE // 10 else samples[: max(n, 1)]
    return sound.repeat(-(-WINDOW_SAMPLES // sound.shape[-1]))[:WINDOW_SAMPLES]


def _sound_end(samples: torch.Tensor, block: int = 65_536) -> int:
    """One past the last sample louder than digital silence (0 if none), found from the
    end block by block: a long clip is not scanned, nor copied, as a whole."""
    for end in range(samples.shape[-1], 0, -block):
        start = max(0, end - block)
        loud = torch.nonzero(samples[start:end].abs() > SILENCE)
        if len(loud):
            return start + int(loud[-1]) + 1
    return 0


def window_starts(frames: int) -> list[int]:
    """Start frames of the windows of a spectrogram of ``frames`` frames.

    Windows stay inside the clip and overlap by half; the last one ends at the clip's end.
    """
    if frames <= WINDOW_FRAMES:
        return [0]
    hop = WINDOW_FRAMES // 2
    starts = list(range(0, frames - WINDOW_FRAMES, hop))
    return [*starts, frames - WINDOW_FRAMES]
