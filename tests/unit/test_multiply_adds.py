"""The core benchmark's count of the network's multiply-adds, which its GFLOP/s rests on."""

from __future__ import annotations

import torch

from deploy.benchmarks.bench_core import multiply_adds
from tagger.features import N_MELS, WINDOW_FRAMES
from tagger.network import AudioCNN


def test_counts_a_strided_convolution_and_a_linear_layer_by_hand():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 5, 7))
    # (1, 2, 8, 10) → conv (1, 3, 4, 5): 60 outputs × 2·3·3 inputs each; linear 7 × 60
    assert multiply_adds(model, torch.zeros(1, 2, 8, 10)) == 60 * 18 + 7 * 60


def test_grouped_convolutions_count_their_own_inputs_only():
    model = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert multiply_adds(model, torch.zeros(1, 4, 5, 5)) == 4 * 25 * 9


def test_the_served_layout_scales_with_the_batch_and_leaves_no_hooks_behind():
    model = AudioCNN().eval()
    one = multiply_adds(model, torch.zeros(1, 1, N_MELS, WINDOW_FRAMES))
    assert 240e6 < one < 250e6  # 246.5 M per 5 s window: the figure the benchmarks README gives
    assert multiply_adds(model, torch.zeros(2, 1, N_MELS, WINDOW_FRAMES)) == 2 * one
    assert all(not m._forward_hooks for m in model.modules())
