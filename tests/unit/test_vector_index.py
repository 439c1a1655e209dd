"""The similarity index: exact below its threshold, the graph above it, and the same
answers either way on what matters (recall against an exact scan)."""

import numpy as np
import pytest

from tagger.vector_index import VectorIndex


def _clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Vectors around the same 50 centres whatever the seed: a new sound like the stored ones."""
    centres = np.random.default_rng(0).standard_normal((50, dim))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


def _exact(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return list(np.argsort(-(unit @ (query / np.linalg.norm(query))))[:k])


def test_nearest_first_without_the_clip_itself_and_a_re_tagged_clip_replaced():
    index = VectorIndex()
    index.upsert(["a", "b", "c"], np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], np.float32))
    found = index.search(np.array([1, 0, 0], np.float32), 2, exclude="a")
    assert [n.clip_id for n in found] == ["b", "c"] and found[0].score == pytest.approx(0.9939, abs=1e-3)
    index.upsert(["c"], np.array([[1, 0.05, 0]], np.float32))  # tagged again: its new embedding
    assert len(index) == 3 and index.search(np.array([1, 0, 0], np.float32), 1, exclude="a")[0].clip_id == "c"
    assert [n.clip_id for n in index.search(np.array([1, 0, 0], np.float32), 5, among={"b", "zzz"})] == ["b"]


def test_the_graph_finds_what_an_exact_scan_finds():
    vectors = _clustered(20_000)
    index = VectorIndex()
    index.upsert([f"c{i}" for i in range(len(vectors))], vectors)
    queries = _clustered(200, seed=1)
    recall = np.mean([len({int(n.clip_id[1:]) for n in index.search(q, 10)} & set(_exact(vectors, q, 10))) / 10
                      for q in queries])
    assert recall >= 0.95
    # A stored clip asks for its neighbours without itself (/similar).
    stored = [len({int(n.clip_id[1:]) for n in index.search(vectors[i], 10, exclude=f"c{i}")}
                  & set(_exact(vectors, vectors[i], 11)[1:])) / 10 for i in range(0, 20_000, 100)]
    assert np.mean(stored) >= 0.95
    # A filter too broad to list filters the graph's candidates, widening them until k are kept.
    def even(ids: list[str]) -> set[str]:
        return {c for c in ids if int(c[1:]) % 2 == 0}

    found = index.search(queries[0], 10, keep=even)
    assert len(found) == 10 and all(int(n.clip_id[1:]) % 2 == 0 for n in found)
    assert [n.clip_id for n in found] == [n.clip_id for n in index.search(queries[0], 40) if n.clip_id in
                                          even([n.clip_id for n in index.search(queries[0], 40)])][:10]


def test_bad_embeddings_are_refused():
    with pytest.raises(ValueError, match="zero or not finite"):
        VectorIndex().upsert(["x"], np.zeros((1, 8), np.float32))
