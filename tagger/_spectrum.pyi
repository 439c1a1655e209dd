# Types of the compiled module built from tagger/native/spectrum.c (setup.py).
from typing import Any

# The mel power of each frame: out[m, f] = sum over k of filters[m, k] * |FFT(window * frame f)[k]|^2,
# frames taken every `hop` samples of the signal with `left` and `right` samples reflected at its
# edges. Every array float32 and C-contiguous (numpy arrays: numpy's stubs declare the buffer
# protocol only from Python 3.12), out (n_mels, frames). The window's length is a power of two
# from 32 to 65536 (ValueError otherwise).
def mel_power(signal: Any, left: int, right: int, window: Any, hop: int, filters: Any, out: Any) -> None: ...
