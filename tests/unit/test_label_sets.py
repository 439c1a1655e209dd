"""The label-set head: refusals, warnings, cross-validation and 'unknown'."""

import numpy as np
import pytest

from tagger.label_sets import BACKGROUND, UNKNOWN, LabelHead, TooFewExamples, check_examples, teach


def _examples(per_label: int, labels=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    centres = {label: rng.standard_normal(32) for label in labels}
    x = np.stack([centres[label] + 0.3 * rng.standard_normal(32) for label in labels for _ in range(per_label)])
    return x.astype(np.float32), [label for label in labels for _ in range(per_label)], centres


def test_too_few_examples_or_one_label_is_refused_and_fewer_than_20_warned():
    with pytest.raises(TooFewExamples, match=r"at least 5 examples; too few: a \(4\)"):
        check_examples(["a"] * 4 + ["b"] * 5)
    with pytest.raises(TooFewExamples, match="one label alone"):
        check_examples(["a"] * 6)
    with pytest.raises(TooFewExamples, match="no labels"):
        check_examples([BACKGROUND] * 6)
    assert check_examples(["a"] * 5 + ["b"] * 25) == ["a: 5 examples; 20 or more make a steadier label"]


def test_a_head_learns_separable_labels_and_says_unknown_for_background_and_far_sounds():
    x, y, centres = _examples(8, ("a", "b", BACKGROUND))
    head = teach(x, y)
    assert head.labels == ["a", "b"] and head.classes[-1] == BACKGROUND
    assert head.metrics["cv_accuracy"] >= 0.95 and head.metrics["examples"] == {"a": 8, "b": 8, BACKGROUND: 8}
    assert head.predict(centres["a"][None])[0][0] == "a"
    assert head.predict(centres[BACKGROUND][None])[0][0] == UNKNOWN
    again = LabelHead.from_bytes(head.to_bytes(), head.classes, head.min_probability)
    assert np.allclose(again.probabilities(x), head.probabilities(x))
