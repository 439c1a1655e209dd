"""The one log-mel (tagger.features, torch only): torchaudio's reference transform with
the checkpoint's settings, on every path that calls ``log_mel``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
import torchaudio

import tagger.features as features
from tagger.audio import decode_file
from tagger.config import SAMPLES_DIR
from tagger.features import F_MAX, F_MIN, HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, TOP_DB, WINDOW_SAMPLES, log_mel


def _reference(x: torch.Tensor) -> torch.Tensor:
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, f_min=F_MIN,
                                               f_max=F_MAX, n_mels=N_MELS, mel_scale="htk", power=2.0)
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=TOP_DB)
    return torch.stack([db(mel(row)) for row in x]).unsqueeze(1)


def test_the_log_mel_is_torchaudios():
    g = torch.Generator().manual_seed(3)
    x = torch.stack([0.3 * torch.randn(WINDOW_SAMPLES, generator=g), 1e-3 * torch.randn(WINDOW_SAMPLES, generator=g),
                     torch.sin(torch.arange(WINDOW_SAMPLES) * 0.05)])
    ours, theirs = log_mel(x), _reference(x)
    assert ours.shape == theirs.shape == (3, 1, N_MELS, 1 + WINDOW_SAMPLES // HOP_LENGTH)
    assert (ours - theirs).abs().max() < 0.02


@pytest.mark.parametrize("clip", sorted(SAMPLES_DIR.glob("*.ogg"))[:2], ids=lambda p: p.stem)
def test_a_real_clip_gets_torchaudios_log_mel(clip):
    samples = torch.from_numpy(decode_file(clip).samples)
    assert (log_mel(samples) - _reference(samples[None])).abs().max() < 0.02


def test_threads_transform_at_once_alike():
    # Decoding threads transform side by side (torch releases the GIL).
    g = torch.Generator().manual_seed(4)
    clips = [0.2 * torch.randn(WINDOW_SAMPLES, generator=g) for _ in range(8)]
    expected = [log_mel(c) for c in clips]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(log_mel, clips * 4))
    assert all(torch.equal(got, expected[i % len(clips)]) for i, got in enumerate(results))


@pytest.mark.parametrize("left,right", [(0, 0), (512, 512), (3, 700), (1023, 0), (0, 1100)])
def test_the_edges_are_reflected_as_torch_pads_them(left, right):
    x = torch.randn(1200 + 3 * HOP_LENGTH, generator=torch.Generator().manual_seed(left + right))[None]
    ours = features._mel_power(x, left, right)
    padded = F.pad(x[None], (left, right), mode="reflect")[0]
    theirs = features._mel_power(padded, 0, 0)
    assert ours.shape == theirs.shape == (1, N_MELS, 1 + (x.shape[-1] + left + right - N_FFT) // HOP_LENGTH)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.amax()))


def test_mel_power_refuses_what_it_cannot_reflect():
    with pytest.raises(ValueError, match="cannot reflect"):
        features._mel_power(torch.zeros(1, 100), 100, 0)


def test_a_long_clip_in_chunks_equals_one_transform():
    x = 0.1 * torch.randn(SAMPLE_RATE * 60, generator=torch.Generator().manual_seed(5))
    whole = features._to_db(features._mel_power(x[None], N_FFT // 2, N_FFT // 2)).unsqueeze(1)
    assert torch.allclose(log_mel(x), whole, atol=1e-3)
