"""Clips' embeddings for "sounds like this": nearest neighbours by cosine.

An in-memory usearch index (HNSW graph over float16 vectors) kept by each API process;
PostgreSQL holds the embeddings and is the source of truth (``refresh_from`` reads what
is new), so the index is rebuilt on start and losing it loses nothing. Below
``EXACT_BELOW`` vectors a scan of all of them is faster than the graph and exact; a
search restricted to a set of clips (a label, a verdict) scans that set exactly when it
is small and otherwise asks the graph for more and filters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np
from usearch.index import Index

# Below this many vectors an exact scan is as fast as the graph and exact. One query for a
# stored clip, 2-core AMD EPYC, the graph at 128 candidates against usearch's exact scan of
# float16 vectors: p50 0.48 against 0.58 ms at 10,000; 0.72 / 0.91 at 20,000; 0.88 / 2.44 at
# 50,000.
EXACT_BELOW = 10_000
EXACT_SUBSET = 50_000  # a filter matching up to this many clips is scanned (~5 ms); a broader one filters the graph's
CONNECTIVITY = 32  # graph edges per vector
EXPANSION_ADD = 128  # candidates while inserting: build time against recall
# Candidates while searching, growing with the index so that recall@10 against an exact
# scan stays above 0.95 for what the routes ask: a stored clip (/similar) or a new sound
# like the stored ones (/search). `python -m deploy.benchmarks.run similar` (clustered
# synthetic vectors, 2-core AMD EPYC): at 100k, 64 candidates find all ten for both (1.0);
# at 1M, 128 give 0.999 and 0.995, 256 give 0.999 and 1.0 at p99 2.5–2.8 ms.
# The rule gives 128 at 100k and 404 at 1M: twice what those sizes needed. A sound like
# nothing stored has no neighbourhood to follow and is found less exactly (recall 0.78 at
# 100k with 128, about 0.5 at 1M with 404); that figure is reported, not chased.
EXPANSION_SEARCH = 128
EXPANSION_AT = 100_000  # the size EXPANSION_SEARCH is for
EXPANSION_GROWTH = 0.5  # candidates grow as (size / EXPANSION_AT) ** this: 404 at 1M, 1,280 at 10M
EXPANSION_MAX = 4096  # reached past 100M


def expansion_for(size: int) -> int:
    return int(min(EXPANSION_MAX, EXPANSION_SEARCH * max(1.0, size / EXPANSION_AT) ** EXPANSION_GROWTH))


Keep = Callable[[list[str]], set[str]]


@dataclass(frozen=True)
class Neighbour:
    clip_id: str
    score: float  # cosine similarity


class VectorIndex:
    """Thread-safe: the API's refresher adds while requests search."""

    def __init__(self) -> None:
        self._index: Index | None = None
        self._keys: dict[str, int] = {}
        self._ids: list[str] = []  # by key: keys are handed out in turn
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._keys

    def memory_bytes(self) -> int:
        return int(self._index.memory_usage) if self._index is not None else 0

    def upsert(self, clip_ids: list[str], vectors: np.ndarray, threads: int = 1) -> None:
        """Add clips' embeddings, replacing those of clips already in (re-tagged).
        ``threads``: 0 for every core (a first load), 1 beside requests."""
        if not clip_ids:
            return
        vectors = _unit(np.asarray(vectors, dtype=np.float32).reshape(len(clip_ids), -1))
        with self._lock:
            if self._index is None:
                self._index = Index(ndim=vectors.shape[1], metric="cos", dtype="f16", connectivity=CONNECTIVITY,
                                    expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
            elif vectors.shape[1] != self._index.ndim:
                raise ValueError(f"embeddings of {vectors.shape[1]} values, the index holds {self._index.ndim}")
            keys = np.empty(len(clip_ids), dtype=np.uint64)
            for n, clip_id in enumerate(clip_ids):
                key = self._keys.get(clip_id)
                if key is not None:
                    self._index.remove(key)
                else:
                    key = len(self._ids)
                    self._keys[clip_id] = key
                    self._ids.append(clip_id)
                keys[n] = key
            # A clip twice in one call: its last embedding.
            last = {int(k): n for n, k in enumerate(keys)}
            rows = np.fromiter(last.values(), dtype=np.int64)
            self._index.add(keys[rows], vectors[rows], threads=threads)

    def vector(self, clip_id: str) -> np.ndarray | None:
        with self._lock:
            key = self._keys.get(clip_id)
            if key is None or self._index is None:
                return None
            return np.asarray(self._index.get(key, dtype="f32"))

    def search(self, query: np.ndarray, k: int, exclude: str | None = None, among: Collection[str] | None = None,
               keep: Keep | None = None) -> list[Neighbour]:
        """The ``k`` clips nearest ``query`` (best first), leaving out ``exclude``, and every
        clip not in ``among`` (a set small enough to scan) or not kept by ``keep`` (which
        returns those of the candidates it keeps: a filter too broad to list)."""
        query = _unit(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        if k <= 0:
            return []
        count = k + 1 if keep is None else 4 * (k + 1)
        while True:
            with self._lock:
                if self._index is None:
                    return []
                if among is not None:
                    return self._scan(query, k, exclude, among)
                found, size = self._graph(query, count, exclude), len(self._keys)
            if keep is not None:  # outside the lock: it asks the database
                kept = keep([n.clip_id for n in found])
                found = [n for n in found if n.clip_id in kept]
            if len(found) >= k or count >= size:
                return found[:k]
            count *= 4

    def _graph(self, query: np.ndarray, count: int, exclude: str | None) -> list[Neighbour]:
        assert self._index is not None
        self._index.expansion_search = expansion_for(len(self._keys))  # type: ignore[misc]  # it has a setter
        matches = self._index.search(query, min(count, len(self._keys)), exact=len(self._keys) < EXACT_BELOW)
        found = []
        for key, distance in zip(matches.keys, matches.distances, strict=True):
            clip_id = self._ids[int(key)]
            if clip_id != exclude:
                found.append(Neighbour(clip_id, float(1.0 - distance)))
        return found

    def _scan(self, query: np.ndarray, k: int, exclude: str | None, among: Iterable[str]) -> list[Neighbour]:
        assert self._index is not None
        ids = [c for c in among if c in self._keys and c != exclude]
        if not ids:
            return []
        vectors = np.asarray(self._index.get(np.array([self._keys[c] for c in ids], dtype=np.uint64),
                                             dtype="f32")).reshape(len(ids), -1)
        scores = _unit(vectors) @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return [Neighbour(ids[i], float(scores[i])) for i in top]


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.isfinite(rows).all() or (norms == 0).any():
        raise ValueError("an embedding is zero or not finite")
    unit: np.ndarray = rows / norms
    return unit
