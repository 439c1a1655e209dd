"""A clip's JSON written by PostgreSQL, for the busiest reads (issue 48.5).

Built in Python, a label page was 50 records, then 50 ``ClipOut`` models with their 150
``TagOut``, then FastAPI's check and dump of them: about 4 ms of the API process's CPU per
page, while PostgreSQL's part was a fraction of that. PostgreSQL writes the same JSON in C
as it reads the rows, and the API only joins the texts (figures: the ``load`` suite in
``deploy/benchmarks/README.md``).

The shape is ``api.schemas.ClipOut``'s, field for field and in its order, and
``tests/integration/test_clip_json.py`` holds the two equal for every kind of clip.
Timestamps are written as pydantic writes them: UTC with "Z", fractional seconds only
when there are some. SQLite has none of these functions; there the routes build models.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Float,
    Integer,
    String,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, aliased
from starlette.responses import Response

from api.deps import AppState
from tagger import repository
from tagger.tables import Clip, ClipCustomLabel, Tag


def written_by_database(state: AppState) -> bool:
    """PostgreSQL: the clip routes answer with its JSON (the reads over asyncio are PostgreSQL's only)."""
    return state.async_reads is not None


def response(body: str) -> Response:
    return Response(body, media_type="application/json")


def _object(**fields: Any) -> Any:
    """``json_build_object`` with its keys written into the statement (as parameters
    PostgreSQL could not tell their type)."""
    args: list[Any] = []
    for key, value in fields.items():
        args += [literal_column(f"'{key}'"), value]
    return func.json_build_object(*args)


def _iso(column: Any) -> Any:
    """As pydantic writes a time: UTC with "Z", fractional seconds only when there are some."""
    written = func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    return func.replace(written, ".000000Z", "Z")  # NULL stays NULL (null in the JSON)


# What the routes pass: a Core connection over asyncio (``api.deps.read_db``); tests pass sessions.
Reader = Connection | Session
_EMPTY: Any = literal_column("'[]'::json")
_tag = aliased(Tag)
_custom = aliased(ClipCustomLabel)
_TOP3 = (select(func.coalesce(func.json_agg(aggregate_order_by(
    _object(label=_tag.label, confidence=_tag.confidence), _tag.rank)), _EMPTY))
    .where(_tag.clip_id == Clip.id).correlate(Clip).scalar_subquery())
_CUSTOM = (select(func.coalesce(func.json_agg(aggregate_order_by(
    _object(label_set=_custom.label_set, label=_custom.label, confidence=_custom.confidence),
    # Byte order, as Python sorts them (``repository._record``), whatever the database's collation.
    _custom.label_set.collate("C"), _custom.label.collate("C"))), _EMPTY))
    .where(_custom.clip_id == Clip.id).correlate(Clip).scalar_subquery())

# ClipOut's fields, in its order.
CLIP_JSON = cast(_object(
    clip_id=Clip.id, source=Clip.source, status=Clip.status, error=Clip.error, duration_s=Clip.duration_s,
    sample_rate=Clip.sample_rate, channels=Clip.channels, sha256=Clip.sha256, model_version=Clip.model_version,
    received_at=_iso(Clip.received_at), tagged_at=_iso(Clip.tagged_at), verdict=Clip.verdict, top3=_TOP3,
    custom=_CUSTOM), Text)

_ONE = select(CLIP_JSON).where(Clip.id == bindparam("clip_id"))
_SOME = select(Clip.id, CLIP_JSON).where(Clip.id == any_(bindparam("ids", type_=ARRAY(String))))


def page(session: Reader, label: str | None, min_confidence: float | None, status: str | None,
         verdict: str | None, cursor: str | None, limit: int) -> str:
    """``GET /api/clips``'s body: ``repository.list_clips``'s page as a ``ClipList``."""
    given = {"label": label, "min_confidence": min_confidence, "status": status, "verdict": verdict,
             "after": repository.decode_cursor(cursor) if cursor else None}
    statement = _page_statement(*(value is not None for value in given.values()))
    rows = session.execute(statement, {**{k: v for k, v in given.items() if v is not None}, "rows": limit + 1}).all()
    items = ",".join(row.json for row in rows[:limit])
    return f'{{"items":[{items}],"next_cursor":{json.dumps(repository.next_cursor(rows, limit))}}}'


@functools.cache
def _page_statement(label: bool, min_confidence: bool, status: bool, verdict: bool, after: bool) -> Any:
    """The page's statement for the filters given, built once: building and keying a
    statement this size for SQLAlchemy's cache cost more than PostgreSQL's whole answer."""
    def bound(name: str, given: bool, type_: Any = String) -> Any:
        return bindparam(name, type_=type_) if given else None

    return repository.page_query(select(Clip.id.label("clip_id"), CLIP_JSON.label("json")), bound("label", label),
                                 bound("min_confidence", min_confidence, Float), bound("status", status),
                                 bound("verdict", verdict), bound("after", after), bindparam("rows", type_=Integer))


def one(session: Reader, clip_id: str) -> str | None:
    """A clip's JSON, or None when there is no such clip."""
    return session.execute(_ONE, {"clip_id": clip_id}).scalar()


def some(session: Reader, clip_ids: list[str]) -> dict[str, str]:
    """The JSON of those of these clips that exist, by id."""
    return {clip_id: text for clip_id, text in session.execute(_SOME, {"ids": clip_ids})}


def with_score(text: str, score: float) -> str:
    """A clip's JSON as a ``SimilarClip``: with its score, the model's last field."""
    return f'{text[:-1]},"score":{json.dumps(score)}}}'
