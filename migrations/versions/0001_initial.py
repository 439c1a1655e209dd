"""clips, tags and clip_features

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clips",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("channels", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("tagged_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('tagged', 'failed')", name="clips_status_valid"),
    )
    op.create_index("ix_clips_sha256", "clips", ["sha256"])
    op.create_table(
        "tags",
        sa.Column("clip_id", sa.String(255), sa.ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.SmallInteger(), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.CheckConstraint("rank BETWEEN 1 AND 3", name="tags_rank_valid"),
    )
    op.create_index("ix_tags_label_confidence", "tags", ["label", "confidence"])
    op.create_index("ix_tags_label_clip", "tags", ["label", "clip_id"])
    op.create_table(
        "clip_features",
        sa.Column("clip_id", sa.String(255), sa.ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("codec_version", sa.SmallInteger(), nullable=False),
        sa.Column("spectrogram", sa.LargeBinary(), nullable=False),
        sa.Column("feature_maps", sa.LargeBinary(), nullable=False),
        sa.Column("waveform", sa.LargeBinary(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("timeline", sa.JSON(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("clip_features")
    op.drop_table("tags")
    op.drop_table("clips")
