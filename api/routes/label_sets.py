"""Labels of your own: list, teach from stored clips, delete. (`soundtag teach` teaches from files.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status

from api.deps import AppState, get_state, require_api_key
from api.schemas import LabelSetList, LabelSetOut, TeachRequest
from tagger import label_set_store
from tagger.label_set_store import StoredSet
from tagger.label_sets import TeachError, TooFewExamples
from tagger.teaching import teach_from_clips

router = APIRouter(prefix="/api", tags=["label sets"])
SetName = Annotated[str, Path(min_length=1, max_length=64)]


def _out(s: StoredSet) -> LabelSetOut:
    return LabelSetOut(name=s.name, version=s.version, created_at=s.created_at, model_version=s.model_version,
                       labels=s.head.labels, examples=s.metrics.get("examples", {}),
                       cv_accuracy=s.metrics.get("cv_accuracy", 0.0),
                       cv_accuracy_by_label=s.metrics.get("cv_accuracy_by_label", {}))


@router.get("/label-sets", response_model=LabelSetList, summary="The label sets, each at its newest version")
def list_label_sets(state: Annotated[AppState, Depends(get_state)]) -> LabelSetList:
    with state.sessions() as session:
        return LabelSetList(items=[_out(s) for s in label_set_store.current_sets(session)])


@router.post("/label-sets/{name}/examples", response_model=LabelSetOut, dependencies=[Depends(require_api_key)],
             summary="Label stored clips as examples of a label; the set is taught again from all its examples",
             responses={401: {"description": "API key missing or wrong"},
                        422: {"description": "too few examples yet (they are kept), or clips without embeddings"},
                        503: {"description": "model not loaded"}})
def add_examples(name: SetName, body: TeachRequest, state: Annotated[AppState, Depends(get_state)]) -> LabelSetOut:
    if state.tagger is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded: {state.model_error}")
    with state.sessions() as session:
        try:
            taught = teach_from_clips(session, name, body.label, list(dict.fromkeys(body.clip_ids)),
                                      state.tagger.version)
        except TooFewExamples as exc:
            session.commit()  # the examples stay: the next ones complete the set
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"examples saved; {exc}") from None
        except TeachError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        session.commit()
        stored = next(s for s in label_set_store.current_sets(session) if s.name == name)
    out = _out(stored)
    assert taught.version == out.version
    return out


@router.delete("/label-sets/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(require_api_key)],
               summary="Delete a label set: every version, its examples and every clip's label in it",
               responses={401: {"description": "API key missing or wrong"}, 404: {"description": "no such set"}})
def delete_label_set(name: SetName, state: Annotated[AppState, Depends(get_state)]) -> Response:
    with state.sessions() as session:
        if not label_set_store.delete_set(session, name):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label set {name!r}")
        session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
