"""Labels of your own: label_sets (versioned heads), label_set_examples and clip_custom_labels

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_sets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("head", sa.LargeBinary(), nullable=False),
        sa.Column("min_probability", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
    )
    op.create_table(
        "label_set_examples",
        sa.Column("label_set", sa.String(64), primary_key=True),
        sa.Column("example", sa.Text(), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "clip_custom_labels",
        sa.Column("clip_id", sa.String(255), sa.ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label_set", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
    )
    op.create_index("ix_clip_custom_labels_set_label", "clip_custom_labels", ["label_set", "label"])


def downgrade() -> None:
    op.drop_index("ix_clip_custom_labels_set_label", table_name="clip_custom_labels")
    op.drop_table("clip_custom_labels")
    op.drop_table("label_set_examples")
    op.drop_table("label_sets")
