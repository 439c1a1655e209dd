"""Wiring shared by the commands, the worker and the API: settings → tagger, sessions."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tagger import db
from tagger.checkpoint import read_metadata
from tagger.config import Settings, get_settings
from tagger.errors import UntrainedModelError
from tagger.inference import Tagger


def check_model(settings: Settings | None = None) -> None:
    """SOUNDTAG_MODEL_PATH is a trained checkpoint (or untrained ones are allowed); raises
    ModelNotFoundError / CheckpointError / UntrainedModelError with clear text."""
    settings = settings or get_settings()
    meta = read_metadata(settings.model_path)
    if not meta["trained"] and not settings.allow_untrained:
        raise UntrainedModelError(
            f"{settings.model_path} holds randomly initialised weights, not a trained model. "
            "Point SOUNDTAG_MODEL_PATH at a trained checkpoint or train one with `soundtag train`."
        )


def load_tagger(settings: Settings | None = None) -> Tagger:
    """Load SOUNDTAG_MODEL_PATH; raises ModelNotFoundError / CheckpointError with clear text."""
    settings = settings or get_settings()
    check_model(settings)
    return Tagger.load(settings.model_path, device=settings.device, batch_size=settings.batch_size,
                       engine=settings.engine, threads=settings.model_threads or None,
                       export_cache=settings.export_cache_dir)


def open_database(settings: Settings | None = None, migrate: bool = True) -> sessionmaker[Session]:
    """Sessions on SOUNDTAG_DATABASE_URL, bringing the schema to the latest migration."""
    settings = settings or get_settings()
    if migrate:
        db.upgrade(settings.database_url)
    return db.session_factory(settings.database_url)
