"""The teachers' averaged probabilities, computed once on fixed augmented views.

Distilling online runs every teacher on every batch, which costs more than the student's
own step. Here each training clip gets ``n_views`` views (band limit, short crop repeated,
circular shift: the augmentations that change what the clip sounds like) and the teachers
run once per view. Training then picks one view per clip and step, and masks and mixes it
on the fly; a mixed pair's target is the same mix of the two views' targets.

The views are drawn from their own generator, so a resumed run rebuilds the same ones and
reads the probabilities back from ``teacher_targets.pt`` instead of running the teachers again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

BATCH = 64


def fixed_views(x_train: torch.Tensor, n_views: int, band_p: float, crop_p: float, time_roll: bool,
                seed: int) -> torch.Tensor:
    """(n_views, N, 1, mels, frames) float16: each clip's views, the same for the same seed."""
    from training.train import crop_and_repeat
    from training.train import time_roll as roll

    variants, n = x_train.shape[0], x_train.shape[1]
    gen = torch.Generator().manual_seed(seed + 7919)  # apart from the training generator
    views = torch.empty((n_views, *x_train.shape[1:]), dtype=torch.float16)
    for v in range(n_views):
        band = torch.where(torch.rand(n, generator=gen) < band_p, torch.randint(1, variants, (n,), generator=gen), 0)
        for start in range(0, n, BATCH):
            idx = torch.arange(start, min(start + BATCH, n))
            x = crop_and_repeat(x_train[band[idx], idx].float(), crop_p, gen)
            if time_roll:
                x = roll(x, gen)
            views[v, idx] = x.half()
    return views


def teacher_targets(views: torch.Tensor, teacher_paths: tuple[str, ...], teachers: list, dtype,
                    device: torch.device, cache: Path) -> torch.Tensor:
    """(n_views, N, classes) float32: the teachers' averaged probabilities on each view."""
    from training.train import _teachers_probs

    key = {"teachers": list(teacher_paths), "shape": list(views.shape)}
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved["key"] == repr(key):
            return saved["probs"]
    n_views, n = views.shape[:2]
    probs = torch.empty((n_views, n, teachers[0].classifier.out_features))
    with tqdm(total=n_views * n, desc="teachers on fixed views", unit="view") as bar:
        for v in range(n_views):
            for start in range(0, n, BATCH):
                x = views[v, start : start + BATCH].float().to(device).contiguous(memory_format=torch.channels_last)
                probs[v, start : start + BATCH] = _teachers_probs(teachers, x, dtype).cpu()
                bar.update(len(x))
    tmp = cache.with_suffix(".tmp")
    torch.save({"key": repr(key), "probs": probs}, tmp)
    tmp.replace(cache)  # atomic, as last.pt
    return probs
