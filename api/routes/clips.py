"""Clips: list and filter, one clip, its visualization, label counts, uploads."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.convert import clip_out, record_out, visualization
from api.deps import AppState, get_session, get_state, get_tagger, require_api_key
from api.metrics import CLIPS
from api.schemas import ClipList, ClipOut, LabelCount, LabelList, UploadResult, Visualization
from tagger import repository
from tagger.inference import Tagger
from tagger.pipeline import Payload, tag_payloads

router = APIRouter(prefix="/api", tags=["clips"])


@router.get("/clips", response_model=ClipList, summary="List clips, filtered by label and confidence")
def list_clips(
    session: Annotated[Session, Depends(get_session)],
    label: Annotated[str | None, Query(max_length=64, description="clips with this label in their top 3")] = None,
    min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    status_: Annotated[Literal["tagged", "failed"] | None, Query(alias="status")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ClipList:
    try:
        clips, next_cursor = repository.list_clips(session, label, min_confidence, status_, cursor, limit)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return ClipList(items=[clip_out(c) for c in clips], next_cursor=next_cursor)


@router.get("/clips/{clip_id:path}/visualization", response_model=Visualization,
            summary="Spectrogram, waveform, feature maps and timeline of a tagged clip")
def get_visualization(clip_id: str, session: Annotated[Session, Depends(get_session)]) -> Visualization:
    clip = repository.get_clip(session, clip_id)
    if clip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such clip")
    features = repository.get_features(session, clip_id)
    if features is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"clip has no visualization (status: {clip.status})")
    return visualization(clip, features)


@router.get("/clips/{clip_id:path}", response_model=ClipOut, summary="One clip with its top 3")
def get_clip(clip_id: str, session: Annotated[Session, Depends(get_session)]) -> ClipOut:
    clip = repository.get_clip(session, clip_id)
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


@router.post(
    "/clips",
    response_model=UploadResult,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_api_key)],
    summary="Upload and tag one or more audio files",
    responses={401: {"description": "API key missing or wrong"}, 413: {"description": "upload too large"},
               422: {"description": "no file could be tagged (each is recorded as failed)"}},
)
async def upload_clips(
    files: Annotated[list[UploadFile], File(description="WAV, FLAC or Ogg files")],
    state: Annotated[AppState, Depends(get_state)],
    tagger: Annotated[Tagger, Depends(get_tagger)],
    clip_id: Annotated[str | None, Form(max_length=255, description="id for a single file (default: content hash)")] = None,
) -> UploadResult:
    limit = state.settings.max_upload_bytes
    if clip_id is not None and len(files) != 1:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "clip_id can only name a single uploaded file")
    payloads = []
    for f in files:
        data = await f.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"{f.filename!r} is over the upload limit of {limit} bytes")
        payloads.append(Payload(data=data, source=f"upload:{f.filename or 'unnamed'}", clip_id=clip_id))
    # Decode and inference block: run them off the event loop.
    records = await run_in_threadpool(tag_payloads, tagger, payloads, state.settings.max_duration_s)

    def save() -> None:
        with state.sessions.begin() as session:
            repository.save_clips(session, records)

    await run_in_threadpool(save)
    for r in records:
        CLIPS.labels(r.status).inc()
    items = [record_out(r) for r in records]
    if all(r.status == "failed" for r in records):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "; ".join(f"{r.source.removeprefix('upload:')}: {r.error}" for r in records),
        )
    return UploadResult(items=items)
