"""Every format people send, against WAV, in one run: the same clips ingested as WAV,
FLAC, Ogg Vorbis, MP3, M4A/AAC and WebM/Opus by the `soundtag ingest` command (one
process per core, into a fresh PostgreSQL database each time), formats taking turns
twice so that the machine's drift falls on all of them alike.

Printed per format: clips/s (the mean of its rounds), its ratio to WAV, and the CPU per
clip of the tagging processes (the command's summary); then the real-time factor of the
six in turn (all the audio ingested ÷ all the time it took).

The clips are ESC-50 fold-4 clips (their Ogg Vorbis files as they are; the others made
from them with FFmpeg's encoders at the bit rates phones and browsers use), or the bundled
samples where ESC-50 is not here.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np

from deploy.benchmarks.bench_versus import cli_ingest_run
from deploy.benchmarks.common import cpu_name, load_tagger, scratch_postgres
from tagger.audio import decode_file
from tagger.config import SAMPLES_DIR
from tagger.device import cpu_cores

# name: (container, codec, sample rate, bit rate): what a phone, a browser or an editor writes.
FORMATS: dict[str, tuple[str, str, int, int]] = {
    "wav": ("wav", "pcm_s16le", 44_100, 0),
    "flac": ("flac", "flac", 44_100, 0),
    "ogg": ("ogg", "libvorbis", 44_100, 0),  # the ESC-50 files themselves
    "mp3": ("mp3", "libmp3lame", 44_100, 128_000),
    "m4a": ("ipod", "aac", 44_100, 128_000),
    "webm": ("webm", "libopus", 48_000, 64_000),
}
EXTENSIONS = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3", "m4a": ".m4a", "webm": ".webm"}


def fold_clips(n: int, fold: int = 4) -> list[Path]:
    try:
        from training.data import read_esc50

        data = read_esc50()
        return [data.root / "audio" / f for f, k in zip(data.files, data.folds, strict=True) if k == fold][:n]
    except FileNotFoundError:
        return sorted(SAMPLES_DIR.glob("*.ogg"))[:n]


def encode(samples: np.ndarray, dest: Path, fmt: str) -> None:
    """Mono float32 at 44.1 kHz → ``dest`` in ``fmt``, through FFmpeg's own encoders."""
    container_name, codec, rate, bit_rate = FORMATS[fmt]
    with av.open(str(dest), "w", format=container_name) as out:
        stream: Any = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44_100
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate)
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(part):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def make_formats(clips: list[Path], folder: Path) -> dict[str, list[Path]]:
    made: dict[str, list[Path]] = {fmt: [] for fmt in FORMATS}
    (folder / "ogg").mkdir(parents=True)
    for fmt in FORMATS:
        (folder / fmt).mkdir(exist_ok=True)

    def one(clip: Path) -> None:
        samples = decode_file(clip).samples
        for fmt in FORMATS:
            dest = folder / fmt / (clip.stem + EXTENSIONS[fmt])
            if fmt == "ogg" and clip.suffix == ".ogg":
                shutil.copy(clip, dest)
            else:
                encode(samples, dest, fmt)

    with ThreadPoolExecutor(cpu_cores()) as pool:
        list(pool.map(one, clips))
    for fmt in FORMATS:
        made[fmt] = sorted((folder / fmt).iterdir())
    return made


def run(quick: bool = False) -> dict[str, Any]:
    _, model_path = load_tagger()
    clips = fold_clips(24 if quick else 300)
    cores = cpu_cores()
    audio_s = sum(decode_file(p).duration_s for p in clips)
    folder = Path(tempfile.mkdtemp(prefix="soundtag-formats-"))
    rates: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    cpu_ms: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    try:
        files = make_formats(clips, folder)
        for _ in range(1 if quick else 2):
            for fmt in FORMATS:
                with scratch_postgres() as url:
                    got = cli_ingest_run(files[fmt], url, model_path, cores)
                rates[fmt].append(got["clips_per_s"])
                cpu_ms[fmt].append(got["cpu_ms_per_clip"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mean = {fmt: statistics.mean(r) for fmt, r in rates.items()}
    figures: dict[str, Any] = {"cpu": cpu_name(), "cores": cores, "clips": len(clips),
                               "audio_seconds_per_format": round(audio_s, 1)}
    for fmt in FORMATS:
        figures[f"{fmt}_clips_per_s"] = round(mean[fmt], 1)
        figures[f"{fmt}_vs_wav"] = round(mean[fmt] / mean["wav"], 2)
        figures[f"{fmt}_cpu_ms_per_clip"] = round(statistics.mean(cpu_ms[fmt]), 2)
    # The six in turn: all their audio over all their time.
    seconds = sum(len(clips) / mean[fmt] for fmt in FORMATS)
    figures["mix_realtime_factor"] = round(len(FORMATS) * audio_s / seconds, 1)
    return figures
