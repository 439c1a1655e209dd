# Types of the compiled module built from tagger/native/vorbis_reader.c (setup.py).
from os import PathLike
from types import TracebackType
from typing import Any, Self

from typing_extensions import Buffer

class VorbisError(ValueError): ...

# For the tests: one block's inverse MDCT (n/2 float32 coefficients into n float32 samples),
# through PFFFT as decoding runs it or, with fast=False, libvorbis's own butterflies.
def inverse_mdct(coefficients: Buffer, out: Buffer, fast: bool = True) -> None: ...

# For the tests: the decoded-codebook cache of this process (tagger/native/book_cache.c):
# streams that took cached books, books taken into it, entries held now (at most 8).
def book_cache_info() -> dict[str, int]: ...

class Reader:
    channels: int
    rate: int
    frames: int  # -1: the stream cannot tell
    streams: int
    def __init__(self, source: str | PathLike[str] | Buffer) -> None: ...
    def read_into(self, buffer: Any) -> int: ...  # a writable C-contiguous float32 array
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> bool: ...
