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
from tagger.pipeline import tag_one
from tagger.pool import Worker
from tagger.records import Payload

WAVEFORM_POINTS = 8000


def _array(a: np.ndarray) -> dict:
    a = np.nan_to_num(np.asarray(a, dtype=np.float32))
    return {"shape": list(a.shape), "values": a.tolist()}


def original_layer_name(name: str) -> str:
    """soundtag's ``stem`` / ``stageN[.blockK.…]`` → the original's ``conv1`` / ``layerN[.blockK.…]``."""
    return "conv1" if name == "stem" else name.replace("stage", "layer", 1)


def inference_response(clip: DecodedAudio, result: TagResult, layer_maps: dict[str, np.ndarray]) -> dict:
    # A recording too long to hold was streamed: its envelope's peaks stand in for its samples.
    samples = clip.samples if clip.held_whole else result.envelope[1]
    step = max(1, len(samples) // WAVEFORM_POINTS)
    return {
        "predictions": [{"class": label, "confidence": conf} for label, conf in result.top3],
        "visualization": {original_layer_name(name): _array(mean) for name, mean in layer_maps.items()},
        "input_spectrogram": _array(result.spectrogram),
        "waveform": {
            "values": samples[::step].astype(np.float32).tolist(),
            "sample_rate": SAMPLE_RATE,
            "duration": clip.duration_s,
        },
    }


def inference_task(worker: Worker, payloads: list[Payload]) -> dict | str:
    """The answer for one clip, in a pool process (a decoder's crash costs the request,
    not the server); a string says why there is none."""
    tagger = worker.pipeline()[0]
    assert worker.job is not None
    answer = tag_one(tagger, payloads[0], worker.job.max_duration_s)
    if isinstance(answer, str):
        return answer
    audio, result = answer
    return inference_response(audio, result, tagger.layer_maps(audio))


def died_answering(payload: Payload, how: str) -> dict | str:
    return f"the tagging process died on this audio ({how}); nothing was tagged"
