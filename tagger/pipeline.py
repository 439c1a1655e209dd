"""Bytes or files in, storable records out: the steps every entry point shares.

A batch of payloads with their ids and sources goes through ``decode_payloads`` →
``run_model`` → ``finish_records`` (``tagger.stages``: in turn in a pool process, or each
on its own thread beside a GPU). Every payload comes back as exactly one ``ClipRecord``, tagged or failed with a
reason. Nothing raises for bad input, whatever the exception: one clip's failure is
that clip's alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tagger import codec
from tagger.audio import AudioError, DecodedAudio, decode_bytes, decode_file, file_sha256, sha256_hex
from tagger.features import one_window_log_mel
from tagger.inference import HELD_SAMPLES, Tagger, TagResult, waveform_envelope
from tagger.records import CLIP_ID_MAX, ClipRecord, Payload, Status, clip_id_problem

log = logging.getLogger(__name__)


def features_row(result: TagResult) -> dict[str, Any]:
    """One clip's ``clip_features`` row (raises what ``features_rows`` puts in its place)."""
    row = features_rows([result])[0]
    if isinstance(row, Exception):
        raise row
    return row


def features_rows(results: list[TagResult]) -> list[dict[str, Any] | Exception]:
    """A batch's ``clip_features`` rows, each field encoded for all clips at once; a clip
    whose features cannot be encoded gets the error in its place."""
    fields = {
        "spectrogram": codec.encode_many([codec.spectrogram_arrays(r.spectrogram) for r in results]),
        "feature_maps": codec.encode_many([codec.feature_map_arrays(r.feature_maps) for r in results]),
        "waveform": codec.encode_many([codec.envelope_arrays(r.envelope) for r in results]),
        "embedding": codec.encode_many([codec.embedding_arrays(r.embedding) for r in results]),
    }
    rows: list[dict[str, Any] | Exception] = []
    for j, result in enumerate(results):
        blobs = {field: encoded[j] for field, encoded in fields.items()}
        error = next((b for b in blobs.values() if isinstance(b, Exception)), None)
        rows.append(error or {
            "codec_version": codec.VERSION, **blobs,
            "timeline": [{**w, "top3": [{"label": label, "confidence": c} for label, c in w["top3"]]}
                         for w in result.timeline] or None,
            "events": result.events,
        })
    return rows


@dataclass
class Decoded:
    """Payloads after decoding: one record each, plus the audio (and, when the decoder
    computed them, the model's input features) of those that decoded."""

    records: list[ClipRecord]
    audio: list[tuple[int, DecodedAudio]]
    features: list[torch.Tensor | None] | None = None  # aligned with ``audio``; None: longer than a window


Featurize = Callable[[DecodedAudio], torch.Tensor | None]
MapFn = Callable[[Callable[[Payload], "_Decoded"], list[Payload]], Iterable["_Decoded"]]
DecodeElsewhere = Callable[[list[Payload]], list["_Decoded"]]


@dataclass
class _Decoded:
    record: ClipRecord
    audio: DecodedAudio | None = None
    features: torch.Tensor | np.ndarray | None = None  # numpy while crossing from a decoding process


def decode_payloads(payloads: list[Payload], max_duration_s: float | None = None,
                    featurize: Featurize | None = None, map_fn: MapFn = map,
                    decode_elsewhere: DecodeElsewhere | None = None) -> Decoded:
    """Decode every payload (and compute its features with ``featurize``, if given).

    ``map_fn`` runs the per-payload work: ``map`` here, a thread pool's ``map`` in the
    stage runner (decoders and the log-mel release the GIL). ``decode_elsewhere`` decodes
    the payloads instead (``decode_chunk`` in the process pool: it needs no tagger), which
    computes the features there, on the CPU, and sends back no samples."""
    if decode_elsewhere is None:
        one = functools.partial(_decode_one, max_duration_s=max_duration_s, featurize=featurize)
        done = list(map_fn(one, payloads))
    else:
        done = decode_elsewhere(payloads)
    audio = [(i, d.audio) for i, d in enumerate(done) if d.audio is not None]
    if featurize is None and decode_elsewhere is None:
        return Decoded([d.record for d in done], audio)
    features = [None if d.features is None else torch.as_tensor(d.features) for d in done if d.audio is not None]
    return Decoded([d.record for d in done], audio, features)


def decode_for_model(p: Payload, max_duration_s: float | None) -> _Decoded:
    """A payload decoded in a decoding process (``decode_chunk``), with all that
    the tagging process needs of it computed there, on the CPU: its log-mel and waveform
    envelope. The samples stay behind: a 5 s clip's are 8× its log-mel, and receiving them
    was the largest piece of the tagging process's own work. The log-mel crosses as a
    numpy array (torch would pass each tensor through shared memory: a file per clip). A
    clip longer than a window goes as it was decoded: the tagging process streams it."""
    d = _decode_one(p, max_duration_s, featurize=one_window_log_mel)
    if d.audio is None or not isinstance(d.features, torch.Tensor):
        return d
    try:
        d.audio = d.audio.without_samples(waveform_envelope(d.audio.samples))
    except Exception as exc:  # broad on purpose: an unforeseen fault fails this clip, not the batch
        return _features_failed(d.record, "the waveform envelope", exc)
    d.features = d.features.numpy()
    return d


def decode_chunk(worker: Any, payloads: list[Payload], max_duration_s: float | None) -> list[_Decoded]:
    """``decode_for_model`` of each payload: the pool task of a process that decodes for
    the one that owns a GPU (``tagger.pool``; ``worker`` is unused: it needs no model; such
    a pool's processes run torch on one thread each, every clip's log-mel on its own core)."""
    return [decode_for_model(p, max_duration_s) for p in payloads]


def died_decoding(payload: Payload, how: str) -> list[_Decoded]:
    """A payload whose decoding process died on it twice: failed, saying so."""
    record = ClipRecord(clip_id=payload.clip_id or payload.sha256 or f"empty:{payload.source}"[:CLIP_ID_MAX],
                        source=payload.source, status=Status.FAILED, sha256=payload.sha256,
                        error=f"the decoding process died on this clip ({how}); nothing was tagged")
    return [_Decoded(record)]


def _decode_one(p: Payload, max_duration_s: float | None, featurize: Featurize | None = None) -> _Decoded:
    data = p.data if isinstance(p.data, (bytes, bytearray, memoryview)) else b""
    sha = p.sha256 or (sha256_hex(bytes(data)) if data else None)
    clip_id, problem = p.clip_id, p.error
    if clip_id is not None and (bad := clip_id_problem(clip_id)):
        problem, clip_id = problem or f"invalid clip id: {bad}", None
    if clip_id is None:
        # Empty payloads share one hash, so they get an id from where they came from.
        clip_id = sha or f"empty:{p.source}"[:CLIP_ID_MAX]
    rec = ClipRecord(clip_id=clip_id, source=p.source, status=Status.FAILED, sha256=sha, error=problem)
    if problem:
        return _Decoded(rec)
    try:
        if p.path:
            rec.sha256 = rec.sha256 or file_sha256(p.path)
            decoded = decode_file(p.path, max_duration_s, HELD_SAMPLES)
        else:
            decoded = decode_bytes(p.data, max_duration_s, HELD_SAMPLES)
    except OSError as exc:
        rec.error = f"cannot read {p.path}: {exc.strerror or exc}"
        return _Decoded(rec)
    except AudioError as exc:
        rec.error = str(exc)
        return _Decoded(rec)
    except Exception as exc:  # broad on purpose: an unforeseen fault fails this clip, not the batch
        log.exception("decoding %s failed unexpectedly", p.source)
        rec.error = f"decoding failed: {type(exc).__name__}: {exc}"[:2000]
        return _Decoded(rec)
    rec.sample_rate, rec.channels = decoded.sample_rate, decoded.channels
    rec.duration_s = round(decoded.duration_s, 4)
    return _with_features(_Decoded(rec, decoded), featurize) if featurize is not None else _Decoded(rec, decoded)


def _with_features(d: _Decoded, featurize: Featurize) -> _Decoded:
    if d.audio is None:
        return d
    try:
        d.features = featurize(d.audio)
    except Exception as exc:  # broad on purpose: as above
        return _features_failed(d.record, "the features", exc)
    return d


def _features_failed(rec: ClipRecord, what: str, exc: Exception) -> _Decoded:
    """The clip alone fails, saying why: an unforeseen fault computing what the model needs of it."""
    log.exception("computing %s of %s failed", what, rec.source)
    rec.error = f"computing features failed: {type(exc).__name__}: {exc}"[:2000]
    return _Decoded(rec)


@dataclass
class Tagged:
    """Decoded payloads with the model's answer for each clip that decoded."""

    decoded: Decoded
    results: list[TagResult | Exception]
    model_version: str


def run_model(tagger: Tagger, decoded: Decoded) -> Tagged:
    """The model step alone, so callers can overlap the encoding after it with the next batch."""
    clips = [a for _, a in decoded.audio]
    return Tagged(decoded, _tag_isolating_failures(tagger, clips, decoded.features), tagger.version)


def tag_one(tagger: Tagger, payload: Payload, max_duration_s: float | None) -> tuple[DecodedAudio, TagResult] | str:
    """One payload decoded and tagged, nothing stored: its audio and answer, or why there are none."""
    decoded = decode_payloads([payload], max_duration_s, tagger.features)
    if not decoded.audio:
        return decoded.records[0].error or "not audio"
    result = run_model(tagger, decoded).results[0]
    if isinstance(result, Exception):
        return f"tagging failed: {type(result).__name__}"
    return decoded.audio[0][1], result


def finish_records(tagged: Tagged) -> list[ClipRecord]:
    """Fill every record from the model's answers and encode the features for storage."""
    answered = [(i, r) for (i, _), r in zip(tagged.decoded.audio, tagged.results, strict=True)
                if not isinstance(r, Exception)]
    rows = dict(zip((i for i, _ in answered), _encode_isolating_failures([r for _, r in answered]), strict=True))
    for (i, _), result in zip(tagged.decoded.audio, tagged.results, strict=True):
        rec = tagged.decoded.records[i]
        if isinstance(result, Exception):
            rec.error = f"tagging failed: {type(result).__name__}: {result}"
            continue
        features = rows[i]
        if isinstance(features, Exception):
            log.error("encoding the features of %s failed: %s", rec.source, features)
            rec.error = f"storing features failed: {type(features).__name__}: {features}"[:2000]
            continue
        rec.status, rec.error = Status.TAGGED, None
        rec.model_version = tagged.model_version
        rec.top3 = result.top3
        rec.verdict = str(result.verdict)
        rec.features = features
    return tagged.decoded.records


def _encode_isolating_failures(results: list[TagResult]) -> list[dict[str, Any] | Exception]:
    """The batch's feature rows; if encoding the batch fails unexpectedly, clip by clip so
    one clip's fault is that clip's alone."""
    try:
        return features_rows(results)
    except Exception:  # broad on purpose: an encoding fault must not lose the other clips
        log.exception("encoding the features of a batch of %d clips failed; retrying one by one", len(results))
    out: list[dict[str, Any] | Exception] = []
    for result in results:
        try:
            out.extend(features_rows([result]))
        except Exception as exc:  # broad on purpose: this clip's alone
            out.append(exc)
    return out


def _tag_isolating_failures(tagger: Tagger, clips: list[DecodedAudio],
                            features: list[torch.Tensor | None] | None) -> list[TagResult | Exception]:
    """Tag a batch; if the batch fails, retry clip by clip so one bad clip fails alone."""
    if not clips:
        return []
    try:
        return list(tagger.tag(clips, features))
    except Exception:  # broad on purpose: a model error must not lose the other clips
        log.exception("batch of %d clips failed; retrying one by one", len(clips))
    out: list[TagResult | Exception] = []
    for n, clip in enumerate(clips):
        try:
            out.append(tagger.tag([clip], [features[n]] if features is not None else None)[0])
        except Exception as exc:  # broad on purpose: this clip's alone
            out.append(exc)
    return out
