"""A read that met a connection the database had dropped runs once more.

The API's reads skip the ping at checkout (``tagger.db.get_read_engine``), so after a
database restart the first query on each pooled connection fails. SQLAlchemy then drops
the whole pool; a GET is safe to run again, on a fresh connection, before anyone sees
the 503.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from sqlalchemy.exc import DBAPIError

DROPPED = "soundtag.dropped_connection"  # scope key: where the error handler marks the request


def mark_if_dropped(scope: MutableMapping[str, Any], exc: Exception) -> None:
    """Called by the database error handlers: note a connection that was dropped."""
    marker = scope.get(DROPPED)
    if marker is not None and isinstance(exc, DBAPIError) and exc.connection_invalidated:
        marker["dropped"] = True


class RetryDroppedConnection:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        for attempt in (1, 2):
            marker = {"dropped": False}
            scope[DROPPED] = marker
            swallowed = False

            async def send_unless_retried(message, attempt=attempt, marker=marker):
                nonlocal swallowed
                if message["type"] == "http.response.start" and attempt == 1 and marker["dropped"]:
                    swallowed = True
                if not swallowed:
                    await send(message)

            await self.app(scope, receive if attempt == 1 else _empty_body(receive), send_unless_retried)
            if not swallowed:
                return


def _empty_body(receive):
    """A GET's body again (it has none), then the client's own messages."""
    given = False

    async def replay():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return replay
