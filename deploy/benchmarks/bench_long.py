"""Long recordings: the peak memory of `soundtag ingest` on a 2-hour 44.1 kHz WAV against
a 5 s clip's in the same run (issue 47: at most 300 MB more), and how fast it goes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from deploy.benchmarks.common import ingest_peak, load_tagger, scratch_postgres, write_noise_wav


def run(quick: bool = False) -> dict:
    seconds = 600 if quick else 2 * 3600
    _, model = load_tagger()
    with tempfile.TemporaryDirectory() as tmp, scratch_postgres() as url:
        env = {
            **os.environ,
            "SOUNDTAG_DATABASE_URL": url,
            "SOUNDTAG_MODEL_PATH": str(model),
            "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1",
            "SOUNDTAG_DEVICE": "cpu",
        }
        short = write_noise_wav(Path(tmp) / "short.wav", 5)
        long = write_noise_wav(Path(tmp) / "long.wav", seconds)
        short_mb, _ = ingest_peak(short, env)
        long_mb, long_s = ingest_peak(long, env)
    return {
        "recording_s": seconds,
        "peak_rss_5s_clip_mb": round(short_mb),
        "peak_rss_long_mb": round(long_mb),
        "peak_rss_above_5s_clip_mb": round(long_mb - short_mb),
        "ingest_long_s": round(long_s, 1),
        "ingest_long_x_real_time": round(seconds / long_s),
    }
