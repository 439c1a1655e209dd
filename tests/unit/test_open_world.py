"""Verdicts (silence, unknown) and events, on the core alone."""

import numpy as np
import pytest

from tagger.audio import SAMPLE_RATE, DecodedAudio
from tagger.events import Window, detect_events, events_as
from tagger.features import clip_log_mel
from tagger.verdicts import SILENCE_GATE_DBFS, OpenSet, Verdict, frame_levels_dbfs
from training.open_set import silence_set

RNG = np.random.default_rng(7)
FRAME_S = 512 / SAMPLE_RATE


def _levels(x: np.ndarray) -> np.ndarray:
    return frame_levels_dbfs(clip_log_mel(x.astype(np.float32))[0, 0])


@pytest.mark.parametrize("dbfs", [-20.0, -40.0, -60.0])
def test_frame_levels_read_the_rms_level_in_dbfs(dbfs):
    noise = RNG.standard_normal(SAMPLE_RATE * 2) * 10 ** (dbfs / 20)
    assert np.median(_levels(noise)) == pytest.approx(dbfs, abs=1.0)
    sine = np.sin(2 * np.pi * 1000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE) * 10 ** (dbfs / 20)
    assert np.median(_levels(sine)) == pytest.approx(dbfs - 3.01, abs=1.0)


def test_the_silence_set_is_below_the_gate_and_a_quiet_sound_is_not():
    for source, clips in silence_set().items():
        for x in clips:
            assert _levels(x).max() < SILENCE_GATE_DBFS, source
    tone = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE) * 10 ** (-50 / 20)
    assert _levels(tone).max() > SILENCE_GATE_DBFS


def test_silence_and_a_sound_through_the_shipped_model(shipped_tagger):
    quiet = silence_set()
    clips = [quiet["digital silence"][0], quiet["hiss at -70 dBFS"][0], quiet["room tone"][0]]
    tone = (np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE * 3) / SAMPLE_RATE) * 0.3).astype(np.float32)
    results = shipped_tagger.tag([DecodedAudio(x, SAMPLE_RATE, 1) for x in [*clips, tone]])
    assert [r.verdict for r in results[:3]] == [Verdict.SILENCE] * 3
    assert all(r.events == [] for r in results[:3])
    assert results[3].verdict != Verdict.SILENCE and len(results[3].top3) == 3


def test_a_long_recordings_silent_windows_are_silence_and_not_events(shipped_tagger):
    x = np.zeros(SAMPLE_RATE * 20, np.float32)
    x[int(SAMPLE_RATE * 10.5) : int(SAMPLE_RATE * 13.5)] = RNG.standard_normal(SAMPLE_RATE * 3) * 0.2
    result = shipped_tagger.tag([DecodedAudio(x, SAMPLE_RATE, 1)])[0]
    verdicts = [w["verdict"] for w in result.timeline]
    assert verdicts[0] == "silence" and verdicts[-1] == "silence" and "silence" in verdicts
    assert result.verdict != "silence"
    for e in result.events:
        assert 10.4 <= e["start_s"] and e["end_s"] <= 13.6  # placed to a frame, not to a 2.5 s window hop


def test_unknown_when_far_from_every_prototype_or_unsure():
    protos = np.eye(4, 8, dtype=np.float32)
    open_set = OpenSet(min_confidence=0.5, prototypes=protos, min_similarity=0.8)
    probs = np.array([0.9, 0.05, 0.05, 0.0])
    assert open_set.decide(probs, -10.0, embedding=np.eye(8)[0] * 3) == Verdict.LABEL
    assert open_set.decide(probs, -10.0, embedding=np.eye(8)[6]) == Verdict.UNKNOWN  # far from all four
    assert open_set.decide(np.array([0.4, 0.3, 0.3, 0.0]), -10.0, np.eye(8)[0]) == Verdict.UNKNOWN  # torn
    assert open_set.decide(probs, -75.0, np.eye(8)[0]) == Verdict.SILENCE
    assert open_set.decide(probs, float("nan")) == Verdict.SILENCE
    fitted = OpenSet.from_metrics({"open_set": {"min_confidence": 0.5, "min_similarity": 0.8,
                                                "prototypes": protos.tolist()}})
    assert fitted.similarity(np.eye(8)[1]) == pytest.approx(1.0) and fitted.min_similarity == 0.8
    assert OpenSet.from_metrics({}).decide(probs, -10.0, np.eye(8)[6]) == Verdict.LABEL  # nothing fitted


def test_neighbouring_windows_merge_and_onsets_come_from_the_frames():
    levels = np.full(int(20 / FRAME_S), -50.0)
    levels[int(3.2 / FRAME_S) : int(9.0 / FRAME_S)] = -10.0  # a dog from 3.2 s to 9 s
    levels[int(13.0 / FRAME_S) : int(16.0 / FRAME_S)] = -10.0  # a bird from 13 s
    w = [Window(0, 5, "label", "dog", 0.8), Window(2.5, 7.5, "label", "dog", 0.9), Window(5, 10, "label", "dog", 0.7),
         Window(7.5, 12.5, "unknown", "rain", 0.2), Window(10, 15, "label", "bird", 0.6),
         Window(12.5, 17.5, "label", "bird", 0.8), Window(15, 20, "silence", "door", 0.1)]
    events = detect_events(w, levels, FRAME_S)
    assert [e["label"] for e in events] == ["dog", "bird"]
    assert events[0]["start_s"] == pytest.approx(3.2, abs=0.05) and events[0]["end_s"] == pytest.approx(9.0, abs=0.05)
    assert events[0]["confidence"] == pytest.approx(0.8)
    assert events[1]["start_s"] == pytest.approx(13.0, abs=0.05) and events[1]["end_s"] == pytest.approx(16.0, abs=0.05)


def test_neighbouring_events_of_two_labels_do_not_overlap():
    levels = np.full(int(10 / FRAME_S), -10.0)  # loud throughout
    w = [Window(0, 5, "label", "dog", 0.8), Window(2.5, 7.5, "label", "cat", 0.9), Window(5, 10, "label", "cat", 0.9)]
    dog, cat = detect_events(w, levels, FRAME_S)
    assert dog["end_s"] <= cat["start_s"] and dog["end_s"] == pytest.approx(3.75, abs=0.05)


def test_export_formats():
    events = [{"start_s": 1.5, "end_s": 4.25, "label": "dog", "confidence": 0.91}]
    assert events_as(events, "csv") == "start_s,end_s,label,confidence\n1.5,4.25,dog,0.91\n"
    assert events_as(events, "audacity") == "1.500000\t4.250000\tdog\n"
    raven = events_as(events, "raven").splitlines()
    assert raven[0].split("\t")[:5] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)"]
    assert raven[1].split("\t")[3:5] == ["1.500000", "4.250000"] and "dog" in raven[1]
    assert events_as([], "csv") == "start_s,end_s,label,confidence\n"
    with pytest.raises(ValueError, match="unknown events format"):
        events_as(events, "xml")


def test_events_command_on_a_file_and_on_a_missing_clip(tmp_path):
    import os
    import subprocess
    import sys

    from tagger.config import SAMPLES_DIR

    sample = sorted(SAMPLES_DIR.glob("*.ogg"))[0]
    env = {**os.environ, "SOUNDTAG_DATABASE_URL": f"sqlite:///{tmp_path}/none.db"}
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "events", str(sample), "--format", "audacity",
                          "--out", str(tmp_path / "labels.txt")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    start, end, label = (tmp_path / "labels.txt").read_text().splitlines()[0].split("\t")
    assert float(start) >= 0 and float(end) <= 5.01 and label
    missing = subprocess.run([sys.executable, "-m", "deploy.cli", "events", "no-such-clip"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no stored clip and no file named 'no-such-clip'" in missing.stderr
