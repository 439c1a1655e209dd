"""An index on clips (model_version, tagged_at, id): what each API process's similarity
index reads, newest first, to keep in step with the store.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_clips_model_tagged", "clips", ["model_version", "tagged_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_clips_model_tagged", table_name="clips")
