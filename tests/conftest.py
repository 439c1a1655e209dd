"""Shared fixtures: a fresh PostgreSQL database per run, SQLite beside it, audio makers,
and a randomly initialised (clearly marked untrained) checkpoint for plumbing tests."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
import soundfile as sf

from tagger import db
from tagger.config import SHIPPED_MODEL_PATH

PG_ADMIN_URL = os.environ.get("SOUNDTAG_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_tone(seconds: float = 1.0, sr: int = 44100, channels: int = 1, freq: float = 440.0,
              seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    base = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    cols = [base * (0.5 + 0.5 * c / max(channels, 1)) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def audio_bytes(fmt: str = "WAV", seconds: float = 1.0, sr: int = 44100, channels: int = 1, seed: int = 0,
                subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, make_tone(seconds, sr, channels, 200 + 37 * seed, seed), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _create_database(prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def block_database(name: str, blocked: bool) -> None:
    """A database outage as clients see it: new connections refused, open ones ended."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _drop_database(name: str) -> None:
    db.get_engine.cache_clear()  # drop pooled connections' engines (FORCE ends the rest)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for the whole run, migrated, dropped at the end."""
    name, url = _create_database("soundtag_test")
    db.upgrade(url)
    yield url
    _drop_database(name)


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request, tmp_path):
    """Each store test runs on PostgreSQL and on the embedded SQLite default."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        db.upgrade(url)
        yield url
        return
    name, url = _create_database("soundtag_store")
    db.upgrade(url)
    yield url
    _drop_database(name)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """Random weights for plumbing tests; their version says 'untrained'."""
    import torch

    from tagger.checkpoint import save_checkpoint
    from tagger.network import AudioCNN
    from training.data import read_esc50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "untrained.safetensors"
    try:
        names = read_esc50().class_names
    except FileNotFoundError:
        names = [f"class_{i}" for i in range(50)]
    save_checkpoint(path, AudioCNN(num_classes=len(names)), names, trained=False)
    return path


@pytest.fixture(scope="session")
def random_tagger(random_checkpoint):
    from tagger.inference import Tagger

    return Tagger.load(random_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def shipped_model_path() -> Path:
    if not SHIPPED_MODEL_PATH.is_file():
        pytest.fail(f"the shipped model is missing at {SHIPPED_MODEL_PATH}")
    return SHIPPED_MODEL_PATH


@pytest.fixture(scope="session")
def shipped_tagger(shipped_model_path):
    from tagger.inference import Tagger

    return Tagger.load(shipped_model_path, device="cpu")


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
