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
from tagger.audio import DecodedAudio, sound_end

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


@torch.inference_mode()
def log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel (dB) of a batch of equal-length mono 44.1 kHz waveforms, shape (B, samples).

    Returns float32 (B, 1, N_MELS, 1 + samples // HOP_LENGTH): centred frames, the
    clip's edges reflected. A recording longer than a minute goes through ``MelStream``
    instead (``tagger.long_clips``), a block at a time.
    """
    if waveforms.dim() == 1:
        waveforms = waveforms.unsqueeze(0)
    waveforms = waveforms.float()
    pad = N_FFT // 2
    return _to_db(_mel_power(waveforms, pad, pad)).unsqueeze(1)


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    """Mel power frames → dB, floored TOP_DB below their own peak (what ``log_mel`` does to a clip)."""
    return _to_db(power)


class MelStream:
    """The mel power frames of one recording handed over in blocks of samples: the same
    frames as one ``log_mel`` call (centred, the recording's edges reflected), holding no
    more than a block and one FFT's overlap of samples."""

    _EDGE = N_FFT // 2

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)  # reflected start, then samples not yet past a frame
        self._tail = np.zeros(0, np.float32)  # the last EDGE + 1 samples: the end's reflection
        self._started = False
        self.samples = 0

    @torch.inference_mode()
    def push(self, samples: np.ndarray) -> torch.Tensor:
        """(N_MELS, frames) power of the frames these samples complete."""
        samples = np.asarray(samples, dtype=np.float32)
        self.samples += len(samples)
        self._tail = np.concatenate([self._tail, samples[-(self._EDGE + 1) :]])[-(self._EDGE + 1) :]
        self._pending = np.concatenate([self._pending, samples])
        if not self._started:
            if len(self._pending) <= self._EDGE:
                return _no_frames()
            self._pending = np.concatenate([self._pending[1 : self._EDGE + 1][::-1], self._pending])
            self._started = True
        return self._frames((len(self._pending) - N_FFT) // HOP_LENGTH + 1)

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """The last frames, the recording's end reflected."""
        if not self._started:
            raise ValueError(f"cannot reflect {self._EDGE} samples of a {self.samples}-sample signal")
        self._pending = np.concatenate([self._pending, self._tail[:-1][::-1]])
        return self._frames((len(self._pending) - N_FFT) // HOP_LENGTH + 1)

    def _frames(self, count: int) -> torch.Tensor:
        if count <= 0:
            return _no_frames()
        used = (count - 1) * HOP_LENGTH + N_FFT
        power = _mel_power(torch.from_numpy(self._pending[:used].copy())[None], 0, 0)[0]
        self._pending = self._pending[count * HOP_LENGTH :]
        return power


def _no_frames() -> torch.Tensor:
    return torch.zeros(N_MELS, 0)


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
    end = sound_end(samples.numpy()) or n
    if end > WINDOW_SAMPLES + WINDOW_SLACK:
        return samples
    if end > WINDOW_SAMPLES:
        return samples[:WINDOW_SAMPLES]  # a window and a codec's padding: one window, not two
    sound = samples[:end] if end >= SAMPLE_RATE // 10 else samples[: max(n, 1)]
    if sound.shape[-1] == WINDOW_SAMPLES:
        return sound  # fills the window as it is: no copy (a longer clip is returned as it is too)
    return sound.repeat(-(-WINDOW_SAMPLES // sound.shape[-1]))[:WINDOW_SAMPLES]


def one_window_log_mel(clip: DecodedAudio, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``clip_log_mel`` of a clip that fits one window; None for a longer one (it is
    tagged as a stream of windows, ``tagger.long_clips``)."""
    if not fits_one_window(clip):
        return None
    if not len(clip.samples):
        raise ValueError("the clip came without its samples; its features were computed where it was decoded")
    return clip_log_mel(clip.samples, device)


def fits_one_window(clip: DecodedAudio) -> bool:
    """Tagged as one window (``window_input``), not as windows inside it (``tagger.long_clips``)."""
    if clip.held_whole:
        end = sound_end(clip.samples) or len(clip.samples)
    else:
        end = clip.last_sound or clip.num_samples
    return end <= WINDOW_SAMPLES + WINDOW_SLACK


def window_starts(frames: int) -> list[int]:
    """Start frames of the windows of a spectrogram of ``frames`` frames.

    Windows stay inside the clip and overlap by half; the last one ends at the clip's end.
    """
    if frames <= WINDOW_FRAMES:
        return [0]
    hop = WINDOW_FRAMES // 2
    starts = list(range(0, frames - WINDOW_FRAMES, hop))
    return [*starts, frames - WINDOW_FRAMES]
