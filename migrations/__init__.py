"""Alembic migrations for the soundtag schema (run with `soundtag db upgrade`)."""
