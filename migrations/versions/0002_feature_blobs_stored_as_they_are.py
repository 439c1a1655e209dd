"""clip_features: store the blobs as they are (no compression attempt by PostgreSQL)

The blobs are zstd-compressed by the feature codec; PostgreSQL's TOAST would try to
compress each again (pglz, never smaller) before storing it out of line. STORAGE EXTERNAL
skips that attempt: the same bytes on disk for half the server's CPU per stored clip
(CHANGELOG.md). Only PostgreSQL has the setting; it applies to values written afterwards.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BLOB_COLUMNS = ("spectrogram", "feature_maps", "waveform", "embedding")


def _set_storage(storage: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in BLOB_COLUMNS:
        op.execute(f"ALTER TABLE clip_features ALTER COLUMN {column} SET STORAGE {storage}")


def upgrade() -> None:
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")
