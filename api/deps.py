"""What routes depend on: the app's tagger, database sessions, settings and API key."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, Security, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

from api.text import has_control_characters
from tagger import db
from tagger.config import Settings
from tagger.inference import Tagger
from tagger.stages import PooledStages

if TYPE_CHECKING:
    from api.similarity import SimilarityIndex

T = TypeVar("T")


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]  # autocommit, no ping: the GET routes' (tagger.db.get_read_engine)
    tagger: Tagger | None
    async_reads: AsyncEngine | None = None  # the same over asyncio (PostgreSQL only)
    model_error: str | None = None
    runner: PooledStages | None = None  # uploads tagged and stored in the pool, when the model loaded
    similar: SimilarityIndex | None = None  # the served model's clips by embedding, when the model loaded
    # Turns at ``async_reads``, first come first served (``tagger.db.reads_in_flight``).
    read_turns: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(db.reads_in_flight()))


# The dependencies below are `async def` though they never wait: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per dependency per request, which cost the
# async routes more than their database read.
async def get_state(request: Request) -> AppState:
    return request.app.state.soundtag


async def read_db(state: AppState, read: Callable[..., T], *args: Any) -> T:
    """``read(session, *args)``, a repository read: awaited on the event loop over the
    asyncio driver where there is one (PostgreSQL), in a thread otherwise (SQLite). Over
    asyncio ``read`` gets a Core connection, not an ORM session: the reads there select
    plain rows, and a session around each cost a tenth of a by-id request's CPU."""
    if state.async_reads is not None:
        async with state.read_turns, state.async_reads.connect() as connection:
            return await connection.run_sync(read, *args)

    def in_thread() -> T:
        with state.reads() as session:
            return read(session, *args)

    return await run_in_threadpool(in_thread)


def get_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    """A session for reading."""
    with state.reads() as session:
        yield session


async def get_runner(state: Annotated[AppState, Depends(get_state)]) -> PooledStages:
    if state.runner is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded: {state.model_error}")
    return state.runner


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when SOUNDTAG_API_KEY is set")


async def read_upload(file: UploadFile, limit: int) -> tuple[str, bytes]:
    """An uploaded file's name and bytes: 422 for a name with control characters, 413 past
    ``limit`` bytes (at most one byte more is read)."""
    name = file.filename or "unnamed"
    if has_control_characters(name):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"file name {name!r} contains control characters")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"{name!r} is over the upload limit of {limit} bytes")
    return name, data


async def require_api_key(key: Annotated[str | None, Security(_api_key_header)],
                          state: Annotated[AppState, Depends(get_state)]) -> None:
    expected = state.settings.api_key
    if not expected:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong API key (X-API-Key header)",
                            headers={"WWW-Authenticate": "ApiKey"})
