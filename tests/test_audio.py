"""Decoding: every format, rate and channel count in; every kind of bad input refused clearly."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from tagger.audio import AudioError, decode_bytes, decode_file
from tagger.features import SAMPLE_RATE
from tests.conftest import audio_bytes, make_tone


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "FLOAT"),
                                         ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS")])
def test_every_format_decodes(fmt, subtype):
    sr = 48000 if subtype == "OPUS" else 44100  # Opus only runs at its own rates
    clip = decode_bytes(audio_bytes(fmt, seconds=1.0, sr=sr, subtype=subtype))
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.duration_s == pytest.approx(1.0, abs=0.03)
    assert np.abs(clip.samples).max() > 0.1


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000])
def test_any_sample_rate_is_resampled_to_44k1(sr):
    clip = decode_bytes(audio_bytes("WAV", seconds=0.5, sr=sr))
    assert clip.sample_rate == sr
    assert len(clip.samples) == pytest.approx(SAMPLE_RATE * 0.5, abs=2)


def test_resampling_keeps_the_pitch():
    buf = io.BytesIO()
    t = np.arange(16000) / 16000
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000, format="WAV")
    clip = decode_bytes(buf.getvalue())
    spectrum = np.abs(np.fft.rfft(clip.samples))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(clip.samples)
    assert peak_hz == pytest.approx(1000, abs=5)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_downmixed(channels):
    clip = decode_bytes(audio_bytes("FLAC", seconds=0.5, channels=channels))
    assert clip.channels == channels and clip.samples.ndim == 1
    expected = make_tone(0.5, 44100, channels, freq=200).mean(axis=1)
    assert np.allclose(clip.samples, expected, atol=1e-3)


@pytest.mark.parametrize("seconds", [0.2, 60.0])
def test_short_and_long_clips(seconds):
    clip = decode_bytes(audio_bytes("WAV", seconds=seconds, sr=22050))
    assert clip.duration_s == pytest.approx(seconds, abs=1e-3)


def _wav_with_declared_frames(real_frames: int, declared_frames: int) -> bytes:
    data = (np.zeros(real_frames, dtype="<i2")).tobytes()
    declared = declared_frames * 2
    header = b"RIFF" + struct.pack("<I", 36 + declared) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 44100, 88200, 2, 16)
    header += b"data" + struct.pack("<I", declared)
    return header + data


BAD_INPUTS = {
    "empty": b"",
    "random bytes": np.random.default_rng(1).bytes(4096),
    "text renamed .wav": b"hello, this is not audio at all\n" * 20,
    "truncated WAV header": audio_bytes("WAV", 1.0)[:30],
    "header only, no samples": _wav_with_declared_frames(0, 0),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error(name):
    with pytest.raises(AudioError) as err:
        decode_bytes(BAD_INPUTS[name])
    assert str(err.value)  # a reason a person can read
    assert "Traceback" not in str(err.value)


def test_truncated_wav_body_decodes_what_is_there():
    data = audio_bytes("WAV", 2.0)
    clip = decode_bytes(data[: len(data) // 2])  # header says 2 s, half the bytes are there
    assert 0.9 < clip.duration_s < 1.1


def test_header_lying_about_its_length():
    clip = decode_bytes(_wav_with_declared_frames(44100, 10 * 44100))
    assert clip.duration_s == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(bad):
    x = make_tone(0.5)
    x[100] = bad
    buf = io.BytesIO()
    sf.write(buf, x, 44100, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode_bytes(buf.getvalue())


def test_duration_limit_is_checked_before_decoding():
    with pytest.raises(AudioError, match="over the limit"):
        decode_bytes(audio_bytes("WAV", seconds=3.0, sr=8000), max_duration_s=2.0)


def test_wrong_type_is_refused():
    with pytest.raises(AudioError, match="expected audio bytes"):
        decode_bytes("not bytes")  # type: ignore[arg-type]


def test_unreadable_path_is_a_clear_error(tmp_path):
    with pytest.raises(AudioError, match="cannot read"):
        decode_file(tmp_path / "missing.wav")
