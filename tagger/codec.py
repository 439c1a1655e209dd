"""Feature codec: how spectrograms, feature maps, envelopes and embeddings are stored.

Format version 2 (one self-describing blob per stored field)::

    b"STFC"  u8 version=2  u32-le header length  header (UTF-8 JSON)  zstd(payload)

The header lists the arrays in payload order: ``{"name", "shape", "kind", "lo", "hi",
"bits", "delta"}``. Kinds:

* ``u8``  — linear quantisation to ``bits`` bits (≤ 8, one byte per element) between the
  array's own min ``lo`` and max ``hi``: with L = 2^bits - 1 levels,
  q = round((x - lo) / (hi - lo) · L); decoding gives lo + q · (hi - lo) / L, so
  **the absolute error of every element is at most (hi - lo) / (2 · L)** (half a step;
  tested). Spectrograms and feature maps use 6 bits: for an 80 dB spectrogram that is
  0.63 dB, finer than a 64-colour heatmap can show. Each feature map (channel mean,
  every kept channel) is quantised on its own range, so faint maps keep their detail.
  With ``"delta": -2`` (arrays of two or more dimensions) the payload holds each row's
  difference from the row before it along that axis, modulo 2^bits: neighbouring
  mel bands and feature-map rows are alike, so the differences compress better. The
  delta is exact on the quantised values; it changes nothing in the error bound.
* ``f16`` — IEEE half floats (the embedding: relative error ≤ 2⁻¹¹).
* ``i16`` — exact small integers (channel indices).

Compression is zstd level 1: encoding sits on every tagging path, and on these blobs
higher levels (and xz) cost more time for the same size or hardly less (figures in
CHANGELOG.md).

Non-finite input is refused rather than stored. Decoders dispatch on the version byte:
version 1 blobs (``xz(payload)``, no delta) are still read.
"""

from __future__ import annotations

import json
import lzma
import struct
import threading
from typing import Any

import numpy as np
import zstandard

MAGIC = b"STFC"
VERSION = 2
_READABLE = (1, 2)
_KINDS = {"u8": np.uint8, "f16": np.float16, "i16": np.int16}


class CodecError(ValueError):
    pass


DEFAULT_BITS = 6
ZSTD_LEVEL = 1
DELTA_AXIS = -2


def max_abs_error(lo: float, hi: float, bits: int = DEFAULT_BITS) -> float:
    """The stated bound of the ``u8`` kind for an array spanning [lo, hi]."""
    return float((hi - lo) / (2 * (2**bits - 1)))


def encode(arrays: dict[str, tuple[str, np.ndarray]], bits: int = DEFAULT_BITS) -> bytes:
    """Encode ``{name: (kind, array)}`` into one blob."""
    blob = encode_many([arrays], bits)[0]
    if isinstance(blob, CodecError):
        raise blob
    return blob


def encode_many(items: list[dict[str, tuple[str, np.ndarray]]], bits: int = DEFAULT_BITS) -> list[bytes | CodecError]:
    """``encode`` for each of ``items`` (a batch's clips): the same blobs, byte for byte,
    with the quantisation done once for all arrays of a shape across the items (per
    call, numpy's overhead was most of the encoding's cost). An item that cannot be
    encoded gets its ``CodecError`` in its place; the others are not affected."""
    entries = [[(name, kind, np.asarray(arr)) for name, (kind, arr) in item.items()] for item in items]
    quantized, failed = _quantize_u8([((i, name), arr) for i, item in enumerate(entries)
                                      for name, kind, arr in item if kind == "u8"], bits)
    out: list[bytes | CodecError] = []
    for i, item in enumerate(entries):
        try:
            if i in failed:
                raise CodecError(failed[i])
            out.append(_blob(item, {name: quantized[(i, name)] for name, kind, _ in item if kind == "u8"}, bits))
        except CodecError as exc:
            out.append(exc)
    return out


def _blob(items: list[tuple[str, str, np.ndarray]], quantized: dict[str, tuple[np.ndarray, float, float]],
          bits: int) -> bytes:
    header, chunks = [], []
    for name, kind, arr in items:
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "kind": kind}
        if kind == "u8":
            q, lo, hi = quantized[name]
            entry.update(lo=lo, hi=hi, bits=bits)
            if q.ndim >= 2:
                entry["delta"] = DELTA_AXIS
            chunks.append(q.tobytes())
        elif kind in _KINDS:
            chunks.append(np.ascontiguousarray(arr, dtype=_KINDS[kind]).tobytes())
        else:
            raise CodecError(f"{name}: unknown kind {kind!r}")
        header.append(entry)
    head = json.dumps({"arrays": header}, separators=(",", ":")).encode()
    body = _compressor().compress(b"".join(chunks))
    return MAGIC + struct.pack("<BI", VERSION, len(head)) + head + body


Key = tuple[int, str]  # (item, array name)


def _quantize_u8(arrays: list[tuple[Key, np.ndarray]], bits: int
                 ) -> tuple[dict[Key, tuple[np.ndarray, float, float]], dict[int, str]]:
    """(key → (quantised array, with row deltas from two dimensions up; lo; hi),
    item → why it cannot be stored).

    Arrays of one shape (a tap's channel mean and its kept channels, and the same arrays
    of the other clips) are quantised together in a few array operations. Each keeps its
    own lo and hi."""
    by_shape: dict[tuple[int, ...], list[tuple[Key, np.ndarray]]] = {}
    for key, arr in arrays:
        by_shape.setdefault(arr.shape, []).append((key, arr))
    levels = 2**bits - 1
    out: dict[Key, tuple[np.ndarray, float, float]] = {}
    failed: dict[int, str] = {}
    for shape, group in by_shape.items():
        x = np.stack([arr for _, arr in group])
        flat = x.reshape(len(group), -1)
        # The extremes in the arrays' own type (float32 → float64 is exact, so these are
        # the float64 values); NaN and ±inf show up in them.
        if flat.shape[1]:
            lo, hi = flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
        else:
            lo = hi = np.zeros(len(group))
        finite = np.isfinite(lo) & np.isfinite(hi)
        if not finite.all():
            for j in np.flatnonzero(~finite):
                item, name = group[j][0]
                failed.setdefault(item, f"{name}: non-finite values cannot be stored")
            x = x.astype(np.float64)
            x[~finite], lo[~finite], hi[~finite] = 0.0, 0.0, 0.0  # quantised, then dropped
        scale = (hi - lo) / levels
        scale[scale == 0] = 1.0
        expand = (slice(None), *([None] * len(shape)))
        # Each step one pass over the stack, in place after the first (the conversion to
        # float64 and the subtraction are one): a batch's stacked arrays are large, and
        # every temporary the size of the stack costs a pass over fresh memory.
        x = np.subtract(x, lo[expand], dtype=np.float64)
        x /= scale[expand]
        # No clip to [0, levels]: every value is ≥ its array's lo, so x - lo ≥ 0 exactly,
        # and (x - lo) / scale exceeds levels by rounding only, which rint takes back.
        q = np.rint(x, out=x).astype(np.uint8)
        if len(shape) >= 2:
            # Each row's difference from the row before it; uint8 arithmetic wraps modulo
            # 256, and 2^bits divides 256.
            q[..., 1:, :] -= q[..., :-1, :].copy()
            q &= np.uint8(levels)
        out.update({key: (q[j], float(lo[j]), float(hi[j])) for j, (key, _) in enumerate(group)})
    return out, failed


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One compressor per thread (a compressor is not safe to share between threads)."""
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    compressor: zstandard.ZstdCompressor = _local.compressor
    return compressor


def decode(blob: bytes) -> dict[str, np.ndarray]:
    return {name: dequantize(entry, raw) for name, (entry, raw) in _read(blob).items()}


def dequantize(entry: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    if entry["kind"] == "u8":
        scale = float((entry["hi"] - entry["lo"]) / (2 ** entry["bits"] - 1)) or 1.0
        return (float(entry["lo"]) + raw.astype(np.float32) * np.float32(scale)).astype(np.float32)
    return raw.astype(np.float32 if entry["kind"] == "f16" else np.int16)


def decode_quantized(blob: bytes) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Entries with their stored (still quantised) arrays: the API ships these as they are."""
    return _read(blob)


def _read(blob: bytes) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    blob = bytes(blob)
    if blob[:4] != MAGIC or len(blob) < 9:
        raise CodecError("not a soundtag feature blob")
    version, head_len = struct.unpack("<BI", blob[4:9])
    if version not in _READABLE:
        raise CodecError(f"feature blob version {version} is newer than this soundtag reads ({VERSION})")
    header = json.loads(blob[9 : 9 + head_len])
    body = blob[9 + head_len :]
    try:
        if version == 1:
            payload = lzma.decompress(body)
        else:
            payload = zstandard.ZstdDecompressor().decompress(body)
    except (lzma.LZMAError, zstandard.ZstdError) as exc:
        raise CodecError(f"corrupt feature blob: {exc}") from None
    out, offset = {}, 0
    for entry in header["arrays"]:
        dtype = _KINDS[entry["kind"]]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        raw = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(entry["shape"])
        offset += count * np.dtype(dtype).itemsize
        if "delta" in entry:
            raw = np.cumsum(raw, axis=entry["delta"], dtype=np.uint8) & np.uint8(2 ** entry["bits"] - 1)
        out[entry["name"]] = (entry, raw)
    return out


# -- the fields of clip_features -------------------------------------------------

# Each field's arrays (for ``encode`` or, a batch's at once, ``encode_many``) and its encoder.

def spectrogram_arrays(spec: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    return {"spectrogram": ("u8", spec)}


def encode_spectrogram(spec: np.ndarray) -> bytes:
    return encode(spectrogram_arrays(spec))


def encode_feature_maps(maps: dict[str, dict[str, np.ndarray]]) -> bytes:
    return encode(feature_map_arrays(maps))


def feature_map_arrays(maps: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[str, np.ndarray]]:
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for tap, parts in maps.items():
        arrays[f"{tap}/mean"] = ("u8", parts["mean"])
        for j, channel in enumerate(parts["channels"]):
            arrays[f"{tap}/channel{j}"] = ("u8", channel)
        arrays[f"{tap}/channel_index"] = ("i16", parts["channel_index"])
    return arrays


def read_feature_maps(blob: bytes) -> dict[str, dict[str, Any]]:
    """Per tap ``{"mean": (entry, q), "channels": [(entry, q), …], "channel_index": array}``,
    the arrays still quantised (``dequantize`` turns one into floats)."""
    maps: dict[str, dict[str, Any]] = {}
    for name, (entry, raw) in _read(blob).items():
        tap, part = name.split("/", 1)
        parts = maps.setdefault(tap, {"channels": []})
        if part == "channel_index":
            parts[part] = raw
        elif part.startswith("channel"):
            parts["channels"].append((entry, raw))
        else:
            parts[part] = (entry, raw)
    return maps


def envelope_arrays(envelope: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    return {"envelope": ("u8", envelope)}


def encode_envelope(envelope: np.ndarray) -> bytes:
    return encode(envelope_arrays(envelope))


def embedding_arrays(embedding: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    return {"embedding": ("f16", embedding)}


def encode_embedding(embedding: np.ndarray) -> bytes:
    return encode(embedding_arrays(embedding))
