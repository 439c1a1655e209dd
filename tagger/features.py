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

import numpy as np
import torch
import torchaudio.functional as F_audio

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
# A lossy codec's decoded clip is a little longer than what was encoded: AAC's priming
# and last-frame fill (up to 2048 samples), MP3's and Opus's fill. Up to this much past one
# window, a clip is tagged as that one window instead of as two that overlap almost whole
# (which doubled the network's cost of every 5 s M4A clip).
WINDOW_SLACK = 2048
SILENCE = 1e-4  # |sample| below this is digital silence (ESC-50 pads clips with zeros)


MEL_BANDS = 4  # groups of neighbouring filters, each multiplied only over the bins it covers


@functools.cache
def _transform_constants(device: str) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int, int]]]:
    """The periodic Hann window and the HTK mel filterbank: torchaudio's own, so the
    features equal ``torchaudio.transforms.MelSpectrogram`` with these settings.

    The filterbank comes as ``MEL_BANDS`` blocks (filters, first bin, end bin): a filter
    is zero outside its triangle, so each group of neighbouring filters needs only the
    bins its triangles cover (a quarter of the multiply-adds of the whole matrix)."""
    window = torch.hann_window(N_FFT, device=device)
    filters = F_audio.melscale_fbanks(N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm=None,
                                      mel_scale="htk").T.contiguous()  # (n_mels, n_freqs)
    bands = []
    for group in torch.arange(N_MELS).chunk(MEL_BANDS):
        bins = torch.nonzero(filters[group].sum(dim=0))[:, 0]
        first, end = int(bins[0]), int(bins[-1]) + 1
        bands.append((filters[group, first:end].contiguous().to(device), first, end))
    return window, bands


def _mel_power(waveforms: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """(B, samples) → (B, N_MELS, frames) mel power of the uncentred frames of the
    waveforms with ``left`` and ``right`` samples reflected at their edges.

    The padding, one STFT call, the power as re² + im² (what |z|² means, without the
    square root that ``abs().pow(2)`` takes and undoes) and the banded filterbank.
    """
    _check_reflect(waveforms, left, right)
    window, bands = _transform_constants(str(waveforms.device))
    spec = torch.view_as_real(torch.stft(_reflect_pad(waveforms, left, right), N_FFT, HOP_LENGTH, window=window,
                                         center=False, return_complex=True))
    spec.square_()
    power = spec[..., 0] + spec[..., 1]
    return torch.cat([torch.matmul(block, power[..., first:end, :]) for block, first, end in bands], dim=-2)


def _to_db(power: torch.Tensor) -> torch.Tensor:
    """Power → dB (reference 1), floored TOP_DB below each clip's own peak: torchaudio's
    ``AmplitudeToDB(stype="power", top_db=TOP_DB)`` applied per clip."""
    db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
    return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - TOP_DB)


def _check_reflect(waveforms: torch.Tensor, left: int, right: int) -> None:
    if max(left, right) >= waveforms.shape[-1]:
        raise ValueError(f"cannot reflect {max(left, right)} samples of a {waveforms.shape[-1]}-sample signal")


def _reflect_pad(waveforms: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """What ``F.pad(mode="reflect")`` gives, as one concatenation (half its cost here)."""
    _check_reflect(waveforms, left, right)
    parts = [waveforms[..., 1 : left + 1].flip(-1)] if left else []
    parts.append(waveforms)
    if right:
        parts.append(waveforms[..., -right - 1 : -1].flip(-1))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else waveforms


LONG_CLIP_CHUNK_FRAMES = 4096  # ≈ 47 s of audio per STFT call for clips longer than that


@torch.inference_mode()
def log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel (dB) of a batch of equal-length mono 44.1 kHz waveforms, shape (B, samples).

    Returns float32 (B, 1, N_MELS, 1 + samples // HOP_LENGTH): centred frames, the
    clip's edges reflected. A single long clip is transformed in chunks of frames, so a
    30-minute file never holds its whole complex STFT (0.6 GB) at once; the frames are
    the same as in one call.
    """
    if waveforms.dim() == 1:
        waveforms = waveforms.unsqueeze(0)
    waveforms = waveforms.float()
    frames = 1 + waveforms.shape[-1] // HOP_LENGTH
    if waveforms.shape[0] == 1 and frames > 2 * LONG_CLIP_CHUNK_FRAMES:
        return _long_log_mel(waveforms[0])
    pad = N_FFT // 2
    return _to_db(_mel_power(waveforms, pad, pad)).unsqueeze(1)


def _long_log_mel(x: torch.Tensor) -> torch.Tensor:
    n, pad = x.shape[-1], N_FFT // 2
    frames = 1 + n // HOP_LENGTH
    parts = []
    for f0 in range(0, frames, LONG_CLIP_CHUNK_FRAMES):
        f1 = min(frames, f0 + LONG_CLIP_CHUNK_FRAMES)
        start, end = f0 * HOP_LENGTH - pad, (f1 - 1) * HOP_LENGTH + pad
        segment = x[max(start, 0) : min(end, n)]
        # The clip's own edges: reflect, as the centred transform does.
        parts.append(_mel_power(segment[None], max(0, -start), max(0, end - n)))
    return _to_db(torch.cat(parts, dim=-1)).unsqueeze(1)


def clip_log_mel(samples: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, n_mels, frames): the log-mel of what the model sees of a clip (``window_input``),
    computed on ``device``."""
    return log_mel(window_input(torch.from_numpy(samples)).to(device))


def window_input(samples: torch.Tensor) -> torch.Tensor:
    """The waveform the model sees for a clip: one filled window, or the clip itself.

    A clip whose sound (trailing digital silence trimmed) fits in one window is repeated
    to fill it, the way training fills ESC-50's padded clips; one at most ``WINDOW_SLACK``
    samples longer is cut to the window; a longer clip is returned as it is and tagged
    with windows inside it (``window_starts``).
    """
    n = samples.shape[-1]
    end = _sound_end(samples) or n
    if end > WINDOW_SAMPLES + WINDOW_SLACK:
        return samples
    if end > WINDOW_SAMPLES:
        return samples[:WINDOW_SAMPLES]  # a window and a codec's padding: one window, not two
    sound = samples[:end] if end >= SAMPLE_RATE // 10 else samples[: max(n, 1)]
    if sound.shape[-1] == WINDOW_SAMPLES:
        return sound  # fills the window as it is: no copy (a longer clip is returned as it is too)
    return sound.repeat(-(-WINDOW_SAMPLES // sound.shape[-1]))[:WINDOW_SAMPLES]


def _sound_end(samples: torch.Tensor, first_block: int = 4096) -> int:
    """One past the last sample louder than digital silence (0 if none), found from the
    end in blocks that double in size: a clip that ends loud costs one small block, a
    long clip is neither scanned nor copied as a whole."""
    x = samples.numpy()  # numpy's any() and argmax() on a mask stop at the first hit
    end, block = int(x.shape[-1]), first_block
    while end > 0:
        start = max(0, end - block)
        loud = np.abs(x[start:end]) > SILENCE
        if loud.any():
            return end - int(np.argmax(loud[::-1]))
        end, block = start, min(2 * block, 1 << 20)
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
