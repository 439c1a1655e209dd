"""Database rows and stored blobs → response models."""

from __future__ import annotations

import base64

from api.schemas import Axes, ClipOut, CustomLabel, EventOut, FeatureTap, PackedArray, TagOut, Visualization, WindowOut
from tagger import codec
from tagger.features import F_MAX, F_MIN, HOP_LENGTH, SAMPLE_RATE
from tagger.inference import feature_map_span_s
from tagger.records import ClipRecord
from tagger.tables import ClipFeatures
from tagger.verdicts import Verdict


def clip_out(rec: ClipRecord) -> ClipOut:
    return ClipOut(
        clip_id=rec.clip_id, source=rec.source, status=rec.status, error=rec.error, duration_s=rec.duration_s,
        sample_rate=rec.sample_rate, channels=rec.channels, sha256=rec.sha256, model_version=rec.model_version,
        received_at=rec.received_at, tagged_at=rec.tagged_at, verdict=Verdict(rec.verdict) if rec.verdict else None,
        top3=[TagOut(label=label, confidence=conf) for label, conf in rec.top3],
        custom=[CustomLabel(**c) for c in rec.custom],
    )


def _packed(entry: dict, raw) -> PackedArray:
    return PackedArray(shape=list(raw.shape), lo=entry["lo"], hi=entry["hi"], levels=2 ** entry["bits"] - 1,
                       data=base64.b64encode(raw.tobytes()).decode())


def _frame_s(duration_s: float, columns: int) -> float:
    """Seconds per stored spectrogram column: a frame's hop, times the frames a long
    recording's columns were max-pooled over (``tagger.long_clips``)."""
    frames = 1 + round(duration_s * SAMPLE_RATE) // HOP_LENGTH
    return HOP_LENGTH / SAMPLE_RATE * max(1, round(frames / max(columns, 1)))


def visualization(clip: ClipRecord, features: ClipFeatures) -> Visualization:
    spec_entry, spec = codec.decode_quantized(features.spectrogram)["spectrogram"]
    wave_entry, wave = codec.decode_quantized(features.waveform)["envelope"]
    taps = {
        tap: FeatureTap(mean=_packed(*parts["mean"]), channels=[_packed(*c) for c in parts["channels"]],
                        channel_index=[int(v) for v in parts["channel_index"]])
        for tap, parts in codec.read_feature_maps(features.feature_maps).items()
    }
    return Visualization(
        clip_id=clip.clip_id,
        top3=[TagOut(label=label, confidence=conf) for label, conf in clip.top3],
        duration_s=clip.duration_s,
        axes=Axes(frame_s=_frame_s(clip.duration_s or 0.0, spec.shape[-1]), f_min=F_MIN, f_max=F_MAX, mel_scale="htk",
                  spectrogram_unit="dB (mel power, reference 1)",
                  feature_map_span_s=feature_map_span_s(clip.duration_s or 0.0)),
        spectrogram=_packed(spec_entry, spec),
        waveform=_packed(wave_entry, wave),
        feature_maps=taps,
        verdict=Verdict(clip.verdict) if clip.verdict else None,
        timeline=[WindowOut(**w) for w in (features.timeline or [])],
        events=[EventOut(**e) for e in (features.events or [])],
    )
