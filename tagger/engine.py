"""Inference engines: what runs the network's forward pass for serving.

- ``torch``: eager PyTorch, channels-last, bf16 on CPUs with AVX-512 BF16 and full fp32
  on CUDA (``inference_dtype``). The only engine on a GPU, and the one training validates
  with (``forward``).
- ``onnxruntime``: the same network exported to ONNX at load time and run by ONNX
  Runtime's CPU engine in fp32 (batch norm folded into the convolutions, blocked NCHWc
  layouts). On CPU its answers match eager fp32 to about 1e-5 and it needs less CPU per
  clip (the benchmarks README has the comparison), so ``auto`` picks it there. The export
  of a checkpoint loaded from a file can be kept in a folder (the commands use
  ``SOUNDTAG_CACHE_DIR``/onnx): it was two thirds of a process's start-up, which every
  ingest process, worker and API pays. The exported graph also reduces each feature tap
  to what is stored of it (``summarize_tap``), so serving copies out a few maps per tap
  instead of whole taps.

Every engine returns torch tensors shaped like ``AudioCNN.forward``'s output, and the same
per-clip summaries of the taps (``summarized``), so the rest of the inference core does
not know which one ran.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch

from tagger import __version__
from tagger.device import cpu_cores, inference_dtype
from tagger.features import N_MELS, WINDOW_FRAMES
from tagger.network import FEATURE_TAPS

log = logging.getLogger(__name__)

EngineName = Literal["auto", "torch", "onnxruntime"]
TOP_K_CHANNELS = 4  # strongest channels kept per feature tap, besides the channel mean
# Each tap as stored, per clip of a batch: its channel mean (H, W), its TOP_K_CHANNELS
# strongest channels (k, H, W) and their indices (k,) as int16.
Summaries = dict[str, dict[str, list[np.ndarray]]]
SUMMARY_PARTS = ("mean", "channels", "channel_index")
# The exported graph's outputs, by name: ONNX Runtime computes only what the asked-for ones need.
SUMMARY_OUTPUTS = tuple(f"{tap}.{part}" for tap in FEATURE_TAPS for part in SUMMARY_PARTS)
_FULL_OUTPUTS = ("logits", *FEATURE_TAPS, "embedding")
_SUMMARIZED_OUTPUTS = ("logits", "embedding", *SUMMARY_OUTPUTS)
# Part of the export cache's file name: a new value for every change of the exported graph.
EXPORT_LAYOUT = "summaries1"


def default_threads() -> int:
    """Intra-op threads for the model: one on a two-core machine (the pipeline's decode
    and store threads use the other core, and one thread per forward wastes nothing on
    synchronisation); past that, all but one core, leaving one for decoding and storing."""
    cores = cpu_cores()
    return 1 if cores <= 2 else cores - 1


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op thread count for the calling thread (it is per thread), restored
    afterwards: a caller's own setting (a training loop, a notebook) is left as it was."""
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


@torch.inference_mode()
def forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, *, with_features: bool = False,
            block_taps: dict[str, torch.Tensor] | None = None) -> Any:
    """The torch forward pass, for serving and for validation while training: channels-last,
    in ``inference_dtype`` (bf16 on CPUs that have it, fp32 on CUDA)."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()  # lets the copy overlap with the previous batch's compute
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    dtype = inference_dtype(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return model(x, with_features=with_features, block_taps=block_taps)


def summarize_tap(fm: torch.Tensor, k: int = TOP_K_CHANNELS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tap's (B, C, H, W) activations → its channel mean (B, H, W), its k strongest
    channels by mean activation (B, k, H, W), strongest first, and their indices (B, k).

    Torch operations that run eagerly (the torch engine, any device and dtype, with fp32
    accumulation) and export to ONNX alike (the ONNX Runtime engine runs them in its graph)."""
    idx = torch.topk(fm.mean(dim=(2, 3), dtype=torch.float32), min(k, fm.shape[1]), dim=1).indices
    top = torch.gather(fm, 1, idx[:, :, None, None].expand(-1, -1, fm.shape[2], fm.shape[3]))
    return fm.mean(dim=1, dtype=torch.float32), top, idx


def _as_summaries(taps: Mapping[str, tuple[np.ndarray, ...]]) -> Summaries:
    """Each tap's (channel means, strongest channels, their indices) of a batch, in
    ``SUMMARY_PARTS`` order, as per-clip lists; the indices as int16."""
    return {name: dict(zip(SUMMARY_PARTS, (list(mean), list(top), list(idx.astype(np.int16))), strict=True))
            for name, (mean, top, idx) in taps.items()}


def summarize_feature_maps(feats: dict[str, torch.Tensor], k: int = TOP_K_CHANNELS) -> Summaries:
    """Each tap of a batch reduced where it is (the model's own channels-last, maybe bf16
    or CUDA tensor); only the few maps kept are converted and copied to the host."""
    out = {}
    for name, fm in feats.items():
        mean, top, idx = summarize_tap(fm, k)
        out[name] = (mean.cpu().numpy(), top.float().contiguous().cpu().numpy(), idx.cpu().numpy())
    return _as_summaries(out)


class Engine(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, with_features: bool) -> Any:
        """Logits, or (logits, {tap: feature map}, embedding) with ``with_features``."""
        ...

    def summarized(self, x: torch.Tensor) -> tuple[torch.Tensor, Summaries, torch.Tensor]:
        """(logits, each tap as stored per clip, embedding): what tagging a batch needs."""
        ...


class TorchEngine:
    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int) -> None:
        self.model, self.device, self.threads = model, device, threads
        if device.type == "cuda":
            # Full fp32 convolutions, not cuDNN's default TF32 (10-bit mantissa inputs): the
            # CPU's answers, at a cost the GPU does not notice. Process-wide, as the flag is.
            torch.backends.cudnn.allow_tf32 = False
        dtype = inference_dtype(device)
        self.name = f"torch ({str(dtype).removeprefix('torch.') if dtype else 'fp32'})"

    def __call__(self, x: torch.Tensor, with_features: bool) -> Any:
        with self._threads():
            return forward(self.model, x, self.device, with_features=with_features)

    def summarized(self, x: torch.Tensor) -> tuple[torch.Tensor, Summaries, torch.Tensor]:
        with self._threads():
            logits, feats, embedding = forward(self.model, x, self.device, with_features=True)
            return logits, summarize_feature_maps(feats), embedding

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        return intra_op_threads(self.threads) if self.device.type == "cpu" else contextlib.nullcontext()



class _Outputs(torch.nn.Module):
    """AudioCNN with every output as a flat tuple, the shape ONNX export wants: the logits,
    the taps, the embedding and each tap's summary (``SUMMARY_OUTPUTS``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features, embedding = self.model(x, with_features=True)
        summaries = (part for k in FEATURE_TAPS for part in summarize_tap(features[k]))
        return (logits, *(features[k] for k in FEATURE_TAPS), embedding, *summaries)


class OnnxRuntimeEngine:
    name = "onnxruntime (fp32)"

    def __init__(self, model: torch.nn.Module, threads: int, checkpoint_sha256: str | None = None,
                 export_cache: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads sleep instead of spinning: the decode and store threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        self.threads = threads

        def session(onnx: bytes) -> Any:
            return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])

        cached = _export_cache_path(export_cache, checkpoint_sha256)
        if cached is not None and cached.is_file():
            try:
                self.session = _with_all_outputs(session(cached.read_bytes()))
                return
            except Exception as exc:  # broad on purpose: a damaged cache file is exported again
                log.warning("ignoring the cached ONNX export %s (%s)", cached, exc)
        onnx = export_onnx(model)
        self.session = session(onnx)
        if cached is not None:
            _write_atomically(cached, onnx)

    # ONNX Runtime computes only what the asked-for outputs need: the logits alone skip
    # the taps' copies out of its blocked layout, the summaries skip the whole taps'.
    def __call__(self, x: torch.Tensor, with_features: bool) -> Any:
        if not with_features:
            return torch.from_numpy(self._run(("logits",), x)[0])
        logits, *maps, embedding = (torch.from_numpy(o) for o in self._run(_FULL_OUTPUTS, x))
        return logits, dict(zip(FEATURE_TAPS, maps, strict=True)), embedding

    def summarized(self, x: torch.Tensor) -> tuple[torch.Tensor, Summaries, torch.Tensor]:
        logits, embedding, *parts = self._run(_SUMMARIZED_OUTPUTS, x)
        n = len(SUMMARY_PARTS)
        taps = {tap: tuple(parts[n * i : n * (i + 1)]) for i, tap in enumerate(FEATURE_TAPS)}
        return torch.from_numpy(logits), _as_summaries(taps), torch.from_numpy(embedding)

    def _run(self, names: tuple[str, ...], x: torch.Tensor) -> list[np.ndarray]:
        return cast(list[np.ndarray], self.session.run(list(names), {"spectrogram": x.float().contiguous().numpy()}))



def _with_all_outputs(session: Any) -> Any:
    """The session, if its graph has every output the engine asks for (a cached file could
    come from another layout under the same name, written by hand or by a copied cache)."""
    missing = set(_FULL_OUTPUTS + SUMMARY_OUTPUTS) - {o.name for o in session.get_outputs()}
    if missing:
        raise ValueError(f"the graph lacks the outputs {sorted(missing)}")
    return session


def export_onnx(model: torch.nn.Module) -> bytes:
    """The network as ONNX bytes, batch size and frame count left dynamic.

    The TorchScript-based exporter: it needs no tracing cache and takes a fraction of a
    second, where the torch.export-based one takes about 10 s per model.
    """
    sample = torch.zeros(2, 1, N_MELS, WINDOW_FRAMES)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice, once per load
        torch.onnx.export(_Outputs(model).eval(), (sample,), cast(Any, buffer),  # a file object works too
                          input_names=["spectrogram"],
                          output_names=[*_FULL_OUTPUTS, *SUMMARY_OUTPUTS],
                          dynamic_axes={"spectrogram": {0: "batch", 3: "frames"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


def _export_cache_path(folder: Path | None, checkpoint_sha256: str | None) -> Path | None:
    """Where the export of this checkpoint file is kept, for this torch, this soundtag and
    this graph layout (each may export differently); None without a folder or for a model
    built in memory."""
    if folder is None or checkpoint_sha256 is None:
        return None
    return folder / f"{checkpoint_sha256[:32]}-torch{torch.__version__}-soundtag{__version__}-{EXPORT_LAYOUT}.onnx"


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or not at all, also with several processes writing at once; a folder that
    cannot be written only costs the next start its export."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.info("not caching the ONNX export in %s: %s", path.parent, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def make_engine(model: torch.nn.Module, device: torch.device, name: EngineName = "auto",
                threads: int | None = None, checkpoint_sha256: str | None = None,
                export_cache: Path | None = None) -> Engine:
    """``auto``: ONNX Runtime on CPU, torch on CUDA; an explicit ``onnxruntime`` on a GPU is refused."""
    threads = threads or default_threads()
    if name == "onnxruntime" and device.type != "cpu":
        raise ValueError("the onnxruntime engine runs on CPU only; use torch (or auto) on a GPU")
    if name == "torch" or device.type != "cpu":
        return TorchEngine(model, device, threads)
    try:
        return OnnxRuntimeEngine(model, threads, checkpoint_sha256, export_cache)
    except Exception as exc:  # broad on purpose: any export or runtime fault falls back to torch
        if name == "onnxruntime":
            raise RuntimeError(f"cannot run the model with ONNX Runtime: {type(exc).__name__}: {exc}") from exc
        log.warning("ONNX Runtime unavailable (%s: %s); using torch", type(exc).__name__, exc)
        return TorchEngine(model, device, threads)
