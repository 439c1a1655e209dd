"""The figure that matters for labels of your own: few-shot on sounds the network never heard.

A network is trained on 40 ESC-50 classes (folds 1–4, the shipped recipe, the 10 classes
below left out altogether):

    soundtag train --out-dir runs/forty --exclude-classes frog,crow,chirping_birds,thunderstorm,coughing,\\
        drinking_sipping,can_opening,glass_breaking,engine,hand_saw --export training/teachers/forty-classes.safetensors

The 10 left-out classes (one in five of ESC-50's targets, two per category) are then taught
as a label set (``tagger.label_sets.teach``, what ``soundtag teach`` runs) from 5 and from
20 examples per class drawn from folds 1–4, and tested on their 80 fold-5 clips. Beside it,
the same test with the shipped network, which heard those classes in training. Each
figure is the mean over ``DRAWS`` random draws of the examples.

    python -m training.few_shot --unheard training/teachers/forty-classes.safetensors \\
        --heard tagger/assets/audiocnn-esc50.safetensors
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from tagger.inference import Tagger
from tagger.label_sets import UNKNOWN, teach
from training.data import TEST_FOLD, read_esc50
from training.retrieval_eval import embeddings

UNHEARD = ("frog", "crow", "chirping_birds", "thunderstorm", "coughing", "drinking_sipping", "can_opening",
           "glass_breaking", "engine", "hand_saw")
SHOTS = (5, 20)
DRAWS = 5


def measure(model_path: str, data_dir: str | None = None) -> dict[str, Any]:
    data = read_esc50(data_dir)
    idx = np.flatnonzero([data.class_names[t] in UNHEARD for t in data.targets])
    tagger = Tagger.load(model_path, device="cpu")
    vectors = embeddings(tagger, [data.root / "audio" / data.files[i] for i in idx])
    labels = np.array([data.class_names[t] for t in data.targets[idx]])
    folds = data.folds[idx]
    test = folds == TEST_FOLD
    out: dict[str, Any] = {"model_version": tagger.version, "heard_these_classes": all(c in tagger.class_names
                                                                                       for c in UNHEARD)}
    for shots in SHOTS:
        accuracy, closed, unknown = [], [], []
        for draw in range(DRAWS):
            rng = np.random.default_rng(1000 * shots + draw)
            chosen = np.concatenate([rng.choice(np.flatnonzero((labels == c) & ~test), shots, replace=False)
                                     for c in UNHEARD])
            head = teach(vectors[chosen], labels[chosen].tolist(), seed=draw)
            predicted = [label for label, _ in head.predict(vectors[test])]
            accuracy.append(np.mean([p == t for p, t in zip(predicted, labels[test], strict=True)]))
            unknown.append(np.mean([p == UNKNOWN for p in predicted]))
            best = np.array(head.classes)[head.probabilities(vectors[test]).argmax(1)]
            closed.append(np.mean(best == labels[test]))
        out[f"{shots}_shot"] = {"accuracy": round(float(np.mean(accuracy)), 3),
                                "accuracy_sd": round(float(np.std(accuracy)), 3),
                                "accuracy_without_unknown": round(float(np.mean(closed)), 3),
                                "unknown_share": round(float(np.mean(unknown)), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unheard", required=True, help="the network trained without the 10 classes")
    parser.add_argument("--heard", required=True, help="a network trained on all 50 (the shipped one)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    report = {"classes": list(UNHEARD), "test": f"their fold-{TEST_FOLD} clips", "draws": DRAWS,
              "never_heard": measure(args.unheard, args.data_dir), "heard": measure(args.heard, args.data_dir)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
