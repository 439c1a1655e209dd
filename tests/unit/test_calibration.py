"""Temperature scaling: the fit recovers a known temperature, never changes rankings,
and an old checkpoint without a temperature still loads (as temperature 1)."""

from __future__ import annotations

import numpy as np
import torch

from tagger.network import AudioCNN
from training.calibration import cross_fitted_ece, expected_calibration_error, fit_temperature, softmax


def _sampled(true_temperature: float, n: int = 4000, classes: int = 10, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / T): T is the calibrating temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    p = softmax(logits, true_temperature)
    targets = np.array([rng.choice(classes, p=row) for row in p])
    return logits, targets


def test_fit_recovers_the_temperature_that_generated_the_labels():
    for true_t in (0.6, 1.0, 2.5):
        logits, targets = _sampled(true_t)
        assert abs(fit_temperature(logits, targets) - true_t) < 0.1 * true_t


def test_calibration_lowers_ece_and_keeps_every_ranking():
    logits, targets = _sampled(2.0)
    t = fit_temperature(logits, targets)
    before = expected_calibration_error(softmax(logits), targets)
    after = expected_calibration_error(softmax(logits, t), targets)
    assert after < before / 2
    assert np.array_equal(np.argsort(-logits, 1), np.argsort(-softmax(logits, t), 1))
    assert cross_fitted_ece(logits, targets) < before / 2


def test_expected_calibration_error_of_perfect_and_overconfident_predictions():
    targets = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[targets], targets) == 0.0
    wrong_and_sure = np.eye(2)[1 - targets]
    assert expected_calibration_error(wrong_and_sure, targets) == 1.0


def test_the_model_divides_its_logits_by_the_temperature_and_loads_old_state():
    torch.manual_seed(0)
    model = AudioCNN(num_classes=5).eval()
    x = torch.randn(2, 1, 128, 64)
    with torch.inference_mode():
        plain = model(x)
        model.logit_temperature.fill_(0.5)
        assert torch.allclose(model(x), plain * 2, atol=1e-5)
    old_state = {k: v for k, v in model.state_dict().items() if k != "logit_temperature"}
    fresh = AudioCNN(num_classes=5)
    fresh.load_state_dict(old_state)  # a checkpoint from before calibration existed
    assert float(fresh.logit_temperature) == 1.0
