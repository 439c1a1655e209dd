"""The FastAPI application: routes, the page, limits, metrics and error answers."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, OperationalError

from api.deps import AppState
from api.metrics import MetricsMiddleware
from api.retry import RetryDroppedConnection, mark_if_dropped
from api.routes import clips, label_sets, original, system
from api.routes import similar as similar_routes
from api.similarity import SimilarityIndex
from api.text import control_character_problem
from tagger import __version__, db
from tagger.config import Settings, get_settings
from tagger.errors import CheckpointError, ModelNotFoundError, UntrainedModelError
from tagger.inference import Tagger
from tagger.pool import PoolError, ProcessPool
from tagger.stages import DatabaseUnavailable, PooledStages
from tagger.startup import load_tagger, open_database, pipeline_job

log = logging.getLogger("soundtag.api")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Uploads and /inference are tagged in this many pool processes per API process (on the
# CPU, about 450 MB each): uploads are rare next to queries, so more replicas, not more
# processes, are how the API scales.
TAGGING_PROCESSES = 1
UPLOAD_DB_RETRY_S = 5.0  # a request should not hang on a database that is away: a short wait, then 503


class BodySizeLimit:
    """Refuse request bodies over the limit with 413 before they are read into memory,
    whether the client declared Content-Length or streams chunks."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Multipart framing adds a little around the files themselves.
        limit = self.max_bytes + 64 * 1024
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, self.max_bytes)
        seen = 0
        over = False
        answered = False

        async def limited_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            # A body parser may swallow _BodyTooLarge and answer 400 itself: the answer
            # to an oversized body is 413 whoever noticed first.
            nonlocal answered
            if over:
                if not answered:
                    answered = True
                    await _too_large(send, self.max_bytes)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not answered:
            await _too_large(send, self.max_bytes)


class ControlCharacterGuard:
    """A control character in the path or query is a 422, before any route or database."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = control_character_problem(scope.get("path", ""), scope.get("query_string", b""))
            if problem:
                response = JSONResponse({"detail": f"{problem}; control characters are not allowed"}, 422)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, max_bytes: int) -> None:
    body = f'{{"detail":"request body is over the upload limit of {max_bytes} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, tagger: Tagger | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model, error = tagger, None
        if model is None:
            try:
                model = load_tagger(settings)
            except (ModelNotFoundError, CheckpointError, UntrainedModelError) as exc:
                error = str(exc)
                log.error("model not loaded: %s", error)
        sessions = open_database(settings)
        runner = None
        if model is not None:
            pool = ProcessPool(TAGGING_PROCESSES, pipeline_job(settings, device="cpu", db_retry_s=UPLOAD_DB_RETRY_S))
            try:
                pool.wait_ready()
                runner = PooledStages(pool)
            except PoolError as exc:
                pool.close(wait=False)
                error = str(exc)
                log.error("tagging processes did not start: %s", error)
        similar = None
        if model is not None:
            similar = SimilarityIndex(sessions, model.version)
            similar.start()
        async_reads = db.get_async_read_engine(settings.database_url)
        # Everything loaded so far (torch, the model, the routes) lives as long as the process:
        # kept out of the collector's full passes, which otherwise walk it all and stalled
        # requests for 100 ms and more under load.
        gc.freeze()
        app.state.soundtag = AppState(settings=settings, sessions=sessions,
                                      reads=db.read_session_factory(settings.database_url),
                                      async_reads=async_reads, tagger=model,
                                      model_error=error, runner=runner, similar=similar)
        yield
        if async_reads is not None:
            await async_reads.dispose()
        if similar is not None:
            similar.close()
        if runner is not None:
            runner.close()

    app = FastAPI(
        title="soundtag",
        version=__version__,
        description="Tags environmental sounds with the 50 ESC-50 classes and shows why.",
        lifespan=lifespan,
    )
    app.include_router(similar_routes.router)  # before clips: its /clips/{id}/similar is more specific
    app.include_router(clips.router)
    app.include_router(label_sets.router)
    app.include_router(original.router)
    app.include_router(system.router)
    app.add_middleware(RetryDroppedConnection)  # inside the metrics: a retried read counts once
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ControlCharacterGuard)
    if settings.cors_origin_list:
        # Outermost, so that refusals (413, 422, 401) reach the other origin's page readably too.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type", "X-API-Key"])
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.exception_handler(OperationalError)
    @app.exception_handler(DatabaseUnavailable)
    async def database_down(request: Request, exc: Exception):
        mark_if_dropped(request.scope, exc)
        log.warning("database unavailable: %s", str(exc).splitlines()[0])
        return JSONResponse({"detail": "database unavailable, try again shortly"}, status_code=503)

    @app.exception_handler(DBAPIError)
    async def database_refused(request: Request, exc: DBAPIError):
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            return await database_down(request, exc)
        log.warning("database refused a value on %s: %s", request.url.path, str(exc.orig).splitlines()[0])
        return JSONResponse({"detail": "the database cannot hold a value in this request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Log the trace; never send it.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None,
          tagger: Tagger | None = None, workers: int = 1) -> None:
    """Run the API. With several ``workers`` uvicorn starts that many processes on one
    port, each building its app from the environment."""
    import uvicorn

    if workers > 1:
        if settings is not None or tagger is not None:
            raise ValueError("several workers build their apps from the environment: pass no settings or tagger")
        uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")
    else:
        uvicorn.run(create_app(settings, tagger), host=host, port=port, log_level="info")
