"""Evaluate a checkpoint on one ESC-50 fold: top-1/top-3, per-class accuracy,
expected calibration error, a confusion-matrix PNG, fp32 vs autocast agreement;
optionally fit the temperature that calibrates its confidences (``calibrate=True``).

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
from training.calibration import cross_fitted_ece, expected_calibration_error, fit_temperature, softmax
from training.data import load_spectrograms, read_esc50
from training.train import predict_logits


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
             write_into_checkpoint: bool = False, calibrate: bool = False) -> dict:
    device = resolve_device("auto")
    ckpt = load_checkpoint(model_path, device)
    model = ckpt.model.to(memory_format=torch.channels_last)
    data = read_esc50(data_dir)
    specs = load_spectrograms(data)
    idx = np.flatnonzero(data.folds == fold)
    x, y = np.asarray(specs[idx]), data.targets[idx]

    t0 = time.perf_counter()
    logits = predict_logits(model, x, device)  # autocast where the hardware has it, as served
    seconds = time.perf_counter() - t0
    temperature = float(model.logit_temperature)
    calibration = dict(ckpt.metrics.get("calibration", {}))
    if calibrate:
        raw = logits * temperature  # the logits before any earlier calibration
        # Rounded to fp16 as the checkpoint stores it, so the figures are the file's.
        temperature = float(torch.tensor(fit_temperature(raw, y)).half())
        model.logit_temperature.fill_(temperature)
        logits = raw / temperature
        calibration = {
            "temperature": temperature,
            "fitted_on_fold": fold,
            "ece_before": expected_calibration_error(softmax(raw), y),
            "ece_cross_fitted": cross_fitted_ece(raw, y),
        }
    probs = softmax(logits)
    # Measure that mixed precision does not cost accuracy: the same fold in fp32.
    probs32 = softmax(predict_logits(model, x, device, autocast=False))

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
        "mean_confidence": float(probs.max(1).mean()),
        "temperature": temperature,
        "calibration": calibration,
        "precision": str(dtype).replace("torch.", "") if dtype else "float32",
        "top1_fp32": float((probs32.argmax(1) == y).mean()),
        "argmax_agreement_vs_fp32": float((probs32.argmax(1) == pred).mean()),
        "ms_per_clip": 1000 * seconds / len(idx),
        "per_class": per_class,
    }
    if write_into_checkpoint:
        # The temperature is part of the weights, so a calibrated model gets a new version.
        meta = read_metadata(model_path)
        keys = ("fold", "top1", "top3", "ece", "top1_fp32", "mean_confidence", "calibration")
        metrics = {**meta["metrics"], **{k: report[k] for k in keys}}
        report["model_version"] = save_checkpoint(
            model_path, ckpt.model.float().to("cpu"), ckpt.class_names, metrics, half=True
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot_confusion(confusion, data.class_names, out / "confusion.png")
    worst = sorted(per_class.items(), key=lambda kv: kv[1])[:8]
    (out / "report.md").write_text(
        f"# Evaluation of {report['model_version']} on ESC-50 fold {fold}\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| top-1 accuracy | {report['top1']:.4f} |\n| top-3 accuracy | {report['top3']:.4f} |\n"
        f"| expected calibration error (15 bins) | {report['ece']:.4f} |\n"
        f"| mean top-1 confidence | {report['mean_confidence']:.4f} |\n"
        f"| logit temperature | {temperature:.4f} |\n"
        + (f"| ECE before calibration | {calibration['ece_before']:.4f} |\n"
           f"| ECE, temperature fitted on the other half of the fold | {calibration['ece_cross_fitted']:.4f} |\n"
           if calibration else "")
        + f"| precision | {report['precision']} |\n| top-1 in fp32 | {report['top1_fp32']:.4f} |\n"
        f"| argmax agreement with fp32 | {report['argmax_agreement_vs_fp32']:.4f} |\n"
        f"| ms per clip (batch 64) | {report['ms_per_clip']:.1f} |\n\n"
        "Hardest classes: " + ", ".join(f"{k} {v:.2f}" for k, v in worst) + "\n\n"
        + ("The temperature was fitted on this fold, so the ECE above is in-sample; the "
           "cross-fitted figure is the honest one.\n\n" if calibration.get("fitted_on_fold") == fold else "")
        + "![confusion matrix](confusion.png)\n"
    )
    return report

