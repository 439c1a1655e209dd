"""POST /inference: the original service's request and response, served by the shared core."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from api.deps import AppState, get_runner, get_state, require_api_key
from api.original_response import died_answering, inference_task
from api.schemas import InferenceRequest, InferenceResponse
from tagger.records import Payload
from tagger.stages import PooledStages

router = APIRouter(tags=["inference"])


@router.post("/inference", response_model=InferenceResponse, dependencies=[Depends(require_api_key)],
             responses={401: {"description": "API key missing or wrong"}, 413: {"description": "audio too large"},
                        422: {"description": "not decodable audio"}})
async def inference(
    body: InferenceRequest,
    state: Annotated[AppState, Depends(get_state)],
    runner: Annotated[PooledStages, Depends(get_runner)],
) -> dict:
    limit = state.settings.max_upload_bytes
    # What the `base64` tool writes wraps lines; whitespace is never part of the data.
    encoded = "".join(body.data.split())
    if len(encoded) > limit * 4 // 3 + 4:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"audio is over the limit of {limit} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "data is not valid base64") from None
    answer = (await runner.pool.arun(inference_task, [Payload(data=data, source="inference")], died_answering))[0]
    if isinstance(answer, str):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, answer)
    return answer
