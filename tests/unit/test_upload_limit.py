"""The upload size limit refuses big bodies with 413 before they are read, declared or chunked."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from api.main import BodySizeLimit

LIMIT = 1000


def _client() -> TestClient:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    return TestClient(app)


def test_bodies_under_the_limit_pass_and_gets_are_untouched():
    c = _client()
    assert c.post("/echo", content=b"x" * LIMIT).json() == {"bytes": LIMIT}
    assert c.get("/ping").status_code == 200


def test_a_declared_length_over_the_limit_is_413_unread():
    r = _client().post("/echo", content=b"x" * (LIMIT + 70_000))
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413():
    def chunks():
        for _ in range(200):
            yield b"x" * 1024

    r = _client().post("/echo", content=chunks())  # no Content-Length: streamed
    assert r.status_code == 413
