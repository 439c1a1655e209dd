"""Inference engines: ONNX Runtime (the CPU default) answers as eager PyTorch does."""

import numpy as np
import pytest
import torch

from tagger.audio import DecodedAudio
from tagger.engine import OnnxRuntimeEngine, TorchEngine, default_threads, make_engine
from tagger.inference import Tagger
from tagger.network import FEATURE_TAPS


def _clips(seconds: list[float]) -> list[DecodedAudio]:
    rng = np.random.default_rng(3)
    return [DecodedAudio((0.1 * rng.standard_normal(int(s * 44100))).astype(np.float32), 44100, 1) for s in seconds]


def test_auto_is_onnxruntime_on_cpu_with_the_default_threads(random_tagger):
    assert isinstance(random_tagger.engine, OnnxRuntimeEngine)
    assert random_tagger.threads == default_threads() >= 1


def test_onnxruntime_answers_as_eager_fp32_torch(random_checkpoint, monkeypatch):
    # The reference is eager fp32 on every CPU: on one with AVX-512 BF16 the torch engine
    # would otherwise run bf16 autocast.
    monkeypatch.setattr("tagger.engine.inference_dtype", lambda device: None)
    onnx = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime")
    eager = Tagger.load(random_checkpoint, device="cpu", engine="torch")
    assert eager.engine.name == "torch (fp32)"
    clips = _clips([5.0, 1.3, 12.0])  # one window, a short clip repeated, a long clip with windows
    for a, b in zip(onnx.tag(clips), eager.tag(clips), strict=True):
        assert [label for label, _ in a.top3] == [label for label, _ in b.top3]
        assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
        assert np.abs(a.embedding - b.embedding).max() < 1e-3
        assert a.feature_maps.keys() == b.feature_maps.keys() == set(FEATURE_TAPS)
        for tap in FEATURE_TAPS:
            assert a.feature_maps[tap]["mean"].shape == b.feature_maps[tap]["mean"].shape
            assert np.abs(a.feature_maps[tap]["mean"] - b.feature_maps[tap]["mean"]).max() < 1e-3
            # The summaries ONNX Runtime computes in its graph keep the same channels.
            assert np.array_equal(a.feature_maps[tap]["channel_index"], b.feature_maps[tap]["channel_index"])
            assert a.feature_maps[tap]["channel_index"].dtype == np.int16
            assert np.abs(a.feature_maps[tap]["channels"] - b.feature_maps[tap]["channels"]).max() < 1e-3
        assert [w["start_s"] for w in a.timeline] == [w["start_s"] for w in b.timeline]


def test_the_engine_takes_any_batch_and_length(random_tagger):
    for batch, frames in ((1, 431), (3, 100), (2, 2000)):
        logits, maps, embedding = random_tagger.engine(torch.zeros(batch, 1, 64, frames), True)
        assert logits.shape == (batch, 50) and embedding.shape[0] == batch
        assert maps["stem"].shape[0] == batch and maps["stem"].shape[-1] == (frames + 3) // 4


def test_the_summaries_are_the_taps_reduced(random_tagger):
    """What the graph returns per tap is the channel mean and the strongest channels of the
    very taps it returns whole, strongest first; the logits alone skip the taps."""
    x = torch.randn(3, 1, 64, 431) * 20 - 40
    logits, maps, embedding = random_tagger.engine(x, True)
    s_logits, summaries, s_embedding = random_tagger.engine.summarized(x)
    assert torch.equal(logits, s_logits) and torch.equal(embedding, s_embedding)
    assert torch.equal(random_tagger.engine(x, False), logits)
    for tap in FEATURE_TAPS:
        fm = maps[tap].numpy()
        for j in range(3):
            index = summaries[tap]["channel_index"][j]
            strengths = fm[j].mean(axis=(1, 2))
            assert len(index) == 4 and np.all(np.diff(strengths[index]) <= 1e-6)
            assert strengths[index].min() >= np.sort(strengths)[-4] - 1e-6
            assert np.array_equal(summaries[tap]["channels"][j], fm[j, index])
            assert np.abs(summaries[tap]["mean"][j] - fm[j].mean(axis=0)).max() < 1e-5


def test_a_cached_export_of_another_layout_is_exported_again(random_checkpoint, tmp_path):
    import io

    import onnx

    tagger = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    graph = onnx.load_from_string(cached.read_bytes())
    del graph.graph.output[len(FEATURE_TAPS) + 2 :]  # as exported before the summaries were in the graph
    buffer = io.BytesIO()
    onnx.save(graph, buffer)
    cached.write_bytes(buffer.getvalue())
    again = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    clips = _clips([5.0])
    assert again.tag(clips)[0].feature_maps.keys() == tagger.tag(clips)[0].feature_maps.keys()
    assert len(onnx.load_from_string(cached.read_bytes()).graph.output) > len(FEATURE_TAPS) + 2  # written anew


def test_the_export_of_a_checkpoint_file_is_cached(random_checkpoint, tmp_path, monkeypatch):
    first = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    cached = list(tmp_path.glob("*.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 100_000

    def no_export(model):
        raise AssertionError("exported again although the export is cached")

    monkeypatch.setattr("tagger.engine.export_onnx", no_export)
    again = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    clips = _clips([5.0, 2.0])
    for a, b in zip(first.tag(clips), again.tag(clips), strict=True):
        assert np.array_equal(a.probabilities, b.probabilities)


def test_a_damaged_or_unwritable_export_cache_only_costs_an_export(random_checkpoint, tmp_path):
    Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    cached.write_bytes(b"not an onnx model")
    tagger = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=tmp_path)
    assert isinstance(tagger.engine, OnnxRuntimeEngine) and cached.stat().st_size > 100_000  # written anew

    blocked = tmp_path / "a-file"
    blocked.write_text("a cache folder cannot be made under a file")
    tagger = Tagger.load(random_checkpoint, device="cpu", engine="onnxruntime", export_cache=blocked / "onnx")
    assert isinstance(tagger.engine, OnnxRuntimeEngine)


def test_the_commands_keep_the_export_under_the_cache_setting(random_checkpoint, tmp_path, monkeypatch):
    from tagger.config import Settings
    from tagger.startup import load_tagger

    monkeypatch.setenv("SOUNDTAG_MODEL_PATH", str(random_checkpoint))
    monkeypatch.setenv("SOUNDTAG_TEST_ALLOW_UNTRAINED", "1")
    monkeypatch.setenv("SOUNDTAG_CACHE_DIR", str(tmp_path))
    load_tagger(Settings())
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1


def test_a_model_built_in_memory_is_not_cached(random_tagger, tmp_path):
    make_engine(random_tagger.model, torch.device("cpu"), "onnxruntime", 1, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_engine_choice(random_tagger):
    model, cpu = random_tagger.model, torch.device("cpu")
    assert isinstance(make_engine(model, cpu, "torch", 1), TorchEngine)
    assert isinstance(make_engine(model, cpu, "onnxruntime", 1), OnnxRuntimeEngine)
    with pytest.raises(ValueError, match="CPU only"):
        make_engine(model, torch.device("cuda"), "onnxruntime", 1)


def test_tagging_leaves_the_callers_thread_count_alone(random_checkpoint):
    """PyTorch's thread count is per thread: a training loop or notebook that tags a clip
    keeps its own (a changed count changes float sums, and training would not be reproducible)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for engine in ("torch", "onnxruntime"):
            tagger = Tagger.load(random_checkpoint, device="cpu", engine=engine, threads=1)
            tagger.tag(_clips([2.0]))
            tagger.layer_maps(_clips([2.0])[0])
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
