"""`soundtag ingest` of a long recording: its peak memory does not follow its length, and
what is stored of it stays bounded."""

import os

import pytest
from sqlalchemy import select, text

from deploy.benchmarks.common import ingest_peak, write_noise_wav
from tagger import codec, db
from tagger.features import HOP_LENGTH, SAMPLE_RATE, window_starts
from tagger.long_clips import MAX_STORED_COLUMNS
from tagger.tables import Clip, ClipFeatures


@pytest.mark.slow
def test_a_30_minute_recording_is_ingested_in_the_memory_of_a_5_s_clip(tmp_path, pg_url, random_checkpoint):
    engine = db.get_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    env = {
        **os.environ,
        "SOUNDTAG_DATABASE_URL": pg_url,
        "SOUNDTAG_MODEL_PATH": str(random_checkpoint),
        "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1",
        "SOUNDTAG_DEVICE": "cpu",
    }
    short = write_noise_wav(tmp_path / "short.wav", 5)
    long = write_noise_wav(tmp_path / "long.wav", 30 * 60)  # 318 MB of samples once decoded
    grown_mb = ingest_peak(long, env)[0] - ingest_peak(short, env)[0]
    assert grown_mb < 100, f"30 minutes took {grown_mb:.0f} MB more than 5 s"
    with db.session_factory(pg_url)() as s:
        clip = s.scalars(select(Clip).where(Clip.source.endswith("long.wav"))).one()
        features = s.get(ClipFeatures, clip.id)
    assert clip.status == "tagged" and clip.duration_s == pytest.approx(1800.0)
    assert clip.verdict is not None and features is not None
    frames = 1 + 1800 * SAMPLE_RATE // HOP_LENGTH
    assert len(features.timeline) == len(window_starts(frames))
    spectrogram = codec.decode_quantized(features.spectrogram)["spectrogram"][1]
    assert spectrogram.shape[0] == 64 and spectrogram.shape[1] <= MAX_STORED_COLUMNS
