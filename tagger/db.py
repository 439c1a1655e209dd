"""Engine and sessions, and the Alembic upgrade that `soundtag db upgrade` runs."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker


def _migrations_dir() -> Path:
    """The Alembic scripts' folder, found without importing them: they import the tables."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed next to tagger")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def normalize_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver soundtag ships with."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        db_path = make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)


@functools.cache
def get_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


# The API's reads at 20 connections: one pooled connection each, never opened per request.
READ_POOL_SIZE = 20
# The API's reads over asyncio that one process has in PostgreSQL at once, per core. With a
# query for each of 20 client connections in flight, 20 backends shared two cores with the
# API process and a label page's p99 was 58-89 ms; queued in the API (in order) beyond 6,
# it was 24-33 ms at the same rate (the ``load`` suite, 2 cores).
READS_PER_CORE = 3


@functools.cache
def reads_in_flight() -> int:
    """READS_PER_CORE for each core this process may use (its affinity and CPU quota: a
    container's two cores on a large host ask for 6 connections, not hundreds)."""
    from tagger.device import cpu_cores  # it brings torch, which only the API asks this with

    return READS_PER_CORE * cpu_cores()


@functools.cache
def get_read_engine(url: str) -> Engine:
    """The engine of the API's reads. Autocommit (no BEGIN and ROLLBACK around a query)
    and no ping at checkout: those were four of the six round trips of one clip read. A
    connection the database dropped then fails its query instead of being replaced first;
    the API runs such a GET once more (``api.retry``)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return get_engine(url)
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_size=READ_POOL_SIZE, max_overflow=READ_POOL_SIZE)


@functools.cache
def get_async_read_engine(url: str) -> AsyncEngine | None:
    """The same reads over psycopg's asyncio interface, for the API's busiest routes: they
    wait for PostgreSQL on the event loop instead of in a thread (a thread hop per request
    halved the rate FastAPI answers at). None for SQLite, which reads in threads."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return None
    from sqlalchemy.ext.asyncio import create_async_engine

    # The API holds at most reads_in_flight() of these at once (``api.deps.read_db``), so the
    # pool never makes a request wait, and never closes and reopens a connection.
    return create_async_engine(url, isolation_level="AUTOCOMMIT", pool_size=reads_in_flight(), max_overflow=0)


def read_session_factory(url: str) -> sessionmaker[Session]:
    """Sessions for reading only: each statement sees the database as it is then."""
    return sessionmaker(get_read_engine(url), expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    _ensure_sqlite_dir(normalize_url(url))
    command.upgrade(alembic_config(url), revision)


def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A new, empty PostgreSQL database named ``prefix_<random>``: (name, URL). For tests
    and benchmarks that need a database of their own."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database made by ``create_database``, ending whatever is still connected."""
    import psycopg

    get_engine.cache_clear()  # pooled connections' engines go with it
    get_read_engine.cache_clear()
    get_async_read_engine.cache_clear()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_ready(url: str) -> bool:
    return inspect(get_engine(url)).has_table("clips")
