"""Sounds like this one: the nearest stored clips to a stored clip, or to a file searched with."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api import clip_json
from api.convert import clip_out
from api.deps import AppState, get_runner, get_state, read_db, read_upload, require_api_key
from api.schemas import SearchResult, SimilarList, TagOut
from api.similarity import SimilarityIndex, died_embedding, embed_task
from tagger import repository
from tagger.audio import READABLE_FORMATS
from tagger.records import Payload
from tagger.stages import PooledStages
from tagger.vector_index import EXACT_SUBSET, Neighbour
from tagger.verdicts import Verdict

router = APIRouter(prefix="/api", tags=["similar"])
MAX_K = 100
LOADING_RETRY_S = 5


class Filters:
    """The clip list's filters, applied to the neighbours."""

    def __init__(self, label: str | None, min_confidence: float | None, verdict: Verdict | None) -> None:
        self.label, self.min_confidence, self.verdict = label, min_confidence, verdict

    @property
    def any(self) -> bool:
        return self.label is not None or self.min_confidence is not None or self.verdict is not None


async def get_filters(  # async: a plain callable would be run in a thread (api.deps)
    label: Annotated[str | None, Query(max_length=64, description="only clips with this label in their top 3")]
    = None,
    min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    verdict: Annotated[Verdict | None, Query(description="label, unknown or silence")] = None,
) -> Filters:
    return Filters(label, min_confidence, verdict)


async def get_index(state: Annotated[AppState, Depends(get_state)]) -> SimilarityIndex:
    index = state.similar
    if index is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded: {state.model_error}")
    if not index.loaded.is_set():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the similarity index is loading; try again shortly",
                            headers={"Retry-After": str(LOADING_RETRY_S)})
    return index


K = Annotated[int, Query(ge=1, le=MAX_K, description="how many clips")]


@router.get("/clips/{clip_id:path}/similar", response_model=SimilarList,
            summary="The stored clips that sound most like this one (cosine on the embedding)",
            responses={404: {"description": "no such clip"},
                       503: {"description": "the index is loading, or the clip was stored a moment ago"},
                       409: {"description": "the clip has no embedding of the served model (failed, or tagged by "
                                            "another model)"}})
async def similar(clip_id: str, state: Annotated[AppState, Depends(get_state)],
                  index: Annotated[SimilarityIndex, Depends(get_index)],
                  filters: Annotated[Filters, Depends(get_filters)], k: K = 10) -> Response:
    vector = index.index.vector(clip_id)
    if vector is None:
        clip = await read_db(state, repository.get_clip, clip_id)
        if clip is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no clip {clip_id!r}")
        if clip.status == "tagged" and clip.model_version == index.model_version:
            # Stored a moment ago: the index reads new clips every REFRESH_S.
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                f"clip {clip_id!r} is not in the similarity index yet; try again in a second",
                                headers={"Retry-After": "1"})
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"clip {clip_id!r} has no embedding of model {index.model_version} "
                            f"(status {clip.status}, model {clip.model_version}); tag it again to search from it")
    return clip_json.response(f'{{"items":{await _neighbours(state, index, vector, k, filters, exclude=clip_id)}}}')


@router.post("/search", response_model=SearchResult, dependencies=[Depends(require_api_key)],
             summary="Search the collection with a file: it is tagged on the fly and not stored",
             responses={401: {"description": "API key missing or wrong"}, 413: {"description": "upload too large"},
                        422: {"description": "not decodable audio"}})
async def search(
    file: Annotated[UploadFile, File(description=f"an audio file: {READABLE_FORMATS}")],
    state: Annotated[AppState, Depends(get_state)],
    runner: Annotated[PooledStages, Depends(get_runner)],
    index: Annotated[SimilarityIndex, Depends(get_index)],
    filters: Annotated[Filters, Depends(get_filters)],
    k: K = 10,
) -> Response:
    name, data = await read_upload(file, state.settings.max_upload_bytes)
    answer = (await runner.pool.arun(embed_task, [Payload(data=data, source=f"search:{name}")], died_embedding))[0]
    if isinstance(answer, str):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: {answer}")
    items = await _neighbours(state, index, answer["embedding"], k, filters)
    own = SearchResult(items=[], top3=[TagOut(label=label, confidence=c) for label, c in answer["top3"]],
                       verdict=Verdict(answer["verdict"])).model_dump_json(exclude={"items"})
    return clip_json.response(f'{{"items":{items},{own[1:]}')


async def _neighbours(state: AppState, index: SimilarityIndex, vector: np.ndarray, k: int, filters: Filters,
                      exclude: str | None = None) -> str:
    """The nearest clips as a JSON array of ``SimilarClip``: written by PostgreSQL where it
    is the store (``api.clip_json``), by the models otherwise."""
    found = await run_in_threadpool(_search, state, index, vector, k, filters, exclude)
    ids = [n.clip_id for n in found]
    if clip_json.written_by_database(state):
        texts = await read_db(state, clip_json.some, ids)
    else:
        texts = {clip_id: clip_out(clip).model_dump_json()
                 for clip_id, clip in (await read_db(state, repository.get_clips, ids)).items()}
    return "[" + ",".join(clip_json.with_score(texts[n.clip_id], round(n.score, 6)) for n in found
                          if n.clip_id in texts) + "]"


def _search(state: AppState, index: SimilarityIndex, vector: np.ndarray, k: int, filters: Filters,
            exclude: str | None) -> list[Neighbour]:
    """The index's nearest clips that pass the filters (a thread: a scan may take milliseconds)."""
    if not filters.any:
        return index.index.search(vector, k, exclude=exclude)
    with state.reads() as session:
        def matching(ids: list[str] | None = None, limit: int | None = None) -> set[str]:
            return repository.clip_ids(session, filters.label, filters.min_confidence, filters.verdict, ids, limit)

        # A filter few clips match is scanned exactly; a broad one filters the graph's candidates.
        among = matching(limit=EXACT_SUBSET + 1)
        if len(among) > EXACT_SUBSET:
            return index.index.search(vector, k, exclude=exclude, keep=matching)
        return index.index.search(vector, k, exclude=exclude, among=among)
