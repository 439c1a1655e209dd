"""Text that reaches the database: control characters are refused before it gets there.

PostgreSQL cannot store NUL in text, and no label, cursor, clip id or file name has a
reason to hold any control character; such input is a 422 with a clear message.
"""

from __future__ import annotations

from urllib.parse import parse_qsl


def has_control_characters(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def control_character_problem(path: str, query_string: bytes) -> str | None:
    """Where in a request's path or query a control character hides, or None."""
    if has_control_characters(path):  # the ASGI path is already percent-decoded
        return "the path contains a control character"
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if has_control_characters(name) or has_control_characters(value):
            return f"query parameter {name!r} contains a control character"
    return None
