"""How well the embedding finds sounds like this one: precision@10 by class, fold-5 queries.

Each clip of the fold asks for its 10 nearest other clips by cosine on the embedding the
product stores (``Tagger.tag`` of the decoded file); precision@10 is the share of them
with the clip's own class; per class, the mean over its clips. Two collections are
searched: the fold alone (8 clips per class, so at best 7/10 = 0.7), and all 2,000 clips
(40 per class; folds 1–4 trained the network, as a user's own collection would not have).

    python -m training.retrieval_eval --model tagger/assets/audiocnn-esc50.safetensors
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from tqdm import tqdm

from tagger.audio import decode_file
from tagger.inference import Tagger
from training.data import TEST_FOLD, read_esc50

K = 10


def embeddings(tagger: Tagger, paths: list, batch: int = 32) -> np.ndarray:
    rows = []
    for start in tqdm(range(0, len(paths), batch), desc="embedding", unit="batch"):
        clips = [decode_file(p) for p in paths[start : start + batch]]
        rows += [r.embedding for r in tagger.tag(clips)]
    return np.stack(rows)


def precision_at_k(queries: np.ndarray, collection: np.ndarray, query_targets: np.ndarray,
                   targets: np.ndarray, query_rows: np.ndarray, k: int = K) -> np.ndarray:
    """Per query: the share of its k nearest clips of the collection (cosine; itself, row
    ``query_rows[i]`` of the collection, left out) with its target."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    scores = unit(queries) @ unit(collection).T
    scores[np.arange(len(queries)), query_rows] = -np.inf
    nearest = np.argsort(-scores, axis=1)[:, :k]
    return (targets[nearest] == query_targets[:, None]).mean(axis=1)


def _report(per_clip: np.ndarray, query_targets: np.ndarray, class_names: list[str], best: float) -> dict[str, Any]:
    by_class = {class_names[c]: round(float(per_clip[query_targets == c].mean()), 3)
                for c in sorted(set(query_targets.tolist()))}
    ranked = sorted(by_class.items(), key=lambda kv: kv[1])
    return {"precision_at_10": round(float(per_clip.mean()), 3), "best_possible": best,
            "classes_at_or_above_0.6": sum(v >= 0.6 for v in by_class.values()),
            "worst_classes": dict(ranked[:5]), "best_classes": dict(ranked[-5:]), "by_class": by_class}


def measure(model_path: str, data_dir: str | None = None, fold: int = TEST_FOLD) -> dict[str, Any]:
    data = read_esc50(data_dir)
    tagger = Tagger.load(model_path, device="cpu")
    vectors = embeddings(tagger, [data.root / "audio" / f for f in data.files])
    idx = np.flatnonzero(data.folds == fold)
    queries, query_targets = vectors[idx], data.targets[idx]
    within = precision_at_k(queries, queries, query_targets, query_targets, np.arange(len(idx)))
    against_all = precision_at_k(queries, vectors, query_targets, data.targets, idx)
    per_class_in_fold = len(idx) / len(set(query_targets.tolist()))
    return {"model_version": tagger.version, "fold": fold, "queries": len(idx), "k": K,
            f"within_fold_{fold}": _report(within, query_targets, data.class_names, min(K, per_class_in_fold - 1) / K),
            "against_all_2000": _report(against_all, query_targets, data.class_names, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--fold", type=int, default=TEST_FOLD)
    args = parser.parse_args()
    report = measure(args.model, args.data_dir, args.fold)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "by_class"} if isinstance(v, dict) else v
                      for k, v in report.items()}, indent=1))


if __name__ == "__main__":
    main()
