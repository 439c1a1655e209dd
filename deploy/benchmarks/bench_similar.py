"""The similarity index (issue 48): at 100,000 and 1,000,000 stored embeddings (synthetic:
clustered 256-value vectors, as the network's are), the time and memory to build it the
way an API process loads it, recall@10 against an exact scan of the same vectors, and the
latency of one query (p50, p99), graph against exact scan in the same run."""

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


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)


SWEEP = (1024, 2048, 3072, 4096)  # candidates tried at each size: what recall each buys, and its cost


def _sweep(index: VectorIndex, queries: np.ndarray, truths: list[set[int]], label: str) -> dict:
    """Recall@10 and p99 of the same queries with other candidate counts (the graph is the same)."""
    figures: dict = {}
    saved = vector_index.EXPANSION_SEARCH, vector_index.EXPANSION_MAX
    try:
        for candidates in SWEEP:
            vector_index.EXPANSION_SEARCH = vector_index.EXPANSION_MAX = candidates
            ms, recall = [], []
            for q, truth in zip(queries, truths, strict=True):
                t = time.perf_counter()
                found = index.search(q, 10)
                ms.append((time.perf_counter() - t) * 1e3)
                recall.append(len({int(f.clip_id[1:]) for f in found} & truth) / 10)
            figures[f"{label}_with_{candidates}_recall_at_10"] = round(float(np.mean(recall)), 3)
            figures[f"{label}_with_{candidates}_query_p99_ms"] = round(percentile(ms, 99), 2)
    finally:
        vector_index.EXPANSION_SEARCH, vector_index.EXPANSION_MAX = saved
    return figures


def run(quick: bool = False) -> dict:
    sizes = [20_000] if quick else [int(s) for s in os.environ.get(SIZES_SWITCH, "100000,1000000").split(",")]
    queries = clustered(200, seed=99)
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
        graph_ms, exact_ms, recall = [], [], []
        truths = []
        for q in queries:
            t = time.perf_counter()
            found = index.search(q, 10)
            graph_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            truth = np.argpartition(-(unit @ (q / np.linalg.norm(q))), 10)[:10]
            exact_ms.append((time.perf_counter() - t) * 1e3)
            truths.append(set(truth.tolist()))
            recall.append(len({int(f.clip_id[1:]) for f in found} & truths[-1]) / 10)
        label = f"{n // 1000}k"
        figures[f"{label}_candidates"] = vector_index.expansion_for(n)
        if n >= vector_index.EXACT_BELOW:
            figures |= _sweep(index, queries, truths, label)
        figures |= {
            f"{label}_build_s": round(build_s, 1),
            f"{label}_build_s_per_million": round(build_s * 1e6 / n, 1),
            f"{label}_index_mb": round(index.memory_bytes() / 2**20),
            f"{label}_index_mb_per_million": round(index.memory_bytes() / 2**20 * 1e6 / n),
            f"{label}_recall_at_10": round(float(np.mean(recall)), 3),
            f"{label}_query_p50_ms": round(percentile(graph_ms, 50), 2),
            f"{label}_query_p99_ms": round(percentile(graph_ms, 99), 2),
            f"{label}_exact_scan_p50_ms": round(percentile(exact_ms, 50), 2),
            f"{label}_exact_scan_p99_ms": round(percentile(exact_ms, 99), 2),
        }
        del index, vectors, unit
    return figures
