"""The Ogg Vorbis fast path (tagger._vorbis, libvorbisfile): the samples libsndfile gives,
and every irregular file handed back to libsndfile and FFmpeg untouched."""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

import tagger.audio as audio
from tagger import _vorbis
from tagger.audio import AudioError, decode_bytes, decode_file
from tagger.config import SAMPLES_DIR
from tests.helpers import audio_bytes, make_tone

ESC50_SAMPLE = sorted(SAMPLES_DIR.glob("*.ogg"))[0]


def _without_reader(monkeypatch: pytest.MonkeyPatch, decode, source):
    """What ``decode`` gives with libsndfile and FFmpeg alone (the path before the reader)."""
    with monkeypatch.context() as m:
        m.setattr(audio, "_vorbis", None)
        return decode(source)


def test_the_reader_is_built_with_the_package():
    # Optional in setup.py so an install never fails over it; a missing build would only
    # make decoding slower, so the suite says so here.
    assert audio._vorbis is _vorbis


@pytest.mark.parametrize("decode,source", [(decode_file, ESC50_SAMPLE), (decode_bytes, ESC50_SAMPLE.read_bytes())])
def test_an_esc50_clip_decodes_as_libsndfile_decodes_it(monkeypatch, decode, source):
    fast, slow = decode(source), _without_reader(monkeypatch, decode, source)
    assert (fast.sample_rate, fast.channels, len(fast.samples)) == (slow.sample_rate, slow.channels, len(slow.samples))
    assert len(fast.samples) == 5 * 44100
    # The same libvorbis, built with other flags: float rounding apart, the same samples.
    assert np.abs(fast.samples - slow.samples).max() < 1e-5


def test_file_and_bytes_give_the_same_samples():
    assert np.array_equal(decode_file(ESC50_SAMPLE).samples, decode_bytes(ESC50_SAMPLE.read_bytes()).samples)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1), (22050, 6)])
def test_other_rates_and_channel_counts_are_downmixed_and_resampled_alike(monkeypatch, rate, channels):
    data = audio_bytes("OGG", seconds=1.0, sr=rate, channels=channels)
    with _vorbis.Reader(data) as reader:
        assert (reader.rate, reader.channels, reader.streams) == (rate, channels, 1)
    fast, slow = decode_bytes(data), _without_reader(monkeypatch, decode_bytes, data)
    assert len(fast.samples) == len(slow.samples)
    assert np.abs(fast.samples - slow.samples).max() < 1e-4


def test_a_chained_file_is_left_to_libsndfile(monkeypatch):
    chained = audio_bytes("OGG", 0.5, seed=1) + audio_bytes("OGG", 0.5, seed=2)
    with _vorbis.Reader(chained) as reader:
        assert reader.streams == 2
    assert audio._read_vorbis(chained, None) is None
    assert np.array_equal(decode_bytes(chained).samples, _without_reader(monkeypatch, decode_bytes, chained).samples)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.97])
def test_a_cut_off_file_decodes_to_its_last_whole_page_as_ffmpeg_did(monkeypatch, cut):
    data = ESC50_SAMPLE.read_bytes()
    data = data[: int(len(data) * cut)]
    fast, before = decode_bytes(data), _without_reader(monkeypatch, decode_bytes, data)
    assert len(fast.samples) == len(before.samples) < 5 * 44100 * cut
    assert np.abs(fast.samples - before.samples).max() < 1e-5


def test_opus_in_ogg_is_not_vorbis():
    with pytest.raises(_vorbis.VorbisError):
        _vorbis.Reader(audio_bytes("OGG", 0.5, sr=48000, subtype="OPUS"))


def test_the_duration_limit_holds(monkeypatch):
    with pytest.raises(AudioError, match="over the limit of 2 s"):
        decode_file(ESC50_SAMPLE, max_duration_s=2)


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError):
        _vorbis.Reader(tmp_path / "missing.ogg")
    with pytest.raises(_vorbis.VorbisError, match=r"not Vorbis data \(libvorbisfile error -132\)"):
        _vorbis.Reader(b"OggS" + bytes(200))
    with _vorbis.Reader(ESC50_SAMPLE) as reader:
        with pytest.raises(TypeError, match="float32"):
            reader.read_into(np.zeros(100, np.float64))
    with pytest.raises(ValueError, match="closed"):
        reader.read_into(np.zeros(100, np.float32))


def _textbook_inverse_mdct(coefficients: np.ndarray) -> np.ndarray:
    """out[j] = sum_k X[k] cos(2 pi / n (j + 1/2 + n/4) (k + 1/2)), in float64."""
    n = 2 * len(coefficients)
    j, k = np.arange(n)[:, None], np.arange(n // 2)[None, :]
    return np.cos(2 * np.pi / n * (j + 0.5 + n / 4) * (k + 0.5)) @ coefficients.astype(np.float64)


@pytest.mark.parametrize("n", [64, 128, 256, 512, 1024, 2048, 4096, 8192])
def test_the_pffft_inverse_mdct_is_libvorbis_transform(n):
    # Decoding runs libvorbis's inverse MDCT through PFFFT (tagger/native/imdct_pffft.c):
    # the same transform as libvorbis's butterflies, to float rounding, at every Vorbis
    # block size.
    coefficients = np.random.default_rng(n).standard_normal(n // 2).astype(np.float32)
    fast, butterflies = np.empty(n, np.float32), np.empty(n, np.float32)
    _vorbis.inverse_mdct(coefficients, fast)
    _vorbis.inverse_mdct(coefficients, butterflies, False)
    exact = _textbook_inverse_mdct(coefficients)
    peak = np.abs(exact).max()
    assert np.abs(fast - exact).max() <= 1e-6 * peak
    assert np.abs(fast - exact).max() <= 2 * np.abs(butterflies - exact).max() + 1e-7 * peak
    # mapping0.c transforms each block in place: the coefficients in the output's first half.
    in_place = np.zeros(n, np.float32)
    in_place[: n // 2] = coefficients
    _vorbis.inverse_mdct(in_place[: n // 2], in_place)
    assert np.array_equal(in_place, fast)


def test_inverse_mdct_refuses_sizes_vorbis_never_has():
    with pytest.raises(ValueError, match="power of 2"):
        _vorbis.inverse_mdct(np.zeros(48, np.float32), np.zeros(96, np.float32))
    with pytest.raises(ValueError, match="power of 2"):
        _vorbis.inverse_mdct(np.zeros(100, np.float32), np.zeros(256, np.float32))


def _reader_samples(source) -> np.ndarray:
    with _vorbis.Reader(source) as reader:
        out = np.empty(reader.frames * reader.channels, np.float32)
        filled = 0
        while got := reader.read_into(out[filled:]):
            filled += got * reader.channels
    return out[:filled]


def _ogg_at_levels(levels) -> list[bytes]:
    # libsndfile's encoder at other quality levels writes other setup headers (other books).
    clips = []
    for level in levels:
        buf = io.BytesIO()
        sf.write(buf, make_tone(0.5, 44100, 1, 300, 1), 44100, format="OGG", subtype="VORBIS",
                 compression_level=level)
        clips.append(buf.getvalue())
    return clips


def _noisy_ogg(level: float, channels: int) -> bytes:
    # Noise and a sweep: codewords of every length the encoder's books have, not a tone's few.
    rng = np.random.default_rng(int(level * 10) + channels)
    t = np.arange(44100) / 44100
    x = 0.4 * np.sin(2 * np.pi * (200 + 4000 * t) * t) + 0.3 * rng.standard_normal((len(t), channels)).T
    buf = io.BytesIO()
    sf.write(buf, x.T.astype(np.float32), 44100, format="OGG", subtype="VORBIS", compression_level=level)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 2])
def test_every_encoder_level_codewords_decode_as_libvorbis_decodes_them(channels):
    # The reader's codeword lookup (codebook.c, sharedbook.c: a first table as wide as the
    # longest codeword, up to 10 bits, read 8 bytes at a time) must find the entries
    # libvorbis's own finds: one wrong entry puts a whole vector's error (far above float
    # rounding) into the samples. libsndfile's libvorbis is the reference.
    for level in [i / 5 for i in range(6)]:
        data = _noisy_ogg(level, channels)
        reference, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        ours = _reader_samples(data).reshape(-1, channels)
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() < 1e-5, level


def test_a_setup_header_seen_before_decodes_with_the_cached_books():
    # Streams with an identical setup header share its decoded codebooks (book_cache.c):
    # the second decode takes them from the cache and gives the same samples.
    data = ESC50_SAMPLE.read_bytes()
    first = _reader_samples(data)
    before = _vorbis.book_cache_info()
    again = _reader_samples(data)
    assert _vorbis.book_cache_info()["hits"] == before["hits"] + 1
    assert np.array_equal(first, again)


def test_more_setup_headers_than_the_cache_holds_all_decode_the_same():
    # Eleven headers through a cache of eight, several rounds and with readers held open
    # (books in use are never replaced): every decode gives the first decode's samples.
    clips = _ogg_at_levels([i / 10 for i in range(11)])
    stored_before = _vorbis.book_cache_info()["stored"]
    expected = [_reader_samples(c) for c in clips]
    assert len({e.tobytes() for e in expected}) == len(clips)  # really different encodings
    assert _vorbis.book_cache_info()["stored"] - stored_before > 8  # more headers than entries
    for _ in range(3):
        for clip, want in zip(clips, expected, strict=True):
            assert np.array_equal(_reader_samples(clip), want)
    held = [_vorbis.Reader(c) for c in clips]  # all eleven open at once: the cache is full of books in use
    try:
        for clip, want in zip(clips, expected, strict=True):
            assert np.array_equal(_reader_samples(clip), want)
    finally:
        for reader in held:
            reader.close()
    assert _vorbis.book_cache_info()["entries"] <= 8


def test_streams_decoding_on_many_threads_at_once_share_the_books_safely():
    clips = [*_ogg_at_levels([0.2, 0.5, 0.8]), ESC50_SAMPLE.read_bytes()]
    expected = [_reader_samples(c) for c in clips]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(_reader_samples, clips * 25))
    assert all(np.array_equal(got, expected[i % len(clips)]) for i, got in enumerate(results))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, by design here
def test_a_process_forked_while_other_threads_decode_can_decode():
    # The cache's lock is held across fork(): a child forked while a thread is inside the
    # cache does not inherit it locked by a thread it lacks (it would hang on its first decode).
    clips = _ogg_at_levels([0.3, 0.6])
    expected = [_reader_samples(c) for c in clips]
    stop = threading.Event()

    def keep_decoding() -> None:
        while not stop.is_set():
            for clip in clips:
                _reader_samples(clip)

    thread = threading.Thread(target=keep_decoding)
    thread.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:  # the child: decode once and leave without Python's clean-up
                ok = all(np.array_equal(_reader_samples(c), e) for c, e in zip(clips, expected, strict=True))
                os._exit(0 if ok else 1)
            deadline = time.monotonic() + 20
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if done[0] == 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("a forked child hung decoding")
            assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        stop.set()
        thread.join()
