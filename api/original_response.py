"""The ``POST /inference`` response of the original service, rebuilt from one TagResult.

Shape kept for compatibility: ``predictions`` (top 3 of ``{"class", "confidence"}``),
``visualization`` (per layer ``{"shape", "values"}``, the channel mean of its feature
map, under the original's layer names: ``conv1``, ``layer1``…``layer4`` and every
residual block's ``layerN.blockK.conv`` / ``layerN.blockK.relu``), ``input_spectrogram``
(``{"shape", "values"}``, the clip's real length), ``waveform`` (``{"values",
"sample_rate", "duration"}``: every (len // 8000)-th sample, as the original did).
"""

from __future__ import annotations

import numpy as np

from tagger.audio import DecodedAudio
from tagger.features import SAMPLE_RATE
from tagger.inference import TagResult

WAVEFORM_POINTS = 8000


def _array(a: np.ndarray) -> dict:
    a = np.nan_to_num(np.asarray(a, dtype=np.float32))
    return {"shape": list(a.shape), "values": a.tolist()}


def original_layer_name(name: str) -> str:
    """soundtag's ``stem`` / ``stageN[.blockK.…]`` → the original's ``conv1`` / ``layerN[.blockK.…]``."""
    return "conv1" if name == "stem" else name.replace("stage", "layer", 1)


def inference_response(clip: DecodedAudio, result: TagResult, layer_maps: dict[str, np.ndarray]) -> dict:
    samples = clip.samples
    step = max(1, len(samples) // WAVEFORM_POINTS)
    return {
        "predictions": [{"class": label, "confidence": conf} for label, conf in result.top3],
        "visualization": {original_layer_name(name): _array(mean) for name, mean in layer_maps.items()},
        "input_spectrogram": _array(result.spectrogram),
        "waveform": {
            "values": samples[::step].astype(np.float32).tolist(),
            "sample_rate": SAMPLE_RATE,
            "duration": len(samples) / SAMPLE_RATE,
        },
    }
