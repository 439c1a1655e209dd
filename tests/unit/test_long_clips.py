"""A recording longer than one window is tagged as a stream: from its held samples, or
decoded again from its file or bytes, with the same answer either way."""

import numpy as np
import soundfile as sf

from tagger.audio import decode_bytes, decode_file
from tagger.features import HOP_LENGTH, SAMPLE_RATE, window_starts
from tagger.inference import HELD_SAMPLES, waveform_envelope
from tagger.long_clips import MAX_STORED_COLUMNS, EnvelopeStream
from tagger.pipeline import decode_payloads, finish_records, run_model
from tagger.records import Payload, Status
from tests.helpers import make_tone


def _write(path, seconds, sr=16_000, seed=3):
    tone = make_tone(seconds, sr, 1, 300.0, seed)
    tone[int(0.4 * len(tone)) : int(0.5 * len(tone))] = 0.0  # a stretch of digital silence inside
    sf.write(path, tone, sr)
    return path


def test_a_recording_too_long_to_hold_is_decoded_again_with_the_same_answer(tmp_path, random_tagger):
    path = _write(tmp_path / "long.wav", 100.0)
    held = decode_file(path)
    partial = decode_file(path, hold_samples=HELD_SAMPLES)
    assert held.held_whole and not partial.held_whole
    assert len(partial.samples) == HELD_SAMPLES and partial.num_samples == held.num_samples
    assert partial.source == str(path) and partial.last_sound == held.num_samples
    from_memory, from_file = random_tagger.tag([held, partial])
    assert np.allclose(from_memory.probabilities, from_file.probabilities, atol=1e-5)
    # The same frames, from blocks cut elsewhere: equal to float rounding.
    assert np.allclose(from_memory.spectrogram, from_file.spectrogram, atol=1e-3)
    assert np.array_equal(from_memory.envelope, from_file.envelope)
    assert [(w["start_s"], w["end_s"], w["verdict"]) for w in from_memory.timeline] == [
        (w["start_s"], w["end_s"], w["verdict"]) for w in from_file.timeline
    ]
    assert [(e["start_s"], e["end_s"], e["label"]) for e in from_memory.events] == [
        (e["start_s"], e["end_s"], e["label"]) for e in from_file.events
    ]
    frames = 1 + held.num_samples // HOP_LENGTH
    assert len(from_file.timeline) == len(window_starts(frames))
    assert from_file.timeline[-1]["end_s"] == round(held.duration_s, 3)
    # Pooled in time to the page's width; the envelope covers the whole recording.
    assert from_file.spectrogram.shape == (64, -(-frames // 3))
    assert np.allclose(from_file.envelope, waveform_envelope(held.samples))


def test_bytes_too_long_to_hold_are_decoded_again_from_the_bytes(random_tagger):
    import io

    buf = io.BytesIO()
    sf.write(buf, make_tone(70.0, 8_000, 1, 500.0, 1), 8_000, format="FLAC")
    clip = decode_bytes(buf.getvalue(), hold_samples=HELD_SAMPLES)
    assert not clip.held_whole and isinstance(clip.source, bytes)
    result = random_tagger.tag([clip])[0]
    assert len(result.timeline) == len(window_starts(1 + clip.num_samples // HOP_LENGTH))
    assert result.spectrogram.shape[-1] <= MAX_STORED_COLUMNS and len(result.top3) == 3


def test_a_file_that_changes_between_its_two_readings_fails_alone_saying_so(tmp_path, random_tagger):
    changed = _write(tmp_path / "changed.wav", 90.0)
    steady = _write(tmp_path / "steady.wav", 3.0, seed=4)
    decoded = decode_payloads([Payload(data=b"", source=str(p), path=p) for p in (changed, steady)])
    _write(changed, 80.0)  # rewritten while it waits for the model
    records = finish_records(run_model(random_tagger, decoded))
    assert records[0].status == Status.FAILED and "changed while it was read" in (records[0].error or "")
    assert records[1].status == Status.TAGGED


def test_a_clip_whose_sound_ends_within_a_window_is_one_window_however_long_its_silence(tmp_path, random_tagger):
    tone = np.zeros(90 * SAMPLE_RATE, np.float32)
    tone[: 3 * SAMPLE_RATE] = make_tone(3.0, SAMPLE_RATE)[:, 0]
    sf.write(tmp_path / "tail.wav", tone, SAMPLE_RATE)
    clip = decode_file(tmp_path / "tail.wav", hold_samples=HELD_SAMPLES)
    assert not clip.held_whole and clip.last_sound <= 3 * SAMPLE_RATE
    assert random_tagger.tag([clip])[0].timeline == []  # tagged as its 3 s of sound, repeated


def test_the_envelope_of_a_stream_equals_the_envelope_of_the_whole():
    x = np.random.default_rng(0).standard_normal(1_000_003).astype(np.float32)
    stream, at = EnvelopeStream(len(x), 1000), 0
    for size in (1, 999, 1000, 77_777, 500_000):
        stream.push(x[at : at + size])
        at += size
    stream.push(x[at:])
    assert np.array_equal(stream.finish(), waveform_envelope(x))
