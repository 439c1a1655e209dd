"""Alembic environment. The URL comes from the Config that tagger.db builds
(SOUNDTAG_DATABASE_URL), or from SOUNDTAG_DATABASE_URL when alembic runs directly."""

from alembic import context
from sqlalchemy import create_engine, text

from tagger.config import get_settings
from tagger.db import normalize_url
from tagger.tables import Base

config = context.config
target_metadata = Base.metadata
# Any fixed number: serialises concurrent `db upgrade`s (several workers starting at once).
ADVISORY_LOCK_ID = 0x50D7A6


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or normalize_url(get_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        is_pg = connection.dialect.name == "postgresql"
        if is_pg:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_ID})
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if is_pg:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_ID})
                connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
