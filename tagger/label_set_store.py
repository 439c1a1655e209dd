"""Label sets in PostgreSQL: their versions, their examples, and every clip's label in each.

A new version of a set labels every stored clip tagged by the model it was taught on, from
the clip's stored embedding (``relabel_all``); ``label_records`` labels the clips of each
batch as ``repository.save_clips`` stores them, so every entry point gets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from tagger import codec
from tagger.label_sets import LabelHead
from tagger.records import ClipRecord, Status
from tagger.tables import Clip, ClipCustomLabel, ClipFeatures, LabelSet, LabelSetExample

RELABEL_BATCH = 5_000
_heads: dict[tuple[str, int], LabelHead] = {}  # (name, version) → head: a version never changes


@dataclass
class StoredSet:
    name: str
    version: int
    model_version: str
    head: LabelHead
    created_at: Any
    metrics: dict[str, Any]


def _stored(row: LabelSet) -> StoredSet:
    key = (row.name, row.version)
    if key not in _heads:
        _heads[key] = LabelHead.from_bytes(row.head, list(row.classes), row.min_probability)
    return StoredSet(row.name, row.version, row.model_version, _heads[key], row.created_at, dict(row.metrics))


def current_sets(session: Session, model_version: str | None = None) -> list[StoredSet]:
    """The newest version of every set (of those taught on ``model_version``, if given)."""
    newest = select(LabelSet.name, func.max(LabelSet.version).label("version")).group_by(LabelSet.name).subquery()
    query = select(LabelSet).join(newest, (LabelSet.name == newest.c.name) & (LabelSet.version == newest.c.version))
    if model_version is not None:
        query = query.where(LabelSet.model_version == model_version)
    return [_stored(row) for row in session.scalars(query.order_by(LabelSet.name))]


def save_set(session: Session, name: str, head: LabelHead, model_version: str) -> int:
    """Store ``head`` as the set's next version; returns the version."""
    version = (session.scalar(select(func.max(LabelSet.version)).where(LabelSet.name == name)) or 0) + 1
    session.add(LabelSet(name=name, version=version, model_version=model_version, classes=head.classes,
                         head=head.to_bytes(), min_probability=head.min_probability, metrics=head.metrics))
    session.flush()
    return version


def delete_set(session: Session, name: str) -> bool:
    """Every version, its examples and every clip's label in it; False when there was none."""
    found = session.scalar(select(func.count()).select_from(LabelSet).where(LabelSet.name == name))
    session.execute(delete(LabelSet).where(LabelSet.name == name))
    session.execute(delete(LabelSetExample).where(LabelSetExample.label_set == name))
    session.execute(delete(ClipCustomLabel).where(ClipCustomLabel.label_set == name))
    return bool(found)


def set_examples(session: Session, name: str, examples: list[tuple[str, str, np.ndarray]],
                 replace: bool) -> None:
    """(example id, label, embedding) for the set; ``replace`` drops the ones it had."""
    if replace:
        session.execute(delete(LabelSetExample).where(LabelSetExample.label_set == name))
    for example, label, embedding in examples:
        session.merge(LabelSetExample(label_set=name, example=example, label=label,
                                      embedding=np.asarray(embedding, dtype=np.float16).tobytes()))
    session.flush()


def examples_of(session: Session, name: str) -> tuple[list[str], np.ndarray]:
    """The set's examples: their labels and embeddings."""
    rows = session.execute(select(LabelSetExample.label, LabelSetExample.embedding)
                           .where(LabelSetExample.label_set == name).order_by(LabelSetExample.example)).all()
    if not rows:
        return [], np.zeros((0, 0), np.float32)
    return [r[0] for r in rows], np.stack([np.frombuffer(r[1], np.float16).astype(np.float32) for r in rows])


def stored_embeddings(session: Session, clip_ids: list[str]) -> dict[str, tuple[str | None, np.ndarray]]:
    """Tagged clips' (model version, embedding) by id."""
    rows = session.execute(select(Clip.id, Clip.model_version, ClipFeatures.embedding)
                           .join(ClipFeatures, ClipFeatures.clip_id == Clip.id)
                           .where(Clip.id.in_(clip_ids), Clip.status == Status.TAGGED.value))
    return {clip_id: (version, codec.decode(blob)["embedding"]) for clip_id, version, blob in rows}


def relabel_all(session: Session, stored: StoredSet) -> int:
    """Label every stored clip of the set's model with this version; returns how many."""
    session.execute(delete(ClipCustomLabel).where(ClipCustomLabel.label_set == stored.name))
    done, after = 0, ""
    while True:
        rows = session.execute(select(Clip.id, ClipFeatures.embedding)
                               .join(ClipFeatures, ClipFeatures.clip_id == Clip.id)
                               .where(Clip.model_version == stored.model_version, Clip.status == Status.TAGGED.value,
                                      Clip.id > after)
                               .order_by(Clip.id).limit(RELABEL_BATCH)).all()
        if not rows:
            return done
        ids = [r[0] for r in rows]
        labels = stored.head.predict(np.stack([codec.decode(r[1])["embedding"] for r in rows]))
        session.execute(insert(ClipCustomLabel), [
            {"clip_id": i, "label_set": stored.name, "version": stored.version, "label": label, "confidence": conf}
            for i, (label, conf) in zip(ids, labels, strict=True)])
        done, after = done + len(rows), ids[-1]


def label_records(session: Session, records: list[ClipRecord]) -> None:
    """Label the tagged records of a batch being stored in every current set of their model
    (``record.custom`` is set too, for the stream's events)."""
    tagged = [r for r in records if r.status == Status.TAGGED and r.features is not None]
    if not tagged:
        return
    session.execute(delete(ClipCustomLabel).where(ClipCustomLabel.clip_id.in_([r.clip_id for r in tagged])))
    by_model: dict[str, list[ClipRecord]] = {}
    for r in tagged:
        r.custom = []
        by_model.setdefault(r.model_version or "", []).append(r)
    rows = []
    for model_version, group in by_model.items():
        sets = current_sets(session, model_version)
        if not sets:
            continue
        vectors = np.stack([codec.decode(r.features["embedding"])["embedding"] for r in group if r.features])
        for stored in sets:
            for r, (label, conf) in zip(group, stored.head.predict(vectors), strict=True):
                r.custom.append({"label_set": stored.name, "label": label, "confidence": conf})
                rows.append({"clip_id": r.clip_id, "label_set": stored.name, "version": stored.version,
                             "label": label, "confidence": conf})
    if rows:
        session.execute(insert(ClipCustomLabel), rows)
