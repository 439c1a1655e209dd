"""The similarity index (issue 48): at 100,000 and 1,000,000 stored embeddings (synthetic:
clustered 256-value vectors, as the network's are), the time and memory to build it the
way an API process loads it, and for three kinds of query, recall@10 against an exact scan
of the same vectors and the latency of one query (p50, p99), graph against exact scan in
the same run:

- ``stored``: a stored clip, left out of its own answer (what ``/similar`` asks);
- ``new``: a new sound like the stored ones (their clusters, fresh noise: what ``/search``
  asks with a recording of a kind the collection holds);
- ``unlike``: a sound like none of them (clusters no stored vector belongs to), where every
  stored vector is about as far and the graph has nothing to follow: the worst case.

Each kind is also asked with other candidate counts (``SWEEP``), which is how the index's
rule (``tagger.vector_index.expansion_for``) was chosen."""

from __future__ import annotations

import os
import time

import numpy as np

from deploy.benchmarks.common import percentile
from tagger import vector_index
from tagger.vector_index import VectorIndex

DIM = 256
LOAD_BATCH = 10_000  # rows per read, as SimilarityIndex loads them
SIZES_SWITCH = "SOUNDTAG_TEST_BENCH_SIZES"  # e.g. "100000": one size only


def clustered(n: int, seed: int, centres_seed: int = 0) -> np.ndarray:
    """``n`` vectors around 1,000 centres (those of ``centres_seed``), with noise as wide as
    the centres' spread."""
    centres = np.random.default_rng(centres_seed).standard_normal((1000, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)


SWEEP = (64, 128, 256, 512, 1024, 2048, 3072, 4096)  # candidates tried: what recall each buys, and its cost
QUERIES = 200


def _asked(index: VectorIndex, queries: list[tuple[np.ndarray, str | None, set[int]]]) -> tuple[list, float]:
    """Each query's milliseconds, and the mean recall@10 against its exact answer."""
    ms, recall = [], []
    for q, exclude, truth in queries:
        t = time.perf_counter()
        found = index.search(q, 10, exclude=exclude)
        ms.append((time.perf_counter() - t) * 1e3)
        recall.append(len({int(f.clip_id[1:]) for f in found} & truth) / 10)
    return ms, float(np.mean(recall))


def _sweep(index: VectorIndex, queries: list[tuple[np.ndarray, str | None, set[int]]], label: str) -> dict:
    """Recall@10 and p99 of the same queries with other candidate counts (the graph is the same)."""
    figures: dict = {}
    saved = vector_index.EXPANSION_SEARCH, vector_index.EXPANSION_MAX
    try:
        for candidates in SWEEP:
            vector_index.EXPANSION_SEARCH = vector_index.EXPANSION_MAX = candidates
            ms, recall = _asked(index, queries)
            figures[f"{label}_with_{candidates}_recall_at_10"] = round(recall, 3)
            figures[f"{label}_with_{candidates}_query_p99_ms"] = round(percentile(ms, 99), 2)
    finally:
        vector_index.EXPANSION_SEARCH, vector_index.EXPANSION_MAX = saved
    return figures


def run(quick: bool = False) -> dict:
    sizes = [20_000] if quick else [int(s) for s in os.environ.get(SIZES_SWITCH, "100000,1000000").split(",")]
    figures: dict = {}
    for n in sizes:
        vectors = clustered(n, seed=n)
        index = VectorIndex()
        t0 = time.perf_counter()
        for start in range(0, n, LOAD_BATCH):
            ids = [f"c{i}" for i in range(start, min(n, start + LOAD_BATCH))]
            index.upsert(ids, vectors[start : start + LOAD_BATCH], threads=0)
        build_s = time.perf_counter() - t0
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        stored = np.random.default_rng(5).choice(n, QUERIES, replace=False)
        kinds: dict[str, list[tuple[np.ndarray, str | None]]] = {"stored": [(vectors[i], f"c{i}") for i in stored],
                 "new": [(q, None) for q in clustered(QUERIES, seed=99)],
                 "unlike": [(q, None) for q in clustered(QUERIES, seed=99, centres_seed=1)]}
        label = f"{n // 1000}k"
        figures[f"{label}_candidates"] = vector_index.expansion_for(n)
        figures |= {
            f"{label}_build_s": round(build_s, 1),
            f"{label}_build_s_per_million": round(build_s * 1e6 / n, 1),
            f"{label}_index_mb": round(index.memory_bytes() / 2**20),
            f"{label}_index_mb_per_million": round(index.memory_bytes() / 2**20 * 1e6 / n),
        }
        for kind, asked in kinds.items():
            queries, exact_ms = [], []
            for q, exclude in asked:
                t = time.perf_counter()
                scores = unit @ (q / np.linalg.norm(q))
                if exclude is not None:
                    scores[int(exclude[1:])] = -np.inf
                truth = np.argpartition(-scores, 10)[:10]
                exact_ms.append((time.perf_counter() - t) * 1e3)
                queries.append((q, exclude, set(truth.tolist())))
            graph_ms, recall = _asked(index, queries)
            figures |= {
                f"{label}_{kind}_recall_at_10": round(recall, 3),
                f"{label}_{kind}_query_p50_ms": round(percentile(graph_ms, 50), 2),
                f"{label}_{kind}_query_p99_ms": round(percentile(graph_ms, 99), 2),
                f"{label}_{kind}_exact_scan_p50_ms": round(percentile(exact_ms, 50), 2),
            }
            if n >= vector_index.EXACT_BELOW:
                figures |= _sweep(index, queries, f"{label}_{kind}")
        del index, vectors, unit
    return figures
