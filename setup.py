"""The compiled parts (tagger/native): tagger._vorbis, libvorbisfile for Ogg Vorbis, and
tagger._spectrum, the log-mel's frames, FFT and mel filters through PFFFT.

soundtag's changes to the vendored libvorbis, each marked "soundtag" where it is made:
its inverse MDCT runs through PFFFT (tagger/native/imdct_pffft.c and pffft/, vendored
from Debian 12's libsoxr sources); streams with the same setup header share its decoded
codebooks (tagger/native/book_cache.c); and the codeword lookup reads its bits inline
with a first table as wide as the longest codeword, up to 10 bits (codebook.c,
sharedbook.c). Every one gives libvorbis's entries, and samples within float rounding.

Everything else is in pyproject.toml. Both extensions are optional: where they do not
build, tagger.audio decodes Ogg Vorbis with libsndfile and tagger.features transforms
with torch.stft, as before, only slower.
"""

from pathlib import Path

from setuptools import Extension, setup

NATIVE = Path("tagger/native")
OGG_SOURCES = ["bitwise.c", "framing.c"]
# libvorbis's decoder and the encoder parts block.c links against; not vorbisenc.c.
VORBIS_SOURCES = ["analysis.c", "bitrate.c", "block.c", "codebook.c", "envelope.c", "floor0.c", "floor1.c",
                  "info.c", "lookup.c", "lpc.c", "lsp.c", "mapping0.c", "mdct.c", "psy.c", "registry.c",
                  "res0.c", "sharedbook.c", "smallft.c", "synthesis.c", "vorbisfile.c", "window.c"]

vorbis = Extension(
    "tagger._vorbis",
    sources=[str(NATIVE / "vorbis_reader.c"), str(NATIVE / "imdct_pffft.c"), str(NATIVE / "book_cache.c")]
    + [str(NATIVE / "libogg/src" / name) for name in OGG_SOURCES]
    + [str(NATIVE / "libvorbis/lib" / name) for name in VORBIS_SOURCES],
    include_dirs=[str(NATIVE), str(NATIVE / "pffft"), str(NATIVE / "libogg/include"),
                  str(NATIVE / "libvorbis/include"), str(NATIVE / "libvorbis/lib")],
    define_macros=[("HAVE_ALLOCA_H", "1")],
    # -O3 for the decoder's loops (about a tenth faster than -O2); no -march, so the
    # build runs on any x86-64 and gives the same samples on every one (PFFFT's kernels
    # are SSE, which every x86-64 has; elsewhere PFFFT compiles its scalar fallback).
    extra_compile_args=["-O3", "-w"],
    libraries=["m"],
    optional=True,
)

# The log-mel's frames and power spectra through the same PFFFT (tagger/native/spectrum.c).
spectrum = Extension(
    "tagger._spectrum",
    sources=[str(NATIVE / "spectrum.c")],
    include_dirs=[str(NATIVE / "pffft")],
    extra_compile_args=["-O3", "-w"],
    libraries=["m"],
    optional=True,
)

setup(ext_modules=[vorbis, spectrum])
