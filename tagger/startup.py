"""Wiring shared by the commands, the worker and the API: settings → tagger, sessions."""

from __future__ import annotations

import os

from sqlalchemy.orm import Session, sessionmaker

from tagger import db
from tagger.checkpoint import read_metadata
from tagger.config import ALLOW_UNTRAINED_ENV, BATCH_SIZE, Settings, get_settings
from tagger.errors import UntrainedModelError
from tagger.inference import Tagger
from tagger.stages import PipelineJob


def check_model(settings: Settings | None = None) -> None:
    """SOUNDTAG_MODEL_PATH is a trained checkpoint (or the developers' switch allows
    untrained ones); raises ModelNotFoundError / CheckpointError / UntrainedModelError with
    clear text."""
    settings = settings or get_settings()
    meta = read_metadata(settings.model_path)
    if not meta["trained"] and os.environ.get(ALLOW_UNTRAINED_ENV) != "1":
        raise UntrainedModelError(
            f"{settings.model_path} holds randomly initialised weights, not a trained model. "
            "Point SOUNDTAG_MODEL_PATH at a trained checkpoint or train one with `soundtag train`."
        )


def load_tagger(settings: Settings | None = None) -> Tagger:
    """Load SOUNDTAG_MODEL_PATH; raises ModelNotFoundError / CheckpointError with clear text."""
    settings = settings or get_settings()
    check_model(settings)
    return Tagger.load(settings.model_path, device=settings.device, batch_size=BATCH_SIZE,
                       export_cache=settings.export_cache_dir)


def open_database(settings: Settings | None = None, migrate: bool = True) -> sessionmaker[Session]:
    """Sessions on SOUNDTAG_DATABASE_URL, bringing the schema to the latest migration."""
    settings = settings or get_settings()
    if migrate:
        db.upgrade(settings.database_url)
    return db.session_factory(settings.database_url)


def pipeline_job(settings: Settings, device: str | None = None, db_retry_s: float | None = None) -> PipelineJob:
    """What a pool process needs to open its own pipeline, from the settings."""
    return PipelineJob(model_path=str(settings.model_path), database_url=settings.database_url,
                       device=device or settings.device, max_duration_s=settings.max_duration_s,
                       db_retry_s=settings.db_retry_s if db_retry_s is None else db_retry_s,
                       export_cache=str(settings.export_cache_dir))
