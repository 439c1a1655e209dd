"""Clips: list and filter, one clip, its visualization, label counts, uploads."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from api import clip_json
from api.convert import clip_out, visualization
from api.deps import AppState, get_runner, get_session, get_state, read_db, read_upload, require_api_key
from api.metrics import CLIPS
from api.schemas import (
    ClipList,
    ClipOut,
    CollectionSummary,
    EventList,
    EventOut,
    Failure,
    LabelCount,
    LabelList,
    UploadResult,
    Visualization,
)
from tagger import repository
from tagger.audio import READABLE_FORMATS, sha256_hex
from tagger.events import events_as
from tagger.records import CLIP_ID_MAX, ClipRecord, Payload, Status, clip_id_problem
from tagger.stages import PooledStages
from tagger.tables import ClipFeatures
from tagger.verdicts import Verdict

router = APIRouter(prefix="/api", tags=["clips"])
CONFIDENCE_BINS = 10


@router.get("/clips", response_model=ClipList, summary="List clips, filtered by label, confidence, status and verdict")
async def list_clips(
    state: Annotated[AppState, Depends(get_state)],
    label: Annotated[str | None, Query(max_length=64, description="clips with this label in their top 3")] = None,
    min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    verdict: Annotated[Verdict | None, Query(description="label, unknown or silence")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ClipList | Response:
    try:
        if clip_json.written_by_database(state):
            return clip_json.response(await read_db(state, clip_json.page, label, min_confidence, status_, verdict,
                                                    cursor, limit))
        clips, next_cursor = await read_db(state, repository.list_clips, label, min_confidence, status_, verdict,
                                           cursor, limit)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return ClipList(items=[clip_out(c) for c in clips], next_cursor=next_cursor)


@router.get("/clips/{clip_id:path}/visualization", response_model=Visualization,
            summary="Spectrogram, waveform, feature maps and timeline of a tagged clip")
def get_visualization(clip_id: str, session: Annotated[Session, Depends(get_session)]) -> Visualization:
    return visualization(*_clip_and_features(session, clip_id, "visualization"))


def _clip_and_features(session: Session, clip_id: str, what: str) -> tuple[ClipRecord, ClipFeatures]:
    """A tagged clip and its stored features; 404 for a missing clip or one without (failed)."""
    clip = repository.get_clip(session, clip_id)
    if clip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such clip")
    features = repository.get_features(session, clip_id)
    if features is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"clip has no {what} (status: {clip.status})")
    return clip, features


@router.get("/clips/{clip_id:path}/events", response_model=EventList,
            summary="Timestamped sound events of a tagged clip (JSON, or CSV, Audacity or Raven text)",
            responses={200: {"content": {"text/csv": {}, "text/plain": {}}}})
def get_events(
    clip_id: str,
    session: Annotated[Session, Depends(get_session)],
    format_: Annotated[Literal["json", "csv", "audacity", "raven"], Query(alias="format")] = "json",
) -> Any:
    _, features = _clip_and_features(session, clip_id, "events")
    events = features.events or []
    if format_ == "json":
        return EventList(items=[EventOut(**e) for e in events])
    stem = _download_name(clip_id)
    kind, suffix = {"csv": ("text/csv", "csv"), "audacity": ("text/plain", "txt"),
                    "raven": ("text/plain", "selections.txt")}[format_]
    return PlainTextResponse(events_as(events, format_), media_type=kind,
                             headers={"Content-Disposition": f'attachment; filename="{stem}.{suffix}"'})


def _download_name(clip_id: str) -> str:
    """The clip id as a safe file name (ids may hold slashes, quotes, anything printable)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", clip_id.rsplit("/", 1)[-1])[:100] or "events"


@router.get("/clips/{clip_id:path}", response_model=ClipOut, summary="One clip with its top 3")
async def get_clip(clip_id: str, state: Annotated[AppState, Depends(get_state)]) -> ClipOut | Response:
    if clip_json.written_by_database(state):
        text = await read_db(state, clip_json.one, clip_id)
        if text is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such clip")
        return clip_json.response(text)
    clip = await read_db(state, repository.get_clip, clip_id)
    if clip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such clip")
    return clip_out(clip)


@router.get("/labels", response_model=LabelList, summary="Every label with its clip counts")
def list_labels(session: Annotated[Session, Depends(get_session)],
                state: Annotated[AppState, Depends(get_state)]) -> LabelList:
    counts = {c["label"]: c for c in repository.label_counts(session)}
    names = state.tagger.class_names if state.tagger else []
    for name in names:
        counts.setdefault(name, {"label": name, "top1": 0, "top3": 0})
    items = sorted(counts.values(), key=lambda c: (-c["top1"], -c["top3"], c["label"]))
    return LabelList(items=[LabelCount(**c) for c in items])


@router.get("/summary", response_model=CollectionSummary,
            summary="The collection at a glance: status counts, confidence histogram, recent failures")
def collection_summary(
    session: Annotated[Session, Depends(get_session)],
    failures: Annotated[int, Query(ge=0, le=500, description="how many recent failures to list")] = 50,
) -> CollectionSummary:
    counts = repository.confidence_histogram(session, bins=CONFIDENCE_BINS)
    return CollectionSummary(
        status_counts={**dict.fromkeys(Status, 0), **repository.status_counts(session)},
        verdict_counts={**dict.fromkeys(Verdict, 0), **repository.verdict_counts(session)},
        confidence_bins=[round(i / CONFIDENCE_BINS, 2) for i in range(CONFIDENCE_BINS + 1)],
        confidence_counts=counts,
        failures=[Failure(clip_id=c.clip_id, source=c.source, error=c.error, received_at=c.received_at)
                  for c in repository.recent_failures(session, failures)],
    )


@router.post(
    "/clips",
    response_model=UploadResult,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_api_key)],
    summary="Upload and tag one or more audio files",
    responses={401: {"description": "API key missing or wrong"}, 409: {"description": "clip_id holds another clip"},
               413: {"description": "upload too large"},
               422: {"description": "no file could be tagged (each is recorded as failed)"}},
)
async def upload_clips(
    files: Annotated[list[UploadFile], File(description=f"audio files: {READABLE_FORMATS}")],
    state: Annotated[AppState, Depends(get_state)],
    runner: Annotated[PooledStages, Depends(get_runner)],
    clip_id: Annotated[str | None, Form(max_length=CLIP_ID_MAX,
                                        description="id for a single file (default: content hash)")] = None,
    replace: Annotated[bool, Form(description="overwrite the clip already stored under clip_id")] = False,
) -> UploadResult:
    limit = state.settings.max_upload_bytes
    if clip_id is not None and len(files) != 1:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "clip_id can only name a single uploaded file")
    if clip_id is not None and (problem := clip_id_problem(clip_id)):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid clip_id: {problem}")
    payloads = []
    for f in files:
        name, data = await read_upload(f, limit)
        payloads.append(Payload(data=data, source=f"upload:{name}", clip_id=clip_id, sha256=sha256_hex(data)))
    if clip_id is not None and not replace:
        await run_in_threadpool(_refuse_overwrite, state, clip_id, payloads[0].sha256 or "")
    records = await runner.run(payloads)
    for r in records:
        CLIPS.labels(r.status).inc()
    items = [clip_out(r) for r in records]
    if all(r.status == Status.FAILED for r in records):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "; ".join(f"{r.source.removeprefix('upload:')}: {r.error}" for r in records),
        )
    return UploadResult(items=items)


def _refuse_overwrite(state: AppState, clip_id: str, sha256: str) -> None:
    with state.sessions() as session:
        existing = repository.get_clip(session, clip_id)
    if existing is not None and existing.sha256 not in (None, sha256):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"clip {clip_id!r} already holds other audio (sha256 {existing.sha256[:12]}…); "
                            "send replace=true to overwrite it")
