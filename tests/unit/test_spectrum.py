"""The compiled mel power (tagger._spectrum, PFFFT): the log-mel torch's path computes, to
float rounding, on every path that calls ``log_mel`` on the CPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import tagger.features as features
from tagger import _spectrum
from tagger.audio import decode_file
from tagger.config import SAMPLES_DIR
from tagger.features import HOP_LENGTH, N_FFT, N_MELS, WINDOW_SAMPLES, clip_log_mel, log_mel


def _torch_path(monkeypatch: pytest.MonkeyPatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(features, "_spectrum", None)
        return fn(*args)


def test_the_mel_power_is_built_with_the_package():
    # Optional in setup.py, as the Ogg Vorbis reader is; without it the log-mel runs through
    # torch.stft, only slower, so the suite says so here.
    assert features._spectrum is _spectrum


def test_the_compiled_mel_power_is_torchs(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.stack([0.3 * torch.randn(WINDOW_SAMPLES, generator=g), 1e-3 * torch.randn(WINDOW_SAMPLES, generator=g),
                     torch.sin(torch.arange(WINDOW_SAMPLES) * 0.05)])
    pad = N_FFT // 2
    ours, theirs = features._mel_power(x, pad, pad), _torch_path(monkeypatch, features._mel_power, x, pad, pad)
    assert ours.shape == theirs.shape == (3, N_MELS, 1 + WINDOW_SAMPLES // HOP_LENGTH)
    # Another FFT's rounding: relative to each clip's loudest frame, far below what the dB floor keeps.
    peak = theirs.amax(dim=(1, 2), keepdim=True)
    assert ((ours - theirs).abs() / peak).max() < 1e-5


@pytest.mark.parametrize("clip", sorted(SAMPLES_DIR.glob("*.ogg"))[:3], ids=lambda p: p.stem)
def test_a_real_clip_gets_the_same_log_mel_either_way(monkeypatch, clip):
    samples = decode_file(clip).samples
    ours, theirs = clip_log_mel(samples), _torch_path(monkeypatch, clip_log_mel, samples)
    assert ours.shape == theirs.shape
    # Bins 80 dB under the peak carry the FFTs' rounding relative to the peak: hundredths of a dB at most.
    assert (ours - theirs).abs().max() < 0.02
    assert (ours - theirs).abs().mean() < 1e-4


def test_threads_transform_at_once_alike():
    # The GIL is released around the transform: clips on decode threads run side by side.
    g = torch.Generator().manual_seed(4)
    clips = [0.2 * torch.randn(WINDOW_SAMPLES, generator=g) for _ in range(8)]
    expected = [log_mel(c) for c in clips]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(log_mel, clips * 4))
    assert all(torch.equal(got, expected[i % len(clips)]) for i, got in enumerate(results))


@pytest.mark.parametrize("left,right", [(0, 0), (512, 512), (3, 700), (1023, 0), (0, 1100)])
def test_the_edges_are_reflected_in_place_as_torch_pads_them(monkeypatch, left, right):
    # Frames over an edge read the reflected samples where they are (no padded copy);
    # a signal barely longer than the padding reflects its whole length.
    x = torch.randn(1200 + 3 * HOP_LENGTH, generator=torch.Generator().manual_seed(left + right))[None]
    ours = features._mel_power(x, left, right)
    theirs = _torch_path(monkeypatch, features._mel_power, x, left, right)
    assert ours.shape == theirs.shape == (1, N_MELS, 1 + (x.shape[-1] + left + right - N_FFT) // HOP_LENGTH)
    assert ((ours - theirs).abs() / theirs.amax()).max() < 1e-5


def test_mel_power_refuses_what_it_cannot_transform():
    window, filters = np.hanning(N_FFT).astype(np.float32), np.ones((N_MELS, N_FFT // 2 + 1), np.float32)
    signal = np.zeros(4 * N_FFT, np.float32)
    out = np.empty((N_MELS, 7), np.float32)
    with pytest.raises(ValueError, match="power of two"):
        _spectrum.mel_power(signal, 0, 0, window[:1000], HOP_LENGTH, filters, out)
    for n in (96, 160, 224):  # 32 x 3, 5, 7: the vendored PFFFT transforms powers of two only
        with pytest.raises(ValueError, match="power of two"):
            _spectrum.mel_power(signal, 0, 0, window[:n].copy(), HOP_LENGTH, filters[:, : n // 2 + 1].copy(),
                                np.empty((N_MELS, 1 + (len(signal) - n) // HOP_LENGTH), np.float32))
    with pytest.raises(ValueError, match="at least one frame"):
        _spectrum.mel_power(signal[: N_FFT - 1], 0, 0, window, HOP_LENGTH, filters, out)
    with pytest.raises(ValueError, match="cannot reflect 4096 and 0 samples"):
        _spectrum.mel_power(signal, 4096, 0, window, HOP_LENGTH, filters, out)
    with pytest.raises(ValueError, match="cannot reflect -1"):
        _spectrum.mel_power(signal, -1, 0, window, HOP_LENGTH, filters, out)
    with pytest.raises(ValueError, match="rows of 513"):
        _spectrum.mel_power(signal, 0, 0, window, HOP_LENGTH, filters[:, :100].copy(), out)
    with pytest.raises(ValueError, match="7 float32"):
        _spectrum.mel_power(signal, 0, 0, window, HOP_LENGTH, filters, out[:, :5].copy())
    with pytest.raises(ValueError, match="cannot reflect 4096 samples"):
        features._mel_power(torch.zeros(1, 4096), 4096, 0)  # either path: the same check first
    _spectrum.mel_power(signal, 0, 0, window, HOP_LENGTH, filters, out)
    assert not out.any()  # silence has no power


def test_every_window_length_it_takes_is_transformed():
    # One process sets up every power of two from 32 to 65536 (its table has room for all
    # of them): the power at a few bins of a single frame, through one-hot "filters", is numpy's.
    rng = np.random.default_rng(0)
    for n in (1 << e for e in range(5, 17)):
        signal = rng.standard_normal(n).astype(np.float32)
        bins = np.array([0, 1, n // 8, n // 4 + 1, n // 2])
        filters = np.zeros((len(bins), n // 2 + 1), np.float32)
        filters[np.arange(len(bins)), bins] = 1.0
        out = np.empty((len(bins), 1), np.float32)
        _spectrum.mel_power(signal, 0, 0, np.ones(n, np.float32), n, filters, out)
        expected = np.abs(np.fft.rfft(signal.astype(np.float64))) ** 2
        assert np.abs(out[:, 0] - expected[bins]).max() / expected.max() < 1e-5, n
