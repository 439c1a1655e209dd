"""The feature codec round-trips within its stated error bound and is compact."""

import json

import numpy as np
import pytest

from tagger import codec


def test_u8_round_trip_stays_within_the_stated_bound():
    rng = np.random.default_rng(0)
    for lo, hi, shape in [(-80.0, 0.0, (128, 431)), (0.0, 7.5, (4, 32, 108)), (-1e-3, 1e-3, (7,))]:
        x = rng.uniform(lo, hi, size=shape).astype(np.float32)
        out = codec.decode(codec.encode({"x": ("u8", x)}))["x"]
        assert out.shape == x.shape
        bound = codec.max_abs_error(float(x.min()), float(x.max()))
        assert np.abs(out - x).max() <= bound * 1.0001 + 1e-6


def test_constant_array_round_trips_exactly():
    x = np.full((3, 4), -80.0, dtype=np.float32)
    assert np.array_equal(codec.decode(codec.encode({"x": ("u8", x)}))["x"], x)


def test_feature_map_round_trip():
    rng = np.random.default_rng(1)
    maps = {tap: {"mean": rng.random((h, w)).astype(np.float32),
                  "channels": rng.random((4, h, w)).astype(np.float32) * 5,
                  "channel_index": np.array([3, 1, 4, 1], dtype=np.int16)}
            for tap, (h, w) in {"stem": (32, 108), "stage4": (4, 14)}.items()}
    out = codec.read_feature_maps(codec.encode_feature_maps(maps))
    for tap, parts in maps.items():
        assert np.array_equal(out[tap]["channel_index"], parts["channel_index"])
        for j in range(4):
            ch = parts["channels"][j]
            got = codec.dequantize(*out[tap]["channels"][j])
            assert np.abs(got - ch).max() <= codec.max_abs_error(ch.min(), ch.max()) + 1e-6
        assert np.abs(codec.dequantize(*out[tap]["mean"]) - parts["mean"]).max() <= codec.max_abs_error(
            parts["mean"].min(), parts["mean"].max()) + 1e-6


def test_embedding_is_half_precision():
    e = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    out = codec.decode(codec.encode_embedding(e))["embedding"]
    assert np.allclose(out, e, rtol=2**-10, atol=1e-4)


def test_non_finite_is_refused_and_garbage_is_not_a_blob():
    with pytest.raises(codec.CodecError):
        codec.encode({"x": ("u8", np.array([1.0, np.nan]))})
    with pytest.raises(codec.CodecError):
        codec.decode(b"definitely not a blob")


def test_delta_coding_round_trips_at_every_bit_depth():
    rng = np.random.default_rng(5)
    x = rng.uniform(-3.0, 9.0, size=(2, 17, 33)).astype(np.float32)
    for bits in (1, 4, 6, 8):
        blob = codec.encode({"x": ("u8", x)}, bits=bits)
        entry, q = codec.decode_quantized(blob)["x"]
        assert entry["delta"] == codec.DELTA_AXIS and q.max() <= 2**bits - 1
        out = codec.decode(blob)["x"]
        assert np.abs(out - x).max() <= codec.max_abs_error(float(x.min()), float(x.max()), bits) * 1.0001 + 1e-6


def test_version_1_blobs_are_still_read():
    """Rows written before format 2 (xz, no delta) decode unchanged."""
    import lzma
    import struct

    q = np.arange(12, dtype=np.uint8).reshape(3, 4)
    head = json.dumps({"arrays": [{"name": "x", "shape": [3, 4], "kind": "u8", "lo": 0.0, "hi": 63.0,
                                   "bits": 6}]}).encode()
    blob = codec.MAGIC + struct.pack("<BI", 1, len(head)) + head + lzma.compress(q.tobytes())
    assert np.array_equal(codec.decode(blob)["x"], q.astype(np.float32))


def test_future_versions_are_refused_clearly():
    blob = bytearray(codec.encode_embedding(np.zeros(4)))
    blob[4] = 99
    with pytest.raises(codec.CodecError, match="version 99"):
        codec.decode(bytes(blob))


def test_stored_features_are_25x_smaller_than_the_json_payload(random_tagger):
    """A real ESC-50-like 5 s clip through the real tagger: stored bytes vs /inference JSON."""
    from api.original_response import inference_response
    from tagger.audio import decode_bytes
    from tagger.pipeline import features_row
    from tests.helpers import audio_bytes

    clip = decode_bytes(audio_bytes("WAV", seconds=5.0, seed=3))
    result = random_tagger.tag([clip])[0]
    row = features_row(result)
    stored = sum(len(v) for k, v in row.items() if isinstance(v, bytes))
    payload = len(json.dumps(inference_response(clip, result, random_tagger.layer_maps(clip))))
    assert payload / stored >= 25, (stored, payload)


def test_a_batch_encodes_to_the_same_blobs_as_one_clip_at_a_time():
    rng = np.random.default_rng(5)
    items = [{"spectrogram": ("u8", rng.normal(-40, 15, (64, frames)).astype(np.float32)),
              "mean": ("u8", rng.random((16, 54)).astype(np.float32)),
              "constant": ("u8", np.full((3, 2), 7.0, np.float32)),
              "index": ("i16", np.arange(4, dtype=np.int16)),
              "embedding": ("f16", rng.random(8).astype(np.float32))}
             for frames in (431, 431, 87, 431)]  # equal shapes share one quantisation
    assert codec.encode_many(items) == [codec.encode(item) for item in items]


def test_a_clip_that_cannot_be_encoded_fails_alone_in_its_batch():
    good = {"x": ("u8", np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))}
    bad = {"x": ("u8", np.array([[0.0, np.nan, 1.0, 2.0]] * 3, dtype=np.float32))}
    out = codec.encode_many([good, bad, good])
    assert out[0] == out[2] == codec.encode(good)
    assert isinstance(out[1], codec.CodecError) and "non-finite" in str(out[1])
