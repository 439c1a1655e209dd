"""A clip as every layer passes it around: received (``Payload``), then decoded, tagged or
failed, stored, served (``ClipRecord``).

One place for these types, the statuses and the id limit, so the decoder, the model core
and the stream never need the database layer (or torch) to describe a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

CLIP_ID_MAX = 255  # characters; the clips table's primary key is this wide


class Status(StrEnum):
    TAGGED = "tagged"
    FAILED = "failed"


@dataclass
class Payload:
    """One clip as it arrives, before decoding: its bytes or its file, and where it came from."""

    data: bytes  # the file's bytes, or b"" when ``path`` is given
    source: str
    clip_id: str | None = None  # None: the content hash becomes the id
    error: str | None = None  # set by the caller when the payload is already known bad
    path: Path | None = None  # decode from disk in blocks instead of from ``data``
    sha256: str | None = None  # of the bytes or the file, when the caller has it (hashed once)


@dataclass
class ClipRecord:
    clip_id: str
    source: str
    status: Status
    sha256: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    error: str | None = None
    model_version: str | None = None
    top3: list[tuple[str, float]] = field(default_factory=list)
    verdict: str | None = None  # label, unknown or silence once tagged (tagger.verdicts)
    features: dict[str, Any] | None = None  # the clip_features columns (encoded blobs, timeline) to store
    custom: list[dict[str, Any]] = field(default_factory=list)  # [{label_set, label, confidence}] (label sets)
    received_at: datetime | None = None  # set by the database
    tagged_at: datetime | None = None  # set by the database


def clip_id_problem(clip_id: str) -> str | None:
    """Why a caller-chosen clip id cannot be stored, or None."""
    if not clip_id:
        return "empty clip id"
    if len(clip_id) > CLIP_ID_MAX:
        return f"clip id longer than {CLIP_ID_MAX} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in clip_id):
        return "clip id contains control characters"
    return None
