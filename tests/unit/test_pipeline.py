"""decode_payloads → run_model → finish_records: every payload comes back as exactly one
record, tagged or failed with a reason, whatever goes wrong with it."""

from __future__ import annotations

import pytest
import torch

from tagger.audio import sha256_hex
from tagger.pipeline import decode_chunk, decode_payloads, finish_records, run_model
from tagger.records import CLIP_ID_MAX, Payload, Status
from tests.helpers import audio_bytes


def test_each_payload_becomes_one_record_in_order(random_tagger, tmp_path):
    good = audio_bytes("WAV", 1.0, seed=1)
    on_disk = tmp_path / "clip.flac"
    on_disk.write_bytes(audio_bytes("FLAC", 2.0, seed=2))
    payloads = [
        Payload(data=good, source="a"),
        Payload(data=b"not audio at all", source="b"),
        Payload(data=b"", source="c"),
        Payload(data=good, source="d", clip_id="x" * (CLIP_ID_MAX + 1)),
        Payload(data=good, source="e", clip_id="known-bad", error="refused upstream"),
        Payload(data=b"", source="f", path=on_disk),
        Payload(data=b"", source="g", path=tmp_path / "missing.wav"),
    ]
    decoded = decode_payloads(payloads)
    assert [r.source for r in decoded.records] == list("abcdefg")
    assert [i for i, _ in decoded.audio] == [0, 5]  # only these decoded
    a, b, c, d, e, f, g = decoded.records
    assert a.clip_id == sha256_hex(good) == a.sha256 and a.duration_s == pytest.approx(1.0, abs=0.01)
    assert b.status == Status.FAILED and "not a readable" in b.error
    assert c.clip_id == "empty:c" and "empty" in c.error  # empty payloads share no hash id
    assert "invalid clip id" in d.error and d.clip_id == sha256_hex(good)
    assert e.clip_id == "known-bad" and e.error == "refused upstream"
    assert f.sha256 is not None and f.sample_rate == 44100 and f.duration_s == pytest.approx(2.0, abs=0.01)
    assert "cannot read" in g.error

    records = finish_records(run_model(random_tagger, decoded))
    assert [r.status for r in records] == [Status.TAGGED] + [Status.FAILED] * 4 + [Status.TAGGED, Status.FAILED]
    assert len(records[0].top3) == 3 and records[0].features and records[0].model_version == random_tagger.version


def test_a_model_error_fails_only_that_clip(random_tagger, monkeypatch):
    payloads = [Payload(data=audio_bytes("WAV", 1.0, seed=s), source=str(s)) for s in range(3)]
    real_tag = random_tagger.tag

    def tag(clips, specs=None):  # a model fault that only this clip triggers (fault injection)
        if any(c is second for c in clips):
            raise RuntimeError("this clip breaks the model")
        return real_tag(clips, specs)

    decoded = decode_payloads(payloads, featurize=random_tagger.features)
    assert decoded.features is not None and len(decoded.features) == 3
    second = decoded.audio[1][1]
    monkeypatch.setattr(random_tagger, "tag", tag)
    records = finish_records(run_model(random_tagger, decoded))
    assert [r.status for r in records] == [Status.TAGGED, Status.FAILED, Status.TAGGED]
    assert "tagging failed: RuntimeError: this clip breaks the model" in records[1].error


def test_features_that_cannot_be_stored_fail_only_that_clip(random_tagger):
    payloads = [Payload(data=audio_bytes("WAV", 1.0, seed=s), source=str(s)) for s in range(3)]
    tagged = run_model(random_tagger, decode_payloads(payloads, featurize=random_tagger.features))
    tagged.results[1].spectrogram[0, 0] = float("nan")  # what a broken model might hand on
    records = finish_records(tagged)
    assert [r.status for r in records] == [Status.TAGGED, Status.FAILED, Status.TAGGED]
    assert "storing features failed: CodecError" in records[1].error and records[1].features is None
    assert records[0].features and records[2].features


def test_a_clip_whose_summary_cannot_be_made_where_it_was_decoded_fails_alone(monkeypatch):
    # What a decoding process runs (``decode_for_model``), here in this process: a fault in
    # the envelope it computes for one clip fails that clip, not the batch (fault injection).
    from tagger import pipeline

    real = pipeline.waveform_envelope
    monkeypatch.setattr(pipeline, "waveform_envelope",
                        lambda s: real(s) if len(s) != 2 * 44100 else 1 / 0)
    payloads = [Payload(data=audio_bytes("WAV", seconds, seed=s), source=str(s))
                for s, seconds in enumerate((1.0, 2.0, 3.0))]
    decoded = decode_payloads(payloads, decode_elsewhere=lambda ps: decode_chunk(None, ps, max_duration_s=None))
    assert [r.status for r in decoded.records] == [Status.FAILED] * 3  # none tagged yet
    assert [i for i, _ in decoded.audio] == [0, 2] and decoded.features is not None and len(decoded.features) == 2
    assert "computing features failed: ZeroDivisionError" in decoded.records[1].error


def test_decoding_a_chunk_here_leaves_the_callers_thread_count_alone():
    # A training run or notebook that decodes keeps its own count (a changed count changes
    # float sums: training would not resume exactly).
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        decode_chunk(None, [Payload(data=audio_bytes("WAV", 1.0), source="x")], max_duration_s=None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
