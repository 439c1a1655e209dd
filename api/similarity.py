"""Each API process's similarity index, kept in step with PostgreSQL, and the pool task
that embeds a searched-with file without storing it."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from tagger import codec
from tagger.pipeline import tag_one
from tagger.pool import Worker
from tagger.records import Payload
from tagger.repository import embeddings_after
from tagger.vector_index import VectorIndex

log = logging.getLogger("soundtag.api.similarity")
REFRESH_S = 1.0  # how often each API process reads what was tagged since: new clips are found within seconds
# A batch's rows carry the time it was tagged but become visible when its transaction
# commits, which may be later: each read looks back this far again.
LATE_COMMIT_S = 10.0


class SimilarityIndex:
    """The clips tagged by one model, in a ``VectorIndex``: loaded from PostgreSQL when the
    API starts, then every ``REFRESH_S`` what was tagged since, by a thread."""

    def __init__(self, sessions: sessionmaker[Session], model_version: str) -> None:
        self.sessions, self.model_version = sessions, model_version
        self.index = VectorIndex()
        self.loaded = threading.Event()  # the first full read is done
        self._newest: tuple[datetime, str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="similarity-index", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def catch_up(self) -> int:
        """Read what was tagged since the last read (all of it, the first time); returns
        how many clips were added or replaced."""
        seen = self._newest
        after = None
        if seen is not None:
            # Only a row tagged in the last LATE_COMMIT_S (by the clock; writers' clocks are
            # assumed within a second or two of this one) can still become visible; a look-back
            # from the newest row instead re-read the last burst of tagging every second, for ever.
            horizon = (datetime.now(UTC) - timedelta(seconds=LATE_COMMIT_S), "")
            after = min(seen, horizon)
        added = 0
        with self.sessions() as session:
            while True:
                rows = embeddings_after(session, self.model_version, after)
                # New to the index, or tagged again since the last read; a row read again in
                # the look-back is skipped (a clip tagged again whose commit came late keeps
                # its previous embedding until the API restarts: its answers hardly differ).
                fresh = [(clip_id, at, blob) for clip_id, at, blob in rows
                         if clip_id not in self.index or seen is None or (at, clip_id) > seen]
                added += self._add(fresh)
                if not rows:
                    break
                after = (rows[-1][1], rows[-1][0])
                if self._newest is None or after > self._newest:
                    self._newest = after
        return added

    def _add(self, rows: list[tuple[str, datetime, bytes]]) -> int:
        ids, vectors = [], []
        for clip_id, _, blob in rows:
            try:
                vector = codec.decode(blob)["embedding"]
            except (codec.CodecError, KeyError, ValueError) as exc:
                log.warning("clip %s: stored embedding unreadable (%s); it cannot be found by similarity", clip_id, exc)
                continue
            if not np.isfinite(vector).all() or not np.any(vector):
                continue
            ids.append(clip_id)
            vectors.append(vector)
        if ids:
            # The first load may take every core; later ones run beside requests.
            self.index.upsert(ids, np.stack(vectors), threads=1 if self.loaded.is_set() else 0)
        return len(ids)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                added = self.catch_up()
                if not self.loaded.is_set():
                    log.info("similarity index loaded: %d clips of model %s", len(self.index), self.model_version)
                    self.loaded.set()
                elif added:
                    log.debug("similarity index: %d clips added", added)
            except Exception as exc:  # broad on purpose: a database outage must not end the thread
                log.warning("similarity index not refreshed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            self._stop.wait(REFRESH_S)


def embed_task(worker: Worker, payloads: list[Payload]) -> dict | str:
    """A searched-with file tagged in a pool process and not stored: its embedding, top 3
    and verdict, or why there are none."""
    tagger = worker.pipeline()[0]
    assert worker.job is not None
    answer = tag_one(tagger, payloads[0], worker.job.max_duration_s)
    if isinstance(answer, str):
        return answer
    result = answer[1]
    return {"embedding": result.embedding.astype(np.float32), "top3": result.top3, "verdict": str(result.verdict),
            "model_version": tagger.version}


def died_embedding(payload: Payload, how: str) -> dict | str:
    return f"the tagging process died on this audio ({how}); nothing was searched"
