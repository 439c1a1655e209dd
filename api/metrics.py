"""Prometheus metrics: requests, latency, clips tagged and failed."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response

REQUESTS = Counter("soundtag_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("soundtag_http_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CLIPS = Counter("soundtag_clips_total", "Clips processed by the API", ["status"])


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            # The route template, not the path: clip ids must not explode label cardinality.
            name = getattr(route, "path", "unmatched")
            REQUESTS.labels(request.method, name, str(status)).inc()
            LATENCY.labels(request.method, name).observe(time.perf_counter() - start)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
