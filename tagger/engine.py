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
  ingest process, worker and API pays.

Every engine returns torch tensors shaped like ``AudioCNN.forward``'s output, so the
rest of the inference core does not know which one ran.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import torch

from tagger import __version__
from tagger.device import cpu_cores, inference_dtype
from tagger.features import N_MELS, WINDOW_FRAMES
from tagger.network import FEATURE_TAPS

log = logging.getLogger(__name__)

EngineName = Literal["auto", "torch", "onnxruntime"]


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


class Engine(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, with_features: bool) -> Any:
        """Logits, or (logits, {tap: feature map}, embedding) with ``with_features``."""
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
        if self.device.type != "cpu":
            return forward(self.model, x, self.device, with_features=with_features)
        with intra_op_threads(self.threads):
            return forward(self.model, x, self.device, with_features=with_features)


class _Outputs(torch.nn.Module):
    """AudioCNN with every output as a flat tuple, the shape ONNX export wants."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features, embedding = self.model(x, with_features=True)
        return (logits, *(features[k] for k in FEATURE_TAPS), embedding)


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
                self.session = session(cached.read_bytes())
                return
            except Exception as exc:  # broad on purpose: a damaged cache file is exported again
                log.warning("ignoring the cached ONNX export %s (%s)", cached, exc)
        onnx = export_onnx(model)
        self.session = session(onnx)
        if cached is not None:
            _write_atomically(cached, onnx)

    def __call__(self, x: torch.Tensor, with_features: bool) -> Any:
        outputs = self.session.run(None, {"spectrogram": x.float().contiguous().numpy()})
        logits, *maps, embedding = (torch.from_numpy(o) for o in outputs)
        if not with_features:
            return logits
        return logits, dict(zip(FEATURE_TAPS, maps, strict=True)), embedding


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
                          output_names=["logits", *FEATURE_TAPS, "embedding"],
                          dynamic_axes={"spectrogram": {0: "batch", 3: "frames"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


def _export_cache_path(folder: Path | None, checkpoint_sha256: str | None) -> Path | None:
    """Where the export of this checkpoint file is kept, for this torch and this soundtag
    (either may export differently); None without a folder or for a model built in memory."""
    if folder is None or checkpoint_sha256 is None:
        return None
    return folder / f"{checkpoint_sha256[:32]}-torch{torch.__version__}-soundtag{__version__}.onnx"


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
        raise ValueError("SOUNDTAG_ENGINE=onnxruntime runs on CPU only; use torch (or auto) on a GPU")
    if name == "torch" or device.type != "cpu":
        return TorchEngine(model, device, threads)
    try:
        return OnnxRuntimeEngine(model, threads, checkpoint_sha256, export_cache)
    except Exception as exc:  # broad on purpose: any export or runtime fault falls back to torch
        if name == "onnxruntime":
            raise RuntimeError(f"cannot run the model with ONNX Runtime: {type(exc).__name__}: {exc}") from exc
        log.warning("ONNX Runtime unavailable (%s: %s); using torch", type(exc).__name__, exc)
        return TorchEngine(model, device, threads)
