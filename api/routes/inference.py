"""POST /inference: the original service's request and response, served by the shared core."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from api.deps import AppState, get_state, get_tagger
from api.inference_compat import inference_response
from api.schemas import InferenceRequest, InferenceResponse
from tagger.audio import AudioError, decode_bytes
from tagger.inference import Tagger

router = APIRouter(tags=["inference"])


@router.post("/inference", response_model=InferenceResponse,
             responses={413: {"description": "audio too large"}, 422: {"description": "not decodable audio"}})
async def inference(
    body: InferenceRequest,
    state: Annotated[AppState, Depends(get_state)],
    tagger: Annotated[Tagger, Depends(get_tagger)],
) -> dict:
    limit = state.settings.max_upload_bytes
    if len(body.data) > limit * 4 // 3 + 4:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"audio is over the limit of {limit} bytes")
    try:
        data = base64.b64decode(body.data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "data is not valid base64") from None

    def run() -> dict:
        clip = decode_bytes(data, max_duration_s=state.settings.max_duration_s)
        return inference_response(clip, tagger.tag([clip])[0])

    try:
        return await run_in_threadpool(run)
    except AudioError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
