"""The figure that matters for labels of your own: few-shot on sounds the network never heard.

A network is trained on 40 ESC-50 classes (folds 1–4, the shipped recipe, the 10 classes
below left out altogether):

    soundtag train --out-dir runs/forty --exclude-classes frog,crow,chirping_birds,thunderstorm,coughing,\\
        drinking_sipping,can_opening,glass_breaking,engine,hand_saw --export training/teachers/forty-classes.safetensors

The 10 left-out classes (one in five of ESC-50's targets, two per category) are then taught
as a label set (``tagger.label_sets.teach``, what ``soundtag teach`` runs) from 5 and from
20 examples per class, and tested on their clips of the test fold: how many get their own
label (``unknown`` counts as wrong). The other 40 classes' clips of that fold are none of
the taught labels: how many get ``unknown``. Beside it, the same test with the shipped
network, which heard those classes in training. Each figure is the mean over ``DRAWS``
random draws of the examples.

``tune`` chooses the head's weight decay and ``unknown`` line on folds 1–4 only (examples
from folds 1–3, tested on fold 4, with the 40-class network): the pair with the best mean
of the two rates above. ``measure`` then reads fold 5 with the shipped constants.

    python -m training.few_shot tune --unheard training/teachers/forty-classes.safetensors
    python -m training.few_shot measure --unheard training/teachers/forty-classes.safetensors \\
        --heard tagger/assets/audiocnn-esc50.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagger.inference import Tagger
from tagger.label_sets import MIN_PROBABILITY, UNKNOWN, WEIGHT_DECAY, teach
from training.data import TEST_FOLD, read_esc50
from training.retrieval_eval import embeddings

UNHEARD = ("frog", "crow", "chirping_birds", "thunderstorm", "coughing", "drinking_sipping", "can_opening",
           "glass_breaking", "engine", "hand_saw")
SHOTS = (5, 20)
DRAWS = 5
WEIGHT_DECAYS = (1e-2, 1e-3, 1e-4, 1e-5)
MIN_PROBABILITIES = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class Embedded:
    model_version: str
    heard: bool  # the network was trained on the 10 classes
    vectors: np.ndarray
    labels: np.ndarray  # class names
    folds: np.ndarray


def embed_all(model_path: str, data_dir: str | None = None) -> Embedded:
    data = read_esc50(data_dir)
    tagger = Tagger.load(model_path, device="cpu")
    vectors = embeddings(tagger, [data.root / "audio" / f for f in data.files])
    return Embedded(tagger.version, all(c in tagger.class_names for c in UNHEARD), vectors,
                    np.array([data.class_names[t] for t in data.targets]), data.folds)


def evaluate(e: Embedded, example_folds: tuple[int, ...], test_fold: int, shots: int,
             weight_decay: float = WEIGHT_DECAY, min_probability: float = MIN_PROBABILITY) -> dict[str, float]:
    taught = np.isin(e.labels, UNHEARD)
    test_in, test_out = taught & (e.folds == test_fold), ~taught & (e.folds == test_fold)
    pool = taught & np.isin(e.folds, example_folds)
    right, refused, closed = [], [], []
    for draw in range(DRAWS):
        rng = np.random.default_rng(1000 * shots + draw)
        chosen = np.concatenate([rng.choice(np.flatnonzero(pool & (e.labels == c)), shots, replace=False)
                                 for c in UNHEARD])
        head = teach(e.vectors[chosen], e.labels[chosen].tolist(), seed=draw, weight_decay=weight_decay,
                     min_probability=min_probability, cross_validate=False)
        predicted = np.array([label for label, _ in head.predict(e.vectors[test_in])])
        right.append(np.mean(predicted == e.labels[test_in]))
        closed.append(np.mean(np.array(head.classes)[head.probabilities(e.vectors[test_in]).argmax(1)]
                              == e.labels[test_in]))
        refused.append(np.mean([label == UNKNOWN for label, _ in head.predict(e.vectors[test_out])]))
    return {"accuracy": round(float(np.mean(right)), 3), "accuracy_sd": round(float(np.std(right)), 3),
            "accuracy_without_unknown": round(float(np.mean(closed)), 3),
            "other_classes_unknown": round(float(np.mean(refused)), 3)}


def tune(unheard: str, data_dir: str | None = None) -> dict[str, Any]:
    e = embed_all(unheard, data_dir)
    rows: list[dict[str, Any]] = []
    for weight_decay, min_probability in itertools.product(WEIGHT_DECAYS, MIN_PROBABILITIES):
        runs = [evaluate(e, (1, 2, 3), 4, shots, weight_decay, min_probability) for shots in SHOTS]
        score = float(np.mean([(r["accuracy"] + r["other_classes_unknown"]) / 2 for r in runs]))
        rows.append({"weight_decay": weight_decay, "min_probability": min_probability, "score": round(score, 3),
                     **{f"{s}_shot": r for s, r in zip(SHOTS, runs, strict=True)}})
        print(json.dumps(rows[-1]))
    return {"best": max(rows, key=lambda r: r["score"]), "validated_on": "examples folds 1-3, test fold 4"}


def measure(unheard: str, heard: str, data_dir: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"classes": list(UNHEARD), "draws": DRAWS, "weight_decay": WEIGHT_DECAY,
                           "min_probability": MIN_PROBABILITY}
    for name, path in (("never_heard", unheard), ("heard", heard)):
        e = embed_all(path, data_dir)
        out[name] = {"model_version": e.model_version, "heard_these_classes": e.heard,
                     **{f"{s}_shot": evaluate(e, (1, 2, 3, 4), TEST_FOLD, s) for s in SHOTS}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tune", "measure"])
    parser.add_argument("--unheard", required=True, help="the network trained without the 10 classes")
    parser.add_argument("--heard", help="a network trained on all 50 (the shipped one): measure")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    if args.what == "tune":
        report = tune(args.unheard, args.data_dir)
    else:
        if not args.heard:
            parser.error("measure needs --heard")
        report = measure(args.unheard, args.heard, args.data_dir)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
