"""Evaluate a checkpoint on one ESC-50 fold: top-1/top-3, per-class accuracy,
expected calibration error, a confusion-matrix PNG, fp32 vs autocast agreement.

Writes ``report.json`` and ``report.md`` (and ``confusion.png``) into ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from tagger.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from tagger.device import autocast_dtype, resolve_device
from training.data import load_spectrograms, read_esc50
from training.train import predict_probs


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def _plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 12))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(model_path, data_dir=None, out_dir="runs/evaluation", fold: int = 5,
             write_into_checkpoint: bool = False) -> dict:
    device = resolve_device("auto")
    ckpt = load_checkpoint(model_path, device)
    model = ckpt.model.to(memory_format=torch.channels_last)
    data = read_esc50(data_dir)
    specs = load_spectrograms(data)
    idx = np.flatnonzero(data.folds == fold)
    x, y = np.asarray(specs[idx]), data.targets[idx]

    t0 = time.perf_counter()
    probs = predict_probs(model, x, device)  # autocast where the hardware has it, as served
    seconds = time.perf_counter() - t0
    # Measure that mixed precision does not cost accuracy: the same fold in fp32.
    probs32 = _predict_fp32(model, x, device)

    pred = probs.argmax(1)
    top3 = np.argsort(-probs, 1)[:, :3]
    n = len(data.class_names)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    per_class = {data.class_names[c]: float((pred[y == c] == c).mean()) for c in range(n) if (y == c).any()}
    dtype = autocast_dtype(device)
    report = {
        "model": str(model_path),
        "model_version": ckpt.version,
        "fold": fold,
        "clips": int(len(idx)),
        "top1": float((pred == y).mean()),
        "top3": float((top3 == y[:, None]).any(1).mean()),
        "ece": expected_calibration_error(probs, y),
        "precision": str(dtype).replace("torch.", "") if dtype else "float32",
        "top1_fp32": float((probs32.argmax(1) == y).mean()),
        "argmax_agreement_vs_fp32": float((probs32.argmax(1) == pred).mean()),
        "ms_per_clip": 1000 * seconds / len(idx),
        "per_class": per_class,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot_confusion(confusion, data.class_names, out / "confusion.png")
    worst = sorted(per_class.items(), key=lambda kv: kv[1])[:8]
    (out / "report.md").write_text(
        f"# Evaluation of {ckpt.version} on ESC-50 fold {fold}\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| top-1 accuracy | {report['top1']:.4f} |\n| top-3 accuracy | {report['top3']:.4f} |\n"
        f"| expected calibration error (15 bins) | {report['ece']:.4f} |\n"
        f"| precision | {report['precision']} |\n| top-1 in fp32 | {report['top1_fp32']:.4f} |\n"
        f"| argmax agreement with fp32 | {report['argmax_agreement_vs_fp32']:.4f} |\n"
        f"| ms per clip (batch 64) | {report['ms_per_clip']:.1f} |\n\n"
        "Hardest classes: " + ", ".join(f"{k} {v:.2f}" for k, v in worst) + "\n\n"
        "![confusion matrix](confusion.png)\n"
    )
    if write_into_checkpoint:
        meta = read_metadata(model_path)
        metrics = {**meta["metrics"], **{k: report[k] for k in ("fold", "top1", "top3", "ece", "top1_fp32")}}
        save_checkpoint(model_path, ckpt.model.float().to("cpu"), ckpt.class_names, metrics, half=True)
    return report


@torch.inference_mode()
def _predict_fp32(model, x, device, batch_size: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.asarray(x[i : i + batch_size], dtype=np.float32)).to(device)
        out.append(torch.softmax(model(xb.contiguous(memory_format=torch.channels_last)).float(), -1).cpu().numpy())
    return np.concatenate(out)
