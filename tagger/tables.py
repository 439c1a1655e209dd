"""SQLAlchemy 2.0 table models. The schema itself changes only through Alembic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tagger.records import CLIP_ID_MAX, Status


class Base(DeclarativeBase):
    pass


class Clip(Base):
    __tablename__ = "clips"

    id: Mapped[str] = mapped_column(String(CLIP_ID_MAX), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(16), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    tagged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tags: Mapped[list[Tag]] = relationship(
        back_populates="clip", order_by="Tag.rank", cascade="all, delete-orphan", lazy="selectin"
    )
    custom_labels: Mapped[list[ClipCustomLabel]] = relationship(
        order_by="ClipCustomLabel.label_set", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in Status)})", name="clips_status_valid"),
        # What each API process's similarity index reads to keep in step (migration 0004).
        Index("ix_clips_model_tagged", "model_version", "tagged_at", "id"),
    )


class Tag(Base):
    __tablename__ = "tags"

    clip_id: Mapped[str] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)

    clip: Mapped[Clip] = relationship(back_populates="tags")

    __table_args__ = (
        CheckConstraint("rank BETWEEN 1 AND 3", name="tags_rank_valid"),
        # "clips with label X (above confidence c)", newest-first pagination by clip id.
        Index("ix_tags_label_confidence", "label", "confidence"),
        Index("ix_tags_label_clip", "label", "clip_id"),
    )


class ClipFeatures(Base):
    __tablename__ = "clip_features"

    clip_id: Mapped[str] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True)
    codec_version: Mapped[int] = mapped_column(SmallInteger)
    spectrogram: Mapped[bytes] = mapped_column(LargeBinary)
    feature_maps: Mapped[bytes] = mapped_column(LargeBinary)
    waveform: Mapped[bytes] = mapped_column(LargeBinary)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    timeline: Mapped[list[Any] | None] = mapped_column(JSON)
    events: Mapped[list[Any] | None] = mapped_column(JSON)


class LabelSet(Base):
    """A user's label set, one row per version (``soundtag teach``, or examples sent from the page)."""

    __tablename__ = "label_sets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    model_version: Mapped[str] = mapped_column(String(64))  # whose embeddings it was taught on
    classes: Mapped[list[Any]] = mapped_column(JSON)  # its labels, then "background" when taught
    head: Mapped[bytes] = mapped_column(LargeBinary)  # tagger.label_sets.LabelHead.to_bytes
    min_probability: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)  # examples and cross-validated accuracy per label


class LabelSetExample(Base):
    """What a label set is taught from: an example's label and embedding (no audio)."""

    __tablename__ = "label_set_examples"

    label_set: Mapped[str] = mapped_column(String(64), primary_key=True)
    example: Mapped[str] = mapped_column(Text, primary_key=True)  # a stored clip's id, or the file taught from
    label: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float16


class ClipCustomLabel(Base):
    """A clip's label in one label set (its newest version)."""

    __tablename__ = "clip_custom_labels"

    clip_id: Mapped[str] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True)
    label_set: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_clip_custom_labels_set_label", "label_set", "label"),)
