"""Property-based fuzzing of the decoder: real clips with lying headers, odd and extreme
sample rates, huge declared lengths, spliced random bytes and cut-off tails.

Every input gives a sound result (finite mono float32 at 44.1 kHz, at least the minimum
length) or an ``AudioError`` with a reason, within a CPU-time and a memory limit; nothing
else. Each example is decoded in a child process, so a decoder that crashes fails that
example (hypothesis then shrinks it and prints the bytes) instead of the test run.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import struct
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagger.audio import MIN_DURATION_S, AudioError, decode_bytes, decode_file
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


class _Decoder:
    """A child process that decodes what it is sent, with the fuzz examples' bounds: a CPU
    time limit (a decoder that loops forever is killed by the kernel) and an address-space
    limit (one that allocates without bound gets MemoryError or dies). A crash or a kill
    fails the example that caused it, not the test run."""

    CPU_S = 20  # per example; a clean decode of these seeds takes milliseconds
    MEMORY = 3 << 30

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_decode_in_child, args=(theirs, self.CPU_S, self.MEMORY), daemon=True)
        self.proc.start()
        theirs.close()

    def decode(self, data: bytes) -> tuple[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(data)
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            code, self.proc = self.proc.exitcode, None
            return "died", code

    def close(self) -> None:
        if self.proc is not None:
            self.conn.close()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


def _decode_in_child(conn: Any, cpu_s: int, memory: int) -> None:
    import tempfile

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    path = Path(tempfile.mkdtemp()) / "example"
    while True:
        try:
            data = conn.recv()
        except EOFError:
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        resource.setrlimit(resource.RLIMIT_CPU, (int(used.ru_utime + used.ru_stime) + cpu_s, resource.RLIM_INFINITY))
        path.write_bytes(data)
        answers = []
        for decode, source in ((decode_bytes, data), (decode_file, path)):
            try:
                clip = decode(source, max_duration_s=600)
            except AudioError as exc:
                answers.append(("refused", str(exc)))
            except MemoryError:
                answers.append(("memory", "MemoryError"))
            except Exception as exc:  # anything else is a finding
                answers.append(("raised", f"{type(exc).__name__}: {exc}"))
            else:
                samples = clip.samples
                answers.append(("decoded", (str(samples.dtype), samples.ndim, bool(np.isfinite(samples).all()),
                                            clip.duration_s, len(samples))))
        conn.send(("answered", answers))


DECODER = _Decoder()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    kind=st.sampled_from(["cut", "splice", "insert", "rate", "length", "flac-total", "byte"]),
    position=st.floats(0.0, 1.0),
    value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7919, 44099, 768_001, 2**31, 2**32 - 1])),
    blob=st.binary(min_size=1, max_size=64),
)
def test_decoder_answers_every_mutation_soundly(seed, kind, position, value, blob):
    """The fuzz target of the decoding entry points (bytes, as the stream and uploads give
    them, and a file, as ingest reads it), bounded by its example count in CI."""
    data = _mutate(SEEDS[seed], kind, position, value, blob)
    kind_of_answer, answers = DECODER.decode(data)
    assert kind_of_answer == "answered", f"{seed}/{kind}: the decoder's process died (exit {answers})"
    for how, what in answers:
        assert how in ("refused", "decoded"), f"{seed}/{kind}: {how}: {what}"
        if how == "refused":
            assert what and "Traceback" not in what
        else:
            dtype, ndim, finite, duration_s, _ = what
            assert (dtype, ndim, finite) == ("float32", 1, True)
            assert duration_s >= MIN_DURATION_S
    # Bytes and the same bytes in a file get the same answer.
    assert answers[0][0] == answers[1][0], answers


def test_the_decoder_process_is_closed():
    DECODER.close()
