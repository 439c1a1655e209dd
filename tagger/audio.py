"""Decode audio bytes or files into mono float32 at the model's sample rate.

libsndfile reads what it knows (WAV, FLAC, Ogg Vorbis/Opus, AIFF); FFmpeg through PyAV
reads the rest people have (MP3, M4A/AAC, WebM/Opus from browsers). The format is
recognised by content, not by the file's name. Decoding runs in blocks: the duration
limit is enforced while reading, and each block is down-mixed and fed to a streaming
soxr resampler, so memory stays near the size of the output whatever the input rate.

Everything that can go wrong with user audio ends here as an ``AudioError`` with a
message a person can act on; callers record it as a failed clip.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 44_100  # every decoded clip comes out mono at this rate (tagger.features builds on it)

# Names that are audio even when the content is garbled (its owner should hear of it).
AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc",
                    ".mp3", ".m4a", ".mp4", ".aac", ".webm", ".weba", ".mka", ".caf"}
READABLE_FORMATS = "WAV, FLAC, Ogg (Vorbis/Opus), AIFF, MP3, M4A/AAC, WebM/Opus"
MIN_SAMPLE_RATE = 2_000
MAX_SAMPLE_RATE = 768_000
MIN_DURATION_S = 0.1
DIGITAL_SILENCE = 1e-4  # |sample| below this is digital silence (ESC-50 pads clips with zeros)
BLOCK_FRAMES = 65_536
_UNKNOWN_LENGTH = 1 << 40  # libsndfile reports ~2**63 frames for streams of unknown length
_LIBSNDFILE_FORMATS = {"wav", "flac", "ogg", "aiff", "caf"}


class AudioError(ValueError):
    """The input cannot be tagged; the message says why."""


Source = str | bytes  # a file's path or the bytes of one: what ``decode_stream`` decodes again
Sink = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # mono float32 at SAMPLE_RATE: all, the first ``hold_samples``, or none (``without_samples``)
    sample_rate: int  # of the original file
    channels: int  # of the original file
    length: int = -1  # samples in the clip when ``samples`` holds fewer; -1: ``len(samples)``
    envelope: np.ndarray | None = None  # (2, points) min/max, when computed where the clip was decoded
    source: Source | None = None  # where to decode it again, when ``samples`` holds only its start
    last_sound: int = -1  # one past its last sample louder than digital silence, when ``samples`` is partial

    @property
    def num_samples(self) -> int:
        return len(self.samples) if self.length < 0 else self.length

    @property
    def held_whole(self) -> bool:
        """All its samples are in ``samples``."""
        return self.length < 0

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def without_samples(self, envelope: np.ndarray) -> DecodedAudio:
        """The clip as a decoding process sends it back once its log-mel is computed there:
        its length and waveform envelope, not its samples (``tagger.pipeline.decode_for_model``)."""
        last_sound = sound_end(self.samples) if self.held_whole else self.last_sound
        return DecodedAudio(np.zeros(0, np.float32), self.sample_rate, self.channels, self.num_samples, envelope,
                            self.source, last_sound)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sound_end(x: np.ndarray, first_block: int = 4096) -> int:
    """One past the last sample louder than digital silence (0 if none), found from the
    end in blocks that double in size: a clip that ends loud costs one small block, a
    long clip is neither scanned nor copied as a whole."""
    end, block = int(x.shape[-1]), first_block
    while end > 0:
        start = max(0, end - block)
        loud = np.abs(x[start:end]) > DIGITAL_SILENCE  # any() and argmax() stop at the first hit
        if loud.any():
            return end - int(np.argmax(loud[::-1]))
        end, block = start, min(2 * block, 1 << 20)
    return 0


def sniff_format(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None when they announce no audio."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"caff":
        return "caf"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS frame header
    if len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 and head[2] & 0xF0 != 0xF0:
        return "mp3"  # MPEG audio frame sync with a valid layer and bitrate
    return None


def is_audio_file(path: Path) -> bool:
    """Audio by name or by content; anything else (notes.txt) is not a clip."""
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(16)) is not None
    except OSError:
        return True  # unreadable: let the caller record why


def decode_bytes(data: bytes, max_duration_s: float | None = None, hold_samples: int | None = None) -> DecodedAudio:
    """``hold_samples``: keep at most this many samples; a longer clip comes back with its
    first ones, its length and the bytes to ``decode_stream`` again."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"expected audio bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise AudioError("empty file: no audio data")
    return _decode(data, data[:16], _wav_declared_frames(data[:4096], len(data)), max_duration_s, hold_samples)


def decode_file(path: str | Path, max_duration_s: float | None = None,
                hold_samples: int | None = None) -> DecodedAudio:
    """Decode from disk in blocks: a long file is never held in memory as bytes.
    ``hold_samples`` as for ``decode_bytes``: then a long recording is never held at all."""
    path = Path(path)
    size, head = _size_and_head(path)
    return _decode(path, head[:16], _wav_declared_frames(head, size), max_duration_s, hold_samples)


def decode_stream(source: Source, sink: Sink, max_duration_s: float | None = None) -> int:
    """Decode a clip again, handing its mono samples at SAMPLE_RATE to ``sink`` block by
    block instead of keeping them; returns how many there were."""
    if isinstance(source, str):
        size, head = _size_and_head(Path(source))
        return _decode(Path(source), head[:16], _wav_declared_frames(head, size), max_duration_s, 0, sink).length
    return _decode(source, source[:16], _wav_declared_frames(source[:4096], len(source)), max_duration_s, 0,
                   sink).length


def _size_and_head(path: Path) -> tuple[int, bytes]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise AudioError("empty file: no audio data")
    return size, head


def _decode(raw: Path | bytes, head: bytes, wav_frames: tuple[int, int] | None,
            max_duration_s: float | None, hold: int | None, sink: Sink | None = None) -> DecodedAudio:
    """``raw``: the file's path or its bytes."""
    fmt = sniff_format(head)
    errors = []
    # libsndfile first for what it reads (fast, exact); FFmpeg for the rest and as a
    # second opinion on what libsndfile refuses (a damaged Ogg FFmpeg still plays).
    # Content no container announces goes to libsndfile alone (it knows headerless and
    # rare formats); FFmpeg would guess at random bytes.
    if fmt is None:
        readers = [_read_libsndfile]
    elif fmt in _LIBSNDFILE_FORMATS:
        readers = [_read_libsndfile, _read_ffmpeg]
    else:
        readers = [_read_ffmpeg]
    for reader in readers:
        try:
            # A path goes to the decoder as it is: FFmpeg and libsndfile then read the file
            # themselves instead of through Python calls per read.
            with contextlib.nullcontext(str(raw)) if isinstance(raw, Path) else io.BytesIO(raw) as source:
                out, rate, channels, declared = reader(source, _Output(max_duration_s, hold, sink), wav_frames)
            break
        except _Unreadable as exc:
            errors.append(str(exc))
        except AudioError:
            raise
        except Exception as exc:  # broad on purpose: a decoder library's own surprise is this file's fault
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    else:
        kind = f"{fmt.upper()} " if fmt else ""
        raise AudioError(f"not a readable {kind}audio file ({READABLE_FORMATS} are read): {errors[0]}")
    got = out.length / SAMPLE_RATE
    if declared is not None and declared > 0 and got < 0.98 * declared / rate - 0.01:
        raise AudioError(f"truncated: header {declared / rate:.2f} s, data {got:.3f} s")
    if out.length == 0:
        raise AudioError("file holds no audio samples (0 frames)")
    if got < MIN_DURATION_S:
        raise AudioError(f"clip is {got:.3f} s long, shorter than the {MIN_DURATION_S} s needed to hear anything")
    samples = out.kept()
    if len(samples) == out.length:
        return DecodedAudio(samples, rate, channels)
    return DecodedAudio(samples, rate, channels, out.length, source=str(raw) if isinstance(raw, Path) else raw,
                        last_sound=out.last_sound or sound_end(samples))


class _Unreadable(Exception):
    """This reader cannot make sense of the input (another may)."""


def _check_stream(rate: int, channels: int) -> None:
    if channels <= 0 or channels > 64:
        raise AudioError(f"invalid header: {channels} channels")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {rate} Hz is outside the {MIN_SAMPLE_RATE:,}–{MAX_SAMPLE_RATE:,} Hz "
                         "that recordings use")


def _read_libsndfile(source: str | BinaryIO, output: _Output,
                     wav_frames: tuple[int, int] | None) -> tuple[_MonoResampler, int, int, int | None]:
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise _Unreadable(_soundfile_reason(exc)) from None
    with f:
        rate, channels = f.samplerate, f.channels
        if rate <= 0:
            raise AudioError(f"invalid header: {rate} Hz")
        _check_stream(rate, channels)
        if f.frames >= _UNKNOWN_LENGTH or (f.frames == 0 and f.format != "WAV"):
            # A stream written to a pipe, or a cut-off Ogg: libsndfile stops short or fails
            # at the unknown end, FFmpeg reads what is there.
            raise _Unreadable("length unknown to libsndfile")
        declared = f.frames if f.frames > 0 else None
        if wav_frames is not None:
            declared = wav_frames[0]
        _refuse_declared_length(declared, rate, output.max_duration_s)
        out = _MonoResampler(rate, output, declared)
        try:
            while True:
                # Mono at the model's rate (most recordings, all of ESC-50) is decoded
                # straight into the output buffer: no block to allocate and copy.
                target = out.direct_target(BLOCK_FRAMES) if channels == 1 else None
                block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True, out=target)
                if not len(block):
                    break
                if target is not None:
                    out.added_directly(len(block))
                else:
                    out.add(block)
                if f.tell() >= f.frames:
                    break
        except (sf.LibsndfileError, RuntimeError) as exc:
            if out.frames_in == 0:
                raise _Unreadable(_soundfile_reason(exc)) from None
            # A damaged tail: keep what decoded; a header that promised more says so below.
        out.finish()
        return out, rate, channels, declared


def _read_ffmpeg(source: str | BinaryIO, output: _Output,
                 wav_frames: tuple[int, int] | None) -> tuple[_MonoResampler, int, int, int | None]:
    import av  # FFmpeg; imported here so the common libsndfile path does not pay for it

    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(_ffmpeg_reason(exc)) from None
    with container:
        stream: Any = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise _Unreadable("no audio stream in the file")
        ctx: Any = stream.codec_context
        if ctx is None:
            raise _Unreadable("audio stream without a decoder")
        rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
        _check_stream(rate, channels)
        declared_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if declared_s is not None:
            _refuse_declared_length(int(declared_s * rate), rate, output.max_duration_s)
        out = _MonoResampler(rate, output, int(declared_s * rate) if declared_s else None)
        blocks = _FrameBlocks(out)
        try:
            for frame in container.decode(stream):
                if frame.sample_rate != rate:
                    raise AudioError(f"sample rate changes inside the file ({rate} → {frame.sample_rate} Hz)")
                blocks.add(frame)
        except AudioError:  # a ValueError too, but the file's own fault, said as it is
            raise
        except (av.FFmpegError, ValueError) as exc:
            blocks.flush()  # a damaged tail: keep what decoded
            if out.frames_in == 0:
                raise _Unreadable(_ffmpeg_reason(exc)) from None
        blocks.flush()
        if out.frames_in == 0:
            raise _Unreadable("no audio could be decoded")
        # Lossy formats carry an estimate of their length; FLAC and WAV headers a promise.
        exact = container.format.name in ("flac", "wav")
        out.finish()
        return out, rate, channels, int(declared_s * rate) if exact and declared_s else None


class _FrameBlocks:
    """Gathers FFmpeg's frames (13–26 ms each for Opus, MP3 and AAC) in FFmpeg's own FIFO,
    and hands them on in blocks of about ``BLOCK_FRAMES`` to be converted, down-mixed and
    resampled: per frame, that work in Python cost more than the decoding itself, and even
    reading each frame's planes into numpy cost a fifth of an MP3's decoding."""

    def __init__(self, out: _MonoResampler) -> None:
        import av  # FFmpeg; imported here so the common libsndfile path does not pay for it

        self.out = out
        self.new_fifo = av.AudioFifo
        self.fifo = self.new_fifo()  # takes the first frame's format, layout and rate

    def add(self, frame: Any) -> None:
        frame.pts = None  # the FIFO would check the timestamps run on; a gap is the decoder's business
        try:
            self.fifo.write(frame)
        except ValueError:  # another sample format, layout or rate: it starts a new block
            self.flush()
            self.fifo = self.new_fifo()
            self.fifo.write(frame)
        if self.fifo.samples >= BLOCK_FRAMES:
            self.flush()

    def flush(self) -> None:
        block = self.fifo.read()
        if block is None:  # nothing gathered
            return
        try:
            samples = block.to_ndarray()  # planar: (channels, frames); packed: (1, frames × channels)
        except (TypeError, ValueError, KeyError) as exc:
            raise AudioError(f"unsupported sample format {block.format.name!r} in the file ({exc})") from None
        channels = len(block.layout.channels)
        self.out.add(_as_float(samples.T if block.format.is_planar else samples.reshape(-1, channels)))


def _as_float(arr: np.ndarray) -> np.ndarray:
    """FFmpeg's samples → float32 in [-1, 1)."""
    kind = arr.dtype
    if kind == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(kind, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(kind).max + 1)
    return arr.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Output:
    """What becomes of the decoded samples: the duration limit, how many are kept (None:
    all), and where every block goes as it is decoded (``decode_stream``)."""

    max_duration_s: float | None
    hold: int | None
    sink: Sink | None = None


class _MonoResampler:
    """Down-mixes blocks to mono and resamples them to SAMPLE_RATE as they arrive; keeps
    the first ``hold`` of them and hands each to the sink."""

    def __init__(self, rate: int, output: _Output, declared_frames: int | None) -> None:
        self.rate, self.max_duration_s = rate, output.max_duration_s
        self.hold, self.sink = output.hold, output.sink
        self.frames_in = 0
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        # Sized from the header so a long file is written in place, not grown and copied;
        # pages a lying header promised but never fills are never touched, so cost nothing.
        guess = int(declared_frames * SAMPLE_RATE / rate) + 1024 if declared_frames else 10 * SAMPLE_RATE
        cap = (output.max_duration_s or 3600) * SAMPLE_RATE + 1024
        if self.hold is not None:
            cap = min(cap, self.hold)
        self.buffer = np.empty(int(min(guess, cap)), dtype=np.float32)
        self.length = 0  # samples out, kept or not
        self.last_sound = 0  # one past the last sample out that is not digital silence, past those kept

    def add(self, block: np.ndarray) -> None:
        self._count(len(block))
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        _check_finite(mono)
        self._append(mono if self.stream is None else self.stream.resample_chunk(mono))

    def direct_target(self, frames: int) -> np.ndarray | None:
        """Where the next mono block may be decoded in place, as (frames, 1); None when
        it has to be resampled, handed on or left out first."""
        if self.stream is not None or self.sink is not None:
            return None
        if self.hold is not None and self.length + frames > self.hold:
            return None
        if len(self.buffer) - self.length < 1024:  # full (the header's length was a guess or a lie)
            self._reserve(self.length + frames)
        frames = min(frames, len(self.buffer) - self.length)
        return self.buffer[self.length : self.length + frames].reshape(-1, 1)

    def added_directly(self, frames: int) -> None:
        """``frames`` were decoded into ``direct_target``: check them as ``add`` does."""
        self._count(frames)
        _check_finite(self.buffer[self.length : self.length + frames])
        self.length += frames

    def _count(self, frames: int) -> None:
        self.frames_in += frames
        if self.max_duration_s is not None and self.frames_in > self.max_duration_s * self.rate:
            raise AudioError(f"clip is over the limit of {self.max_duration_s:.0f} s (SOUNDTAG_MAX_DURATION_S)")

    def finish(self) -> None:
        if self.stream is not None:
            self._append(self.stream.resample_chunk(np.zeros(0, np.float32), last=True))

    def kept(self) -> np.ndarray:
        return self.buffer[: min(self.length, len(self.buffer))]

    def _append(self, part: np.ndarray) -> None:
        if self.sink is not None and len(part):
            self.sink(part)
        end = self.length + len(part)
        keep = end if self.hold is None else min(end, self.hold)
        if keep > self.length:
            self._reserve(keep)
            self.buffer[self.length : keep] = part[: keep - self.length]
        if end > keep:  # beyond what is kept: remember only where the sound ends
            skip = max(keep - self.length, 0)
            loud = np.flatnonzero(np.abs(part[skip:]) > DIGITAL_SILENCE)
            if len(loud):
                self.last_sound = self.length + skip + int(loud[-1]) + 1
        self.length = end

    def _reserve(self, end: int) -> None:
        if end > len(self.buffer):
            cap = self.hold if self.hold is not None else end + len(self.buffer)
            grown = np.empty(max(end, min(len(self.buffer) * 3 // 2, cap)), dtype=np.float32)
            grown[: self.length] = self.buffer[: self.length]
            self.buffer = grown


def _check_finite(samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")


def _refuse_declared_length(frames: int | None, rate: int, max_duration_s: float | None) -> None:
    # Cheap refusal before decoding anything when the header already says it is too long.
    if frames is not None and max_duration_s is not None and frames / rate > max_duration_s:
        raise AudioError(f"clip is {frames / rate:.1f} s long, over the limit of "
                         f"{max_duration_s:.0f} s (SOUNDTAG_MAX_DURATION_S)")


def _wav_declared_frames(head: bytes, total_size: int) -> tuple[int, int] | None:
    """(frames the WAV header promises, bytes per frame), or None when it promises no length.

    libsndfile quietly shortens a WAV to the bytes that are there; the promise tells a
    truncated file from a short one.
    """
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            channels = struct.unpack("<H", head[pos + 10 : pos + 12])[0]
            bits = struct.unpack("<H", head[pos + 22 : pos + 24])[0] if pos + 24 <= len(head) else 0
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0] or channels * ((bits + 7) // 8)
        elif chunk == b"data":
            if block_align <= 0 or size in (0, 0xFFFFFFFF) or size > 0xFFFFFF00:
                return None  # streaming writers leave the size open
            return size // block_align, block_align
        pos += 8 + size + (size & 1)
    return None


def _soundfile_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # libsndfile prefixes messages with the file object's repr; keep the reason only.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).split(": '<", 1)[0]
