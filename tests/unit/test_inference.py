"""The inference core and the shared preprocessing."""

import itertools

import numpy as np
import pytest
import torch

from tagger.audio import DecodedAudio, decode_file
from tagger.features import (
    N_MELS,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    WINDOW_SLACK,
    log_mel,
    window_input,
    window_starts,
)
from tagger.network import AudioCNN, count_parameters


def _clip(seconds: float, seed: int = 0) -> DecodedAudio:
    rng = np.random.default_rng(seed)
    return DecodedAudio((0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32), 44100, 1)


def test_model_layout():
    model = AudioCNN()
    assert 2_700_000 < count_parameters(model) < 2_900_000
    logits, feats, emb = model(torch.zeros(2, 1, N_MELS, WINDOW_FRAMES), with_features=True)
    assert logits.shape == (2, 50) and emb.shape == (2, 256)
    assert [f.shape[1] for f in feats.values()] == [32, 32, 64, 128, 256]


def test_the_model_hears_the_same_at_any_level():
    """Each input is referenced to its own peak: a recording 40 dB quieter is the same input."""
    model = AudioCNN().eval()
    x = torch.randn(1, WINDOW_SAMPLES)
    loud, quiet = log_mel(x), log_mel(0.01 * x)
    assert torch.allclose(model(loud), model(quiet), atol=1e-3)


def test_log_mel_shape_and_no_empty_filters():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchaudio warns on an empty mel filter
        spec = log_mel(torch.zeros(1, WINDOW_SAMPLES) + 1e-3)
    assert spec.shape == (1, 1, N_MELS, WINDOW_FRAMES)


def test_batching_does_not_change_a_clips_features():
    """Each clip's dB floor is relative to its own peak, not the batch's."""
    loud = torch.randn(WINDOW_SAMPLES)
    quiet = 1e-3 * torch.randn(WINDOW_SAMPLES)
    alone = log_mel(quiet.unsqueeze(0))
    together = log_mel(torch.stack([loud, quiet]))[1:2]
    assert torch.allclose(alone, together, atol=1e-4)


def test_tag_batch_of_mixed_lengths(random_tagger):
    clips = [_clip(5.0, 1), _clip(0.2, 2), _clip(12.0, 3), _clip(5.0, 4)]
    results = random_tagger.tag(clips)
    assert len(results) == 4
    for r in results:
        assert len(r.top3) == 3 and abs(r.probabilities.sum() - 1) < 1e-3
        assert r.envelope.shape[0] == 2 and r.embedding.shape == (256,)
        assert set(r.feature_maps) == {"stem", "stage1", "stage2", "stage3", "stage4"}
        assert r.feature_maps["stage4"]["channels"].shape[0] == 4
    assert results[0].timeline == [] and results[1].timeline == []
    assert results[1].spectrogram.shape[1] == 1 + int(0.2 * 44100) // 512  # its real length, not the fill
    # Windows inside the clip, overlapping by half, the last ending at the clip's end.
    assert [w["start_s"] for w in results[2].timeline] == pytest.approx([0.0, 2.49, 4.99, 7.0], abs=0.02)
    assert results[2].timeline[-1]["end_s"] == pytest.approx(12.0, abs=0.02)
    assert results[2].spectrogram.shape[1] == 1 + 12 * 44100 // 512  # the whole clip, unpadded, for the page


def test_batched_and_single_results_agree(random_tagger):
    clips = [_clip(5.0, s) for s in range(5)]
    batched = random_tagger.tag(clips)
    for clip, b in zip(clips, batched, strict=True):
        single = random_tagger.tag([clip])[0]
        assert single.top3[0][0] == b.top3[0][0]
        assert np.allclose(single.probabilities, b.probabilities, atol=2e-2)


def test_training_and_tagger_preprocessing_are_identical(random_tagger):
    """The same ESC-50 file through the training dataset path and through the tagger."""
    from training.data import clip_spectrogram, find_esc50_dir

    path = find_esc50_dir() / "audio" / "1-100032-A-0.ogg"
    train_spec = clip_spectrogram(path)
    result = random_tagger.tag([decode_file(path)])[0]
    assert train_spec.shape == (1, N_MELS, WINDOW_FRAMES)
    assert torch.equal(train_spec[0], torch.from_numpy(result.spectrogram))


def test_short_clips_are_repeated_to_fill_a_window_after_their_silence_is_trimmed():
    x = torch.cat([torch.linspace(0.1, 1.0, 10_000), torch.zeros(50_000)])  # 0.23 s of sound, then silence
    filled = window_input(x)
    assert filled.shape[-1] == WINDOW_SAMPLES
    assert torch.equal(filled[:10_000], x[:10_000]) and torch.equal(filled[10_000:20_000], x[:10_000])
    # A codec's few padding samples past the window: that one window; more: the clip as it is.
    assert torch.equal(window_input(torch.ones(WINDOW_SAMPLES + WINDOW_SLACK)), torch.ones(WINDOW_SAMPLES))
    longer = torch.ones(WINDOW_SAMPLES + WINDOW_SLACK + 1)
    assert torch.equal(window_input(longer), longer)
    silent = torch.zeros(3000)  # nothing to trim to: the clip as it is, repeated
    assert window_input(silent).shape[-1] == WINDOW_SAMPLES


def test_long_clips_get_windows_inside_the_clip():
    assert window_starts(WINDOW_FRAMES) == [0]
    assert window_starts(WINDOW_FRAMES + 22) == [0, 22]  # 5.25 s: no padded, mostly silent window
    starts = window_starts(3 * WINDOW_FRAMES)
    assert starts[-1] + WINDOW_FRAMES == 3 * WINDOW_FRAMES
    assert all(b - a <= WINDOW_FRAMES // 2 for a, b in itertools.pairwise(starts))


def torchaudio_log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """The reference the features were defined by: torchaudio's transforms, as trained."""
    from torchaudio import transforms

    from tagger.features import F_MAX, F_MIN, HOP_LENGTH, N_FFT, SAMPLE_RATE, TOP_DB

    mel = transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS,
                                    f_min=F_MIN, f_max=F_MAX, power=2.0)
    return transforms.AmplitudeToDB(stype="power", top_db=TOP_DB)(mel(waveforms.unsqueeze(1)))


def test_log_mel_equals_torchaudios_transforms():
    g = torch.Generator().manual_seed(1)
    x = torch.stack([0.3 * torch.randn(WINDOW_SAMPLES, generator=g), 1e-3 * torch.randn(WINDOW_SAMPLES, generator=g),
                     torch.sin(torch.arange(WINDOW_SAMPLES) * 0.05)])
    ours, reference = log_mel(x), torchaudio_log_mel(x)
    assert ours.shape == reference.shape == (3, 1, N_MELS, WINDOW_FRAMES)
    assert torch.allclose(ours, reference, atol=1e-3), (ours - reference).abs().max()


def test_a_recording_streamed_in_blocks_gets_the_frames_of_one_call():
    from tagger.features import MelStream, power_to_db

    x = 0.1 * torch.randn(512 * 3000 + 123, generator=torch.Generator().manual_seed(0))
    stream, parts, at = MelStream(), [], 0
    for size in (100, 413, 20, 65_536, 7, 100_000, 1_000_000):  # blocks of any size, one shorter than the edge
        parts.append(stream.push(x[at : at + size].numpy()))
        at += size
    parts += [stream.push(x[at:].numpy()), stream.finish()]
    streamed = power_to_db(torch.cat(parts, dim=-1))[None, None]
    whole = torchaudio_log_mel(x[None])
    assert streamed.shape == whole.shape and torch.allclose(streamed, whole, atol=1e-3)
