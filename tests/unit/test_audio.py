"""Decoding: every format, rate and channel count in; every kind of bad input refused clearly."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from tagger.audio import AudioError, decode_bytes, decode_file, sniff_format
from tagger.features import SAMPLE_RATE
from tests.helpers import ENCODED_FORMATS, REPO, audio_bytes, encoded_bytes, make_tone


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
    reason = str(err.value)
    assert 10 < len(reason) < 400 and "\n" not in reason  # one line a person can read


def test_truncated_wav_is_refused_with_what_the_header_promised():
    data = audio_bytes("WAV", 1.0)
    with pytest.raises(AudioError, match=r"truncated: header 1.00 s, data 0.003 s"):
        decode_bytes(data[: 44 + 264])  # header says 1 s, the file holds 3 ms


def test_header_lying_about_its_length_is_truncated():
    with pytest.raises(AudioError, match=r"truncated: header 10\.00 s, data 1\.000 s"):
        decode_bytes(_wav_with_declared_frames(44100, 10 * 44100))


def test_cut_off_flac_is_truncated():
    data = audio_bytes("FLAC", 2.0)
    with pytest.raises(AudioError, match=r"truncated: header 2\.00 s"):
        decode_bytes(data[: len(data) // 2])


def test_flac_of_unknown_length_decodes():
    """What a FLAC encoder writing to a pipe leaves: total samples 0 (unknown)."""
    data = bytearray(audio_bytes("FLAC", 2.0))
    streaminfo_tail = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = streaminfo_tail.to_bytes(8, "big")
    clip = decode_bytes(bytes(data))
    assert clip.duration_s == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("rate", [44099, 7919, 192000])
def test_rates_sharing_no_factor_resample_quickly_in_little_memory(rate):
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    clip = decode_bytes(audio_bytes("WAV", seconds=2.0, sr=rate))
    assert time.perf_counter() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert clip.duration_s == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("rate", [1, 100, 1999, 1_000_000])
def test_insane_sample_rates_are_refused(rate):
    data = bytearray(audio_bytes("WAV", seconds=0.5, sr=8000))
    data[24:28] = struct.pack("<I", rate)
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside"):
        decode_bytes(bytes(data))


def test_too_short_to_hear_is_refused():
    with pytest.raises(AudioError, match=r"shorter than the 0\.1 s"):
        decode_bytes(audio_bytes("WAV", seconds=0.02))


@pytest.mark.parametrize("name", list(ENCODED_FORMATS))
def test_compressed_formats_people_have_decode(name):
    data = encoded_bytes(*ENCODED_FORMATS[name], seconds=1.5)
    assert sniff_format(data[:16]) in {"mp3", "mp4", "webm"}
    clip = decode_bytes(data)
    assert clip.duration_s == pytest.approx(1.5, abs=0.08)
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(clip.samples) == pytest.approx(200, abs=5)


def test_long_file_decodes_from_disk_and_the_limit_holds_while_reading(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(44100 * 30, np.int16), 44100, subtype="PCM_16")
    assert decode_file(path).duration_s == pytest.approx(30.0)
    data = bytearray(path.read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # a streaming writer's open length
    with pytest.raises(AudioError, match="over the limit of 10 s"):
        decode_bytes(bytes(data), max_duration_s=10)


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


def test_a_30_minute_file_decodes_in_little_more_memory_than_its_output(tmp_path):
    """Decoding reads blocks into a buffer sized from the header: the peak is the decoded
    audio itself (30 min at 44.1 kHz float32 = 318 MB) plus a few blocks."""
    import subprocess
    import sys

    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:
        for _ in range(30):
            f.write(np.zeros((44100 * 60, 2), np.int16))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest, with torch).
    code = ("import re, sys; from tagger.audio import decode_file; "
            "d = decode_file(sys.argv[1], max_duration_s=3600); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(d.duration_s, int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    seconds, peak_mb = out.stdout.split()
    assert float(seconds) == pytest.approx(1800.0) and int(peak_mb) <= 500, out.stdout + out.stderr


def test_ffmpeg_frames_are_gathered_in_order_across_a_change_of_format_and_layout():
    """A stream whose sample format or channel layout changes part way (a spliced MP3, a
    broadcast recording) is handed on block by block, every sample in order."""
    import av

    from tagger.audio import _FrameBlocks

    class Collect:
        def __init__(self) -> None:
            self.blocks: list[np.ndarray] = []

        def add(self, block: np.ndarray) -> None:
            self.blocks.append(block)

    mono = np.arange(1000, dtype=np.int16).reshape(1, -1)  # packed s16, one channel
    stereo = np.stack([np.full(500, 0.25, np.float32), np.full(500, -0.5, np.float32)])  # planar float
    frames = [av.AudioFrame.from_ndarray(mono, format="s16", layout="mono"),
              av.AudioFrame.from_ndarray(mono, format="s16", layout="mono"),
              av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")]
    for frame in frames:
        frame.sample_rate = 44_100
    out = Collect()
    blocks = _FrameBlocks(out)  # type: ignore[arg-type]
    for frame in frames:
        blocks.add(frame)
    blocks.flush()
    first, second = out.blocks
    assert first.shape == (2000, 1) and first.dtype == np.float32
    np.testing.assert_allclose(first[:1000, 0], np.arange(1000) / 32768)
    np.testing.assert_allclose(first[1000:, 0], np.arange(1000) / 32768)
    assert second.shape == (500, 2)
    np.testing.assert_array_equal(second[:, 0], 0.25)
    np.testing.assert_array_equal(second[:, 1], -0.5)
