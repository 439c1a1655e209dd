"""AudioCNN: a ResNet-18-layout residual CNN over log-mel spectrograms.

Input (B, 1, 64 mel, T frames) in dB. Each input is first referenced to its own loudest
bin (so the level of a recording drops out) and floored ``TOP_DB`` below it. A 7×7/2
stem with max-pool, four stages of two basic residual blocks (32→64→128→256 channels,
stride 2 from the second stage on), global average pooling, dropout and a linear
classifier whose logits are divided by a fitted temperature (calibration). Fully
convolutional, so any T works; the global pool makes the output length-independent.

``forward(x, with_features=True)`` also returns the stem's and every stage's output:
the feature maps the page draws, and the global-pool embedding.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from tagger.features import TOP_DB

FEATURE_TAPS = ("stem", "stage1", "stage2", "stage3", "stage4")
WIDTHS = (32, 64, 128, 256)  # half ResNet-18's widths: about 7× cheaper per epoch


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None, name: str = "") -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        if taps is not None:
            taps[f"{name}.conv"] = out  # before the block's last activation
        out = F.relu(out)
        if taps is not None:
            taps[f"{name}.relu"] = out
        return out


class AudioCNN(nn.Module):
    input_mean: torch.Tensor
    input_std: torch.Tensor
    logit_temperature: torch.Tensor
    stages: nn.ModuleList

    def __init__(self, num_classes: int = 50, dropout: float = 0.5, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        # Fixed input normalisation, set from the training set's log-mel statistics
        # and saved with the weights, so callers feed plain dB values.
        self.register_buffer("input_mean", torch.tensor(0.0))
        self.register_buffer("input_std", torch.tensor(1.0))
        # Temperature scaling (Guo et al. 2017): logits are divided by it so confidences
        # match accuracy. 1 while training; `soundtag evaluate --calibrate` fits it on the
        # validation fold afterwards. It never changes which classes rank first.
        self.register_buffer("logit_temperature", torch.tensor(1.0))
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_ch, width, stride), BasicBlock(width, width)))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            # On the meta device (a checkpoint's load) there are no values to draw, and
            # torch's meta normal_ would import the compiler stack (2 s).
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN of each residual branch: every block starts as identity,
        # which trains faster and more stably from scratch.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor, with_features: bool = False,
                block_taps: dict[str, torch.Tensor] | None = None) -> Any:
        """``block_taps``, when given, also receives every residual block's output before
        and after its last activation, as ``stage{i}.block{k}.conv`` / ``.relu``."""
        features: dict[str, torch.Tensor] = {}
        x = reference_to_peak(x)
        x = self.stem((x - self.input_mean) / self.input_std)
        features["stem"] = x
        for i, stage in enumerate(self.stages, start=1):
            for k, block in enumerate(cast(nn.Sequential, stage)):
                x = block(x, block_taps, f"stage{i}.block{k}")
            features[f"stage{i}"] = x
        embedding = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self.classifier(self.dropout(embedding)) / self.logit_temperature
        if with_features:
            return logits, features, embedding
        return logits

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints and training runs from before calibration existed: temperature 1.
        state_dict.setdefault(prefix + "logit_temperature", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def reference_to_peak(x: torch.Tensor) -> torch.Tensor:
    """dB relative to each input's loudest bin, floored TOP_DB below it: level-invariant.

    Inside the model so that every caller (training crops, serving windows of a long
    clip) gets the same per-window reference without having to remember it.
    """
    return torch.clamp(x - x.amax(dim=(-2, -1), keepdim=True), min=-TOP_DB)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
