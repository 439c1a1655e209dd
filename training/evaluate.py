"""Evaluate a checkpoint on one ESC-50 fold through the tagger's own inference, under the
conditions users meet: full clips, 1 s and 2 s excerpts, −20 dB and −40 dB, through an
8 kHz and a 16 kHz sample rate, 5.25 s and 12 s long clips. Per condition: top-1, top-3,
expected calibration error and the share of answers wrong at ≥ 0.8 confidence.

``calibrate=True`` fits the logit temperature on the evaluated fold with every condition
mixed in (so a hard input gets a lower confidence) and writes it into ``temperature_to``;
it refuses the test fold. Writes ``report.json``, ``report.md`` and ``confusion.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tagger.audio import DecodedAudio, decode_file
from tagger.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from tagger.features import SAMPLE_RATE
from tagger.inference import Tagger
from training.calibration import expected_calibration_error, fit_temperature, logits_of, softmax
from training.data import TEST_FOLD, read_esc50, through_rate

CONFIDENT = 0.8


def loudest(seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    """The excerpt of that length holding the most energy: what a person would cut."""

    def cut(x: np.ndarray) -> np.ndarray:
        n = int(seconds * SAMPLE_RATE)
        energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        start = int(np.argmax(energy[n:] - energy[:-n])) if len(x) > n else 0
        return x[start : start + n]

    return cut


def lengthened(seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    """The recording continued by repeating itself up to that length."""
    return lambda x: np.tile(x, -(-int(seconds * SAMPLE_RATE) // len(x)))[: int(seconds * SAMPLE_RATE)]


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "full clip": lambda x: x,
    "1 s excerpt": loudest(1.0),
    "2 s excerpt": loudest(2.0),
    "-20 dB": lambda x: x * np.float32(0.1),
    "-40 dB": lambda x: x * np.float32(0.01),
    "through 8 kHz": lambda x: through_rate(x, 8_000),
    "through 16 kHz": lambda x: through_rate(x, 16_000),
    "5.25 s long": lengthened(5.25),
    "12 s long": lengthened(12.0),
}


def condition_probabilities(tagger: Tagger, clips: list[np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """Per condition, (clips, classes) probabilities from ``Tagger.tag`` itself."""
    out = {}
    for name, transform in tqdm(CONDITIONS.items(), desc="conditions", unit="condition"):
        probs = []
        for i in range(0, len(clips), batch):
            decoded = [DecodedAudio(np.ascontiguousarray(transform(x), dtype=np.float32), SAMPLE_RATE, 1)
                       for x in clips[i : i + batch]]
            probs += [r.probabilities for r in tagger.tag(decoded)]
        out[name] = np.stack(probs)
    return out


def _figures(probs: np.ndarray, y: np.ndarray) -> dict:
    conf, pred = probs.max(1), probs.argmax(1)
    return {
        "top1": float((pred == y).mean()),
        "top3": float((np.argsort(-probs, 1)[:, :3] == y[:, None]).any(1).mean()),
        "ece": expected_calibration_error(probs, y),
        "mean_confidence": float(conf.mean()),
        "wrong_confident": float(((pred != y) & (conf >= CONFIDENT)).mean()),
    }


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


def evaluate(model_path, data_dir=None, out_dir="runs/evaluation", fold: int = TEST_FOLD,
             write_into_checkpoint: bool = False, calibrate: bool = False,
             temperature_to: str | Path | None = None, limit: int | None = None) -> dict:
    if calibrate and fold == TEST_FOLD:
        raise SystemExit(f"fold {TEST_FOLD} is the test fold: fit the temperature on one of folds 1–4 "
                         "(a model trained without it, e.g. `soundtag train --val-fold 4`)")
    tagger = Tagger.load(model_path, device="auto", batch_size=64)
    data = read_esc50(data_dir)
    idx = np.flatnonzero(data.folds == fold)[:limit]
    y = data.targets[idx]
    clips = [decode_file(data.root / "audio" / data.files[i]).samples for i in idx]

    t0 = time.perf_counter()
    probs = condition_probabilities(tagger, clips)
    seconds = time.perf_counter() - t0
    temperature = float(tagger.model.logit_temperature)
    calibration: dict = {}
    if calibrate:
        # Log-probabilities times the current temperature are the logits up to a constant
        # per clip (exact for one window, the mean over windows for long clips).
        logits = np.concatenate([logits_of(p, temperature) for p in probs.values()])
        targets = np.tile(y, len(probs))
        fitted = float(torch.tensor(fit_temperature(logits, targets)).half())
        calibration = {"temperature": fitted, "fitted_on_fold": fold, "fitted_with": str(model_path),
                       "conditions": list(CONDITIONS),
                       "ece_before": expected_calibration_error(softmax(logits), targets),
                       "ece_after": expected_calibration_error(softmax(logits, fitted), targets)}
        probs = {k: softmax(logits_of(p, temperature), fitted) for k, p in probs.items()}
        temperature = fitted
        target = temperature_to or (model_path if write_into_checkpoint else None)
        if target:
            _write_temperature(target, fitted, calibration)

    conditions = {name: _figures(p, y) for name, p in probs.items()}
    full = probs["full clip"]
    pred = full.argmax(1)
    n = len(data.class_names)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    per_class = {data.class_names[c]: float((pred[y == c] == c).mean()) for c in range(n) if (y == c).any()}
    report = {
        "model": str(model_path),
        "model_version": tagger.version,
        "fold": fold,
        "clips": len(idx),
        **conditions["full clip"],
        "conditions": conditions,
        "temperature": temperature,
        "calibration": calibration,
        "device": str(tagger.device),
        "ms_per_clip_condition": 1000 * seconds / (len(idx) * len(CONDITIONS)),
        "per_class": per_class,
    }
    if write_into_checkpoint and not (calibrate and not temperature_to):
        meta = read_metadata(model_path)
        keys = ("fold", "top1", "top3", "ece", "mean_confidence", "conditions")
        metrics = {**meta["metrics"], **{k: report[k] for k in keys}}
        ckpt = load_checkpoint(model_path)
        report["model_version"] = save_checkpoint(model_path, ckpt.model, ckpt.class_names, metrics, half=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot_confusion(confusion, data.class_names, out / "confusion.png")
    (out / "report.md").write_text(_markdown(report))
    return report


def evaluate_ensemble(model_paths: list[str], data_dir=None, out_dir="runs/evaluation-ensemble",
                      fold: int = TEST_FOLD, limit: int | None = None) -> dict:
    """The same conditions for several models' averaged probabilities (each through its own
    tagger and temperature): the teachers' ensemble of the model card."""
    data = read_esc50(data_dir)
    idx = np.flatnonzero(data.folds == fold)[:limit]
    y = data.targets[idx]
    clips = [decode_file(data.root / "audio" / data.files[i]).samples for i in idx]
    summed: dict[str, np.ndarray] = {}
    for path in model_paths:
        tagger = Tagger.load(path, device="auto", batch_size=64)
        if tagger.class_names != data.class_names:
            raise SystemExit(f"{path} has other classes than ESC-50")
        for name, p in condition_probabilities(tagger, clips).items():
            summed[name] = summed.get(name, 0) + p
    conditions = {name: _figures(p / len(model_paths), y) for name, p in summed.items()}
    report = {"models": [str(p) for p in model_paths], "fold": fold, "clips": len(idx), **conditions["full clip"],
              "conditions": conditions}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(f"# Ensemble of {len(model_paths)} on ESC-50 fold {fold}\n\n"
                                   + "\n".join(f"- {p}" for p in model_paths) + "\n\n"
                                   + robustness_table(conditions))
    return report


def _write_temperature(path: str | Path, temperature: float, calibration: dict) -> None:
    ckpt = load_checkpoint(path)
    ckpt.model.logit_temperature.fill_(temperature)
    metrics = {**read_metadata(path)["metrics"], "calibration": calibration}
    save_checkpoint(path, ckpt.model, ckpt.class_names, metrics, half=True)


def robustness_table(conditions: dict) -> str:
    rows = ["| condition | top-1 | top-3 | ECE | wrong at ≥ 0.8 |", "|---|---|---|---|---|"]
    for name, f in conditions.items():
        rows.append(f"| {name} | {f['top1']:.1%} | {f['top3']:.1%} | {f['ece']:.3f} | {f['wrong_confident']:.1%} |")
    return "\n".join(rows) + "\n"


def _markdown(report: dict) -> str:
    worst = sorted(report["per_class"].items(), key=lambda kv: kv[1])[:8]
    cal = report["calibration"]
    return (
        f"# Evaluation of {report['model_version']} on ESC-50 fold {report['fold']}\n\n"
        f"{report['clips']} clips through the tagger's own inference ({report['device']}), "
        f"logit temperature {report['temperature']:.3f}.\n\n"
        + robustness_table(report["conditions"])
        + (f"\nTemperature fitted here on all conditions: ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} "
           "(in-sample).\n" if cal else "")
        + "\nHardest classes (full clips): " + ", ".join(f"{k} {v:.2f}" for k, v in worst) + "\n\n"
        + "![confusion matrix](confusion.png)\n"
    )
