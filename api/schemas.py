"""Request and response models: what /docs describes is what the API answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tagger.verdicts import Verdict


class TagOut(BaseModel):
    label: str
    confidence: float


class CustomLabel(BaseModel):
    label_set: str
    label: str = Field(description="one of the set's labels, or 'unknown' when none fits")
    confidence: float


class ClipOut(BaseModel):
    clip_id: str
    source: str
    status: str = Field(description="'tagged' or 'failed'")
    error: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = Field(None, description="of the original file")
    channels: int | None = None
    sha256: str | None = None
    model_version: str | None = None
    received_at: datetime | None = None
    tagged_at: datetime | None = None
    verdict: Verdict | None = Field(None, description="'label' (one of the labels fits), 'unknown' (a sound none "
                                                      "fits; top3 still shown) or 'silence' (nothing audible); "
                                                      "null for failed clips")
    top3: list[TagOut] = []
    custom: list[CustomLabel] = Field([], description="the clip's label in each of the users' label sets")


class ClipList(BaseModel):
    items: list[ClipOut]
    next_cursor: str | None = None


class SimilarClip(ClipOut):
    score: float = Field(description="cosine similarity of the embeddings, 1 for the same sound")


class SimilarList(BaseModel):
    items: list[SimilarClip] = Field(description="nearest first")


class SearchResult(SimilarList):
    top3: list[TagOut] = Field(description="the searched-with file's own top 3 (it is not stored)")
    verdict: Verdict


class LabelSetOut(BaseModel):
    name: str
    version: int
    created_at: datetime | None = None
    model_version: str = Field(description="the model whose embeddings it was taught on")
    labels: list[str]
    examples: dict[str, int] = Field(description="examples per label ('background': none of these)")
    cv_accuracy: float = Field(description="cross-validated accuracy over all examples")
    cv_accuracy_by_label: dict[str, float]


class LabelSetList(BaseModel):
    items: list[LabelSetOut]


class TeachRequest(BaseModel):
    label: str = Field(min_length=1, max_length=64, description="the label these clips are examples of")
    clip_ids: list[str] = Field(min_length=1, max_length=1000)


class LabelCount(BaseModel):
    label: str
    top1: int = Field(description="clips whose top label this is")
    top3: int = Field(description="clips with this label among their top 3")


class LabelList(BaseModel):
    items: list[LabelCount]


class PackedArray(BaseModel):
    """A quantised array: value = lo + byte · (hi - lo) / levels, bytes base64 row-major."""

    shape: list[int]
    lo: float
    hi: float
    levels: int
    data: str


class FeatureTap(BaseModel):
    mean: PackedArray
    channels: list[PackedArray]
    channel_index: list[int]


class WindowOut(BaseModel):
    start_s: float
    end_s: float
    top3: list[TagOut]
    verdict: Verdict | None = None


class EventOut(BaseModel):
    start_s: float
    end_s: float
    label: str
    confidence: float = Field(description="the mean top-1 confidence of the event's windows")


class EventList(BaseModel):
    items: list[EventOut]


class Axes(BaseModel):
    """What the pictures' rows and columns are, so a page can label them."""

    frame_s: float = Field(description="seconds between spectrogram columns")
    f_min: float = Field(description="Hz at the bottom edge of the spectrogram")
    f_max: float = Field(description="Hz at the top edge of the spectrogram")
    mel_scale: str = Field(description="mel formula of the rows ('htk': 2595·log10(1 + f/700))")
    spectrogram_unit: str
    feature_map_span_s: float = Field(
        description="seconds of model input across a feature map's full width: the window for a clip "
                    "no longer than one (a short clip is repeated to fill it), else the clip (at most its "
                    "first 60 s)")


class Visualization(BaseModel):
    clip_id: str
    top3: list[TagOut]
    duration_s: float | None
    axes: Axes
    spectrogram: PackedArray
    waveform: PackedArray = Field(description="(2, points): per-bucket min and max")
    feature_maps: dict[str, FeatureTap]
    verdict: Verdict | None = None
    timeline: list[WindowOut] = []
    events: list[EventOut] = []


class Failure(BaseModel):
    clip_id: str
    source: str
    error: str | None
    received_at: datetime | None


class CollectionSummary(BaseModel):
    status_counts: dict[str, int] = Field(description="clips per status ('tagged', 'failed')")
    verdict_counts: dict[str, int] = Field(description="tagged clips per verdict ('label', 'unknown', 'silence')")
    confidence_bins: list[float] = Field(description="edges of the confidence histogram's bins, 0 to 1")
    confidence_counts: list[int] = Field(description="tagged clips per bin of top-1 confidence")
    failures: list[Failure] = Field(description="the most recently received failed clips, newest first")


class UploadResult(BaseModel):
    items: list[ClipOut]


class InferenceRequest(BaseModel):
    data: str = Field(description="the audio file's bytes, base64-encoded (WAV, FLAC, Ogg, AIFF, MP3, M4A/AAC, "
                                  "WebM/Opus); line breaks are ignored")


class Prediction(BaseModel):
    model_config = {"populate_by_name": True}

    class_: str = Field(alias="class")
    confidence: float


class ArrayOut(BaseModel):
    shape: list[int]
    values: list


class WaveformOut(BaseModel):
    values: list[float]
    sample_rate: int
    duration: float


class InferenceResponse(BaseModel):
    predictions: list[Prediction]
    visualization: dict[str, ArrayOut]
    input_spectrogram: ArrayOut
    waveform: WaveformOut


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
