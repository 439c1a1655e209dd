"""What many tests use: audio makers, a database outage, waiting for a condition, a folder of
good and bad files for ingest."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import psycopg
import soundfile as sf
from sqlalchemy import func, select

from tagger import db
from tagger.records import Payload
from tagger.tables import Clip, ClipFeatures, Tag

REPO = Path(__file__).resolve().parents[1]  # the checkout
PG_ADMIN_URL = os.environ.get("SOUNDTAG_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


@contextlib.contextmanager
def migrated_database(prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database at the latest migration, dropped afterwards: (name, url)."""
    name, url = db.create_database(PG_ADMIN_URL, prefix)
    try:
        db.upgrade(url)
        yield name, url
    finally:
        db.drop_database(PG_ADMIN_URL, name)


def make_tone(seconds: float = 1.0, sr: int = 44100, channels: int = 1, freq: float = 440.0,
              seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    base = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    cols = [base * (0.5 + 0.5 * c / max(channels, 1)) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def audio_bytes(fmt: str = "WAV", seconds: float = 1.0, sr: int = 44100, channels: int = 1, seed: int = 0,
                subtype: str | None = None) -> bytes:
    """A tone written by libsndfile: WAV, FLAC, OGG, AIFF…; ``seed`` makes each one different."""
    buf = io.BytesIO()
    sf.write(buf, make_tone(seconds, sr, channels, 200 + 37 * seed, seed), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def encoded_bytes(container: str, codec: str, sr: int = 44100, seconds: float = 1.0, seed: int = 0) -> bytes:
    """A tone encoded by FFmpeg (PyAV): MP3, M4A/AAC and WebM/Opus as people's files hold them."""
    import av

    samples = make_tone(seconds, sr, 1, 200 + 37 * seed, seed)[:, 0]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        frame_size = 1152 if codec == "libmp3lame" else 1024
        fmt = stream.codec_context.codec.audio_formats[0].name
        pts = 0
        for start in range(0, len(samples), frame_size):
            chunk = samples[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = sr, pts
            pts += len(chunk)
            resampled = av.AudioResampler(format=fmt, layout="mono", rate=sr).resample(frame)
            for r in resampled:
                out.mux(stream.encode(r))
        out.mux(stream.encode(None))
    return buf.getvalue()


ENCODED_FORMATS = {"mp3": ("mp3", "libmp3lame", 44100), "m4a": ("ipod", "aac", 44100),
                   "webm": ("webm", "libopus", 48000)}


def block_database(name: str, blocked: bool) -> None:
    """A database outage as clients see it: new connections refused, open ones ended."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (and return that), or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _after(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


class TakesSecondsToRead(bytes):
    """Audio bytes whose unpickling takes ``seconds``: keeps the process that reads them busy."""

    seconds = 0.0

    def __new__(cls, data: bytes, seconds: float) -> TakesSecondsToRead:
        made = super().__new__(cls, data)
        made.seconds = seconds
        return made

    def __reduce__(self):
        return _after, (self.seconds, bytes(self))


def _mark_then_after(marker: str, seconds: float, value: object) -> object:
    Path(marker).touch()
    time.sleep(seconds)
    return value


class MarksThenTakesSeconds(bytes):
    """Audio bytes whose unpickling first touches ``marker`` (a test waits for that instead
    of sleeping) and then takes ``seconds``: the process reading them is busy, provably."""

    marker = ""
    seconds = 0.0

    def __new__(cls, data: bytes, marker: Path, seconds: float) -> MarksThenTakesSeconds:
        made = super().__new__(cls, data)
        made.marker, made.seconds = str(marker), seconds
        return made

    def __reduce__(self):
        return _mark_then_after, (self.marker, self.seconds, bytes(self))


def busy_once_read(payload: Payload, marker: Path, seconds: float) -> Payload:
    """``payload`` whose process touches ``marker`` when it starts on it, then is busy ``seconds``."""
    return replace(payload, data=MarksThenTakesSeconds(payload.data, marker, seconds))


def slow_to_read(payload: Payload, seconds: float) -> Payload:
    """``payload`` with bytes that take ``seconds`` to arrive in the process that reads them:
    it is busy with its batch then, however fast the machine decodes the rest."""
    return replace(payload, data=TakesSecondsToRead(payload.data, seconds))


# Loaded as sitecustomize by every interpreter started with ``deadly_decoder_path``: decoding
# a file named deadly… or bytes that start with DEADLY ends the process, as a decoder that
# crashes on a hostile input does.
_DEADLY_DECODER = """
import os
import tagger.audio as audio

_decode_file, _decode_bytes = audio.decode_file, audio.decode_bytes


def decode_file(path, *args, **kwargs):
    if os.path.basename(str(path)).startswith("deadly"):
        os._exit(3)
    return _decode_file(path, *args, **kwargs)


def decode_bytes(data, *args, **kwargs):
    if bytes(data[:6]) == b"DEADLY":
        os._exit(3)
    return _decode_bytes(data, *args, **kwargs)


audio.decode_file, audio.decode_bytes = decode_file, decode_bytes
"""
DEADLY = b"DEADLY"  # bytes that start so end the process decoding them (``deadly_decoder_path``)


def deadly_decoder_path(folder: Path) -> str:
    """A PYTHONPATH for processes whose decoder dies on deadly… files and DEADLY… bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_DEADLY_DECODER)
    return os.pathsep.join([str(folder), str(REPO)])


class KillsTheProcessThatReadsIt:
    """A payload that ends the process unpickling it: what a decoder crashing on a file does."""

    def __reduce__(self):
        return os._exit, (3,)


def make_mixed_folder(root: Path, good: int, bad: bool = True) -> Path:
    """``good`` clips in three formats, four sample rates and three folder levels; with ``bad``
    also an empty file, random bytes, text posing as WAV, a truncated WAV, an unreadable
    (chmod 0) FLAC and a .txt file that a folder walk leaves out."""
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(good):
        fmt, ext = [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")][i % 3]
        folder = [root, root / "sub", root / "sub" / "deeper"][i % 3]
        sr = [8000, 22050, 44100, 48000][i % 4]
        (folder / f"clip{i}.{ext}").write_bytes(audio_bytes(fmt, seconds=1.0 + (i % 4), sr=sr, seed=i))
    if bad:
        (root / "empty.wav").write_bytes(b"")
        (root / "noise.wav").write_bytes(os.urandom(3000))
        (root / "notes.wav").write_text("this is a text file renamed .wav\n")
        (root / "sub" / "truncated.wav").write_bytes(audio_bytes("WAV", 1.0)[:40])
        locked = root / "sub" / "locked.flac"
        locked.write_bytes(audio_bytes("FLAC", 1.0, seed=99))
        locked.chmod(0)
        (root / "readme.txt").write_text("not audio, not picked up from a folder walk")
    return root


def assert_mixed_folder_tagged_and_stored(summary, sessions) -> None:
    """What a run over ``make_mixed_folder(good=9)`` reports and stores: the good clips tagged,
    the bad ones failed with their reasons, three tags and one features row per tagged clip."""
    running_as_root = os.geteuid() == 0  # root reads a chmod-0 file anyway
    assert summary.tagged == 9 + (1 if running_as_root else 0)
    assert summary.failed == 4 + (0 if running_as_root else 1)
    assert any("empty" in reason for _, reason in summary.failures)
    assert not summary.interrupted and summary.gave_up is None
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == summary.tagged + summary.failed
        assert s.scalar(select(func.count()).select_from(Tag)) == 3 * summary.tagged
        assert s.scalar(select(func.count()).select_from(ClipFeatures)) == summary.tagged
