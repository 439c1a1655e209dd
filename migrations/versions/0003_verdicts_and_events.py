"""clips.verdict (label / unknown / silence) and clip_features.events

Clips tagged before this revision keep a NULL verdict and no events until they are tagged
again (`soundtag ingest` re-tags clips whose model version changed).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("clips", sa.Column("verdict", sa.String(16), nullable=True))
    op.create_index("ix_clips_verdict", "clips", ["verdict"])
    op.add_column("clip_features", sa.Column("events", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("clip_features", "events")
    op.drop_index("ix_clips_verdict", table_name="clips")
    op.drop_column("clips", "verdict")
