"""Model checkpoints: safetensors weights plus JSON metadata, never pickles.

A checkpoint holds the weights, the class names, the preprocessing settings it was
trained with, its evaluation figures and a version string. ``load_checkpoint``
refuses a checkpoint whose preprocessing differs from ``tagger.features``: training
and serving must agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, safe_open, save_file

from tagger.errors import CheckpointError, ModelNotFoundError
from tagger.features import PREPROCESSING
from tagger.network import AudioCNN

MISSING_MODEL_HELP = (
    "no trained model at {path}. Point SOUNDTAG_MODEL_PATH at a checkpoint "
    "(.safetensors) or train one with `soundtag train`."
)


@dataclass
class Checkpoint:
    model: AudioCNN
    class_names: list[str]
    version: str
    preprocessing: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict[str, Any])
    trained: bool = True
    sha256: str | None = None  # of the file it was loaded from (None: built in memory)


def save_checkpoint(
    path: str | Path,
    model: AudioCNN,
    class_names: list[str],
    metrics: dict[str, Any] | None = None,
    *,
    half: bool = True,
    trained: bool = True,
    name: str = "audiocnn-esc50",
) -> str:
    """Write weights (fp16 by default: half the size, no measurable accuracy change)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(state[k].float().numpy().tobytes())
    # Random weights must never pass for a model: their version says so.
    version = f"{name if trained else 'untrained-' + name}-{digest.hexdigest()[:10]}"
    metadata = {
        "format": "soundtag-checkpoint/1",
        "version": version,
        "class_names": json.dumps(class_names),
        "preprocessing": json.dumps(PREPROCESSING, sort_keys=True),
        "metrics": json.dumps(metrics or {}),
        "trained": json.dumps(trained),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return version


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(MISSING_MODEL_HELP.format(path=path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a soundtag checkpoint: {exc}") from None
    if meta.get("format") != "soundtag-checkpoint/1":
        raise CheckpointError(f"{path} is not a soundtag checkpoint (no soundtag metadata)")
    return {
        "version": meta["version"],
        "class_names": json.loads(meta["class_names"]),
        "preprocessing": json.loads(meta["preprocessing"]),
        "metrics": json.loads(meta.get("metrics", "{}")),
        "trained": json.loads(meta.get("trained", "true")),
    }


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    meta = read_metadata(path)
    if meta["preprocessing"] != json.loads(json.dumps(PREPROCESSING, sort_keys=True)):
        raise CheckpointError(
            f"{path} was trained with preprocessing {meta['preprocessing']}, "
            f"but this soundtag computes {PREPROCESSING}; retrain with `soundtag train`."
        )
    # Built on the meta device, the layers get no initial weights drawn only to be
    # overwritten (a third of a load's time); the checkpoint's tensors become the weights.
    with torch.device("meta"):
        model = AudioCNN(num_classes=len(meta["class_names"]))
    data = Path(path).read_bytes()  # read once: hashed (the engine's export cache key) and parsed
    state = {k: v.float() if v.is_floating_point() else v for k, v in load(data).items()}
    try:
        model.load_state_dict(state, assign=True)  # strict: every weight and buffer, nothing else
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the AudioCNN layout: {exc}") from None
    model.to(device).eval()
    return Checkpoint(
        model=model,
        class_names=meta["class_names"],
        version=meta["version"],
        preprocessing=meta["preprocessing"],
        metrics=meta["metrics"],
        trained=meta["trained"],
        sha256=hashlib.sha256(data).hexdigest(),
    )
