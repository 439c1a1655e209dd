"""Labels of your own: a small head on the stored embeddings, taught from examples.

A label set is a multinomial logistic regression on L2-normalised embeddings (the
network's, 256 values): one class per label, and ``background`` ("none of these") when
examples of it were given. A clip gets the set's most probable label, or ``unknown`` when
that is the background or its probability is below ``min_probability``. It needs no audio:
a set applies to every stored clip from its stored embedding, in milliseconds per thousand.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

BACKGROUND = "background"  # the folder (or label) that means "none of these"
UNKNOWN = "unknown"  # what a clip gets when no label of the set fits
MIN_EXAMPLES = 5  # per label: fewer cannot be taught
FEW_EXAMPLES = 20  # per label: fewer is taught with a warning
MIN_PROBABILITY = 0.4  # below this, the best label does not fit: unknown (training.few_shot tune, folds 1-4)
WEIGHT_DECAY = 1e-3  # L2 on the weights: a few examples per label must not be memorised (ditto)
CV_FOLDS = 5


class TeachError(ValueError):
    """The examples cannot make a label set; the message says why."""


class TooFewExamples(TeachError):
    """Not yet: more examples (or another label) would make a set."""


@dataclass
class LabelHead:
    classes: list[str]  # the labels, then BACKGROUND when it was taught
    weight: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    min_probability: float = MIN_PROBABILITY
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [c for c in self.classes if c != BACKGROUND]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = _unit(embeddings) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return probs

    def predict(self, embeddings: np.ndarray) -> list[tuple[str, float]]:
        """Each embedding's label and its probability, or (``unknown``, the best probability)."""
        probs = self.probabilities(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.weight.shape[1]))
        out = []
        for row in probs:
            best = int(row.argmax())
            label = self.classes[best]
            fits = label != BACKGROUND and row[best] >= self.min_probability
            out.append((label if fits else UNKNOWN, round(float(row[best]), 4)))
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, classes: list[str], min_probability: float) -> LabelHead:
        with np.load(io.BytesIO(blob)) as arrays:
            return cls(classes, arrays["weight"], arrays["bias"], min_probability)


def check_examples(labels: list[str]) -> list[str]:
    """Raise ``TeachError`` when a label has too few examples; return the warnings."""
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    taught = [label for label in counts if label != BACKGROUND]
    if not taught:
        raise TooFewExamples("no labels to teach: give one folder (or label) per sound, each with examples")
    few = {label: n for label, n in counts.items() if n < MIN_EXAMPLES}
    if few:
        raise TooFewExamples("each label needs at least {} examples; too few: {}".format(
            MIN_EXAMPLES, ", ".join(f"{label} ({n})" for label, n in few.items())))
    if len(counts) < 2:
        raise TooFewExamples(f"one label alone cannot be taught: add another, or {BACKGROUND!r} examples of "
                             "other sounds")
    return [f"{label}: {n} examples; {FEW_EXAMPLES} or more make a steadier label" for label, n in counts.items()
            if n < FEW_EXAMPLES]


def teach(embeddings: np.ndarray, labels: list[str], seed: int = 0, weight_decay: float = WEIGHT_DECAY,
          min_probability: float = MIN_PROBABILITY, cross_validate: bool = True) -> LabelHead:
    """A head fitted on all the examples, with its cross-validated accuracy per label in
    ``metrics`` (each example predicted by a head that never saw it)."""
    check_examples(labels)
    x = _unit(np.asarray(embeddings, dtype=np.float32))
    classes = sorted(set(labels) - {BACKGROUND}) + ([BACKGROUND] if BACKGROUND in labels else [])
    y = np.array([classes.index(label) for label in labels])
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    metrics: dict[str, Any] = {"examples": counts}
    if cross_validate:
        predicted = np.empty(len(y), dtype=np.int64)
        unknown = classes.index(BACKGROUND) if BACKGROUND in classes else -1
        folds = min(CV_FOLDS, int(np.bincount(y).min()))
        for k, held in enumerate(_stratified_folds(y, folds, seed)):
            train = np.setdiff1d(np.arange(len(y)), held)
            weight, bias = _fit(x[train], y[train], len(classes), seed + k, weight_decay)
            head = LabelHead(classes, weight, bias, min_probability)
            # A background example that comes out unknown is right: that is what background means.
            predicted[held] = [classes.index(label) if label != UNKNOWN else unknown
                               for label, _ in head.predict(x[held])]
        per_label = {c: round(float((predicted[y == i] == i).mean()), 3) for i, c in enumerate(classes)}
        metrics |= {"cv_folds": folds, "cv_accuracy": round(float((predicted == y).mean()), 3),
                    "cv_accuracy_by_label": per_label}
    weight, bias = _fit(x, y, len(classes), seed, weight_decay)
    return LabelHead(classes, weight, bias, min_probability, metrics)


def _fit(x: np.ndarray, y: np.ndarray, classes: int, seed: int,
         weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # Balanced: a label with many examples must not crowd out one with few.
    counts = torch.bincount(yt, minlength=classes).float()
    weights = (len(yt) / (classes * counts.clamp(min=1)))
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xt), yt, weight=weights)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        for i, m in enumerate(members):
            parts[i % folds].append(int(m))
    return [np.array(sorted(p)) for p in parts]


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: np.ndarray = rows / np.maximum(norms, 1e-12)
    return unit
