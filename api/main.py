"""The FastAPI application: routes, the page, limits, metrics and error answers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from api.deps import AppState
from api.metrics import MetricsMiddleware
from api.routes import clips, inference, system
from tagger.checkpoint import CheckpointError, ModelNotFoundError
from tagger.config import Settings, get_settings
from tagger.inference import Tagger
from tagger.service import UntrainedModelError, load_tagger, open_database

log = logging.getLogger("soundtag.api")
STATIC_DIR = Path(__file__).resolve().parent / "static"


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
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


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
        app.state.soundtag = AppState(settings=settings, sessions=open_database(settings), tagger=model,
                                      model_error=error)
        yield

    app = FastAPI(
        title="soundtag",
        version="0.1.0",
        description="Tags environmental sounds with the 50 ESC-50 classes and shows why.",
        lifespan=lifespan,
    )
    app.include_router(clips.router)
    app.include_router(inference.router)
    app.include_router(system.router)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError):
        log.warning("database unavailable: %s", str(exc).splitlines()[0])
        return JSONResponse({"detail": "database unavailable, try again shortly"}, status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Log the trace; never send it.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None,
          tagger: Tagger | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, tagger), host=host, port=port, log_level="info")
