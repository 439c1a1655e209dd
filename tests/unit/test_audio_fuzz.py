"""Property-based fuzzing of the decoder: real clips with lying headers, odd and extreme
sample rates, huge declared lengths, spliced random bytes and cut-off tails.

Every input gives a sound result (finite mono float32 at 44.1 kHz, at least the minimum
length) or an ``AudioError`` with a reason, in bounded time and memory; nothing else.
"""

from __future__ import annotations

import resource
import struct
import time
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagger.audio import MIN_DURATION_S, AudioError, decode_bytes
from tagger.config import SAMPLES_DIR
from tests.helpers import ENCODED_FORMATS, audio_bytes, encoded_bytes

SEEDS = {
    "wav16": audio_bytes("WAV", 0.6, 22050, channels=2),
    "wavfloat": audio_bytes("WAV", 0.5, 44100, subtype="FLOAT"),
    "flac": audio_bytes("FLAC", 0.6, 16000),
    "ogg": audio_bytes("OGG", 0.6, 44100),
    "esc50-ogg": sorted(SAMPLES_DIR.glob("*.ogg"))[0].read_bytes()[:60_000],
    **{name: encoded_bytes(*spec, seconds=0.6) for name, spec in ENCODED_FORMATS.items()},
}
WORST = {"seconds": 0.0, "traced_mb": 0.0}


def _mutate(data: bytes, kind: str, position: float, value: int, blob: bytes) -> bytes:
    b = bytearray(data)
    at = int(position * max(len(b) - 1, 0))
    if kind == "cut":
        return bytes(b[:at])
    if kind == "splice":
        return bytes(b[:at] + blob + b[at + len(blob):])
    if kind == "insert":
        return bytes(b[:at] + blob + b[at:])
    if kind == "rate" and b[:4] == b"RIFF":
        b[24:28] = struct.pack("<I", value)
        return bytes(b)
    if kind == "length" and b[:4] == b"RIFF":
        b[40:44] = struct.pack("<I", value)  # the data chunk's declared size
        return bytes(b)
    if kind == "flac-total" and b[:4] == b"fLaC":
        head = int.from_bytes(b[18:26], "big") & ~((1 << 36) - 1)
        b[18:26] = (head | (value & ((1 << 36) - 1))).to_bytes(8, "big")
        return bytes(b)
    b[at] = value & 0xFF
    return bytes(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    kind=st.sampled_from(["cut", "splice", "insert", "rate", "length", "flac-total", "byte"]),
    position=st.floats(0.0, 1.0),
    value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7919, 44099, 768_001, 2**31, 2**32 - 1])),
    blob=st.binary(min_size=1, max_size=64),
)
def test_decoder_answers_every_mutation_soundly(seed, kind, position, value, blob):
    data = _mutate(SEEDS[seed], kind, position, value, blob)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        clip = decode_bytes(data, max_duration_s=600)
    except AudioError as exc:
        assert str(exc) and "Traceback" not in str(exc)
    else:
        assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
        assert np.isfinite(clip.samples).all()
        assert clip.duration_s >= MIN_DURATION_S
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    WORST["seconds"] = max(WORST["seconds"], elapsed)
    WORST["traced_mb"] = max(WORST["traced_mb"], peak)
    assert elapsed < 5.0, f"{seed}/{kind} took {elapsed:.1f} s"
    assert peak < 200, f"{seed}/{kind} allocated {peak:.0f} MB"


def test_fuzzing_stayed_within_bounds():
    """Runs after the property above: the whole process's peak stays modest."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz worst case: {WORST['seconds'] * 1000:.0f} ms, {WORST['traced_mb']:.1f} MB traced; "
          f"process peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 2500
