/* tagger._spectrum: the mel power of a signal's frames, through PFFFT.
 *
 * The log-mel (tagger/features.py) spent most of its time in torch.stft: framing the
 * signal, multiplying each frame by the window and running MKL's real FFT through a
 * strided view, then two more passes for the power and a banded matrix product for the
 * mel filters. Here each frame is windowed into an aligned buffer, transformed by PFFFT's
 * real FFT (the same vendored copy the inverse MDCT uses; SSE only, so every x86-64 gives
 * the same numbers), squared, and summed through each mel filter over only the bins where
 * it is not zero, four frames side by side (a frame's sum is a chain of dependent additions:
 * one SSE instruction adds four such chains), with the GIL released. The values are
 * torch's to float rounding: the same windowed samples and re^2 + im^2, another FFT's
 * rounding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define LANES_SSE 1
#endif

static void *aligned_bytes(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

/* As in imdct_pffft.c: this copy of PFFFT declares its functions static, to be compiled
   inside the file that uses it. */
#define pffft_aligned_malloc aligned_bytes
#define pffft_aligned_free free
#include "pffft.c"

#define GROUP 4 /* frames whose mel sums run side by side, one per SSE lane */
/* FFT sizes set up so far, each once per process (with the GIL held): room for every
   power of two mel_power takes (32 .. 65536), so a NULL setup only means no memory */
#define MAX_SIZES 12

static struct {
    int n;
    PFFFT_Setup *setup;
} setups[MAX_SIZES];

static PFFFT_Setup *setup_for(int n) {
    for (int i = 0; i < MAX_SIZES; i++) {
        if (setups[i].n == n) return setups[i].setup;
        if (setups[i].n == 0) {
            PFFFT_Setup *s = pffft_new_setup(n, PFFFT_REAL);
            if (s == NULL) return NULL;
            setups[i].setup = s;
            setups[i].n = n;
            return s;
        }
    }
    return NULL;
}

/* mel_power(signal, left, right, window, hop, filters, out): the mel power of each frame of
 * the signal with `left` and `right` samples reflected at its edges (x[-j] = x[j], as
 * torch's "reflect" padding, read in place instead of copied), out[m, f] = sum over k of
 * filters[m, k] * |FFT(window * padded[f*hop : f*hop + n])[k]|^2, n = len(window) (a power
 * of two), k in 0..n/2. signal, window, filters (n_mels rows of n/2 + 1) and out (n_mels
 * rows of frames, frames = 1 + (len(signal) + left + right - n) // hop) are float32 and
 * C-contiguous. Each
 * filter is summed over the bins where it is not zero only (a mel filter is a triangle:
 * about two filters per bin), in the order of the bins; GROUP frames at a time, one per SSE
 * lane, each lane's sum the same as that frame's alone. */
static PyObject *mel_power(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer signal, window, filters, out;
    Py_ssize_t left, right, hop;
    if (!PyArg_ParseTuple(args, "y*nny*ny*w*", &signal, &left, &right, &window, &hop, &filters, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t *spans = NULL;
    float *buffers = NULL;
    Py_ssize_t n = window.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t samples = signal.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t bins = n / 2 + 1;
    /* This copy of PFFFT (libsoxr's) has its radix-3 and radix-5 passes compiled out: its
       real FFT takes 32 times a power of two and would quietly mistransform 96 or 160
       points, so only powers of two get this far. */
    if (n < 32 || n > 65536 || (n & (n - 1)) || window.len != n * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "mel_power: the window's length must be a power of two from 32 to 65536");
        goto done;
    }
    if (left < 0 || right < 0 || left >= samples || right >= samples) {
        PyErr_Format(PyExc_ValueError, "mel_power: cannot reflect %zd and %zd samples of a %zd-sample signal",
                     left, right, samples);
        goto done;
    }
    Py_ssize_t padded = samples + left + right;
    if (hop < 1 || padded < n || signal.len != samples * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "mel_power: needs a hop of at least 1 and float32 samples of at least one frame");
        goto done;
    }
    Py_ssize_t mels = filters.len / (Py_ssize_t)sizeof(float) / bins;
    if (mels < 1 || filters.len != mels * bins * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "mel_power: filters must be rows of %zd float32", bins);
        goto done;
    }
    Py_ssize_t frames = 1 + (padded - n) / hop;
    if (out.len != mels * frames * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "mel_power: out must hold %zd rows of %zd float32", mels, frames);
        goto done;
    }
    PFFFT_Setup *setup = setup_for((int)n);
    if (setup == NULL) {
        PyErr_Format(PyExc_ValueError, "mel_power: no memory for a real FFT of %zd points", n);
        goto done;
    }
    spans = malloc(2 * (size_t)mels * sizeof(*spans));
    /* frame, spectrum, PFFFT's work area, then the power of GROUP frames interleaved */
    buffers = aligned_bytes((3 * (size_t)n + GROUP * (size_t)bins) * sizeof(float));
    if (spans == NULL || buffers == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *x = signal.buf, *w = window.buf, *fb = filters.buf;
    float *o = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t m = 0; m < mels; m++) { /* each filter's first and one-past-last nonzero bin */
        const float *row = fb + m * bins;
        Py_ssize_t first = 0, end = bins;
        while (first < bins && row[first] == 0.0f) first++;
        while (end > first && row[end - 1] == 0.0f) end--;
        spans[2 * m] = first;
        spans[2 * m + 1] = end;
    }
    float *frame = buffers, *spectrum = buffers + n, *work = buffers + 2 * n, *powers = buffers + 3 * n;
    for (Py_ssize_t f0 = 0; f0 < frames; f0 += GROUP) {
        Py_ssize_t group = frames - f0 < GROUP ? frames - f0 : GROUP;
        for (Py_ssize_t j = 0; j < GROUP; j++) {
            float *power = powers + j; /* bin k of frame f0 + j at power[k * GROUP] */
            if (j >= group) { /* past the last frame: a lane of zeros, never stored */
                for (Py_ssize_t k = 0; k < bins; k++) power[k * GROUP] = 0.0f;
                continue;
            }
            Py_ssize_t start = (f0 + j) * hop - left; /* in the signal's own samples */
            if (start >= 0 && start + n <= samples) {
                const float *src = x + start;
                for (Py_ssize_t i = 0; i < n; i++) frame[i] = src[i] * w[i];
            } else { /* a frame over an edge: the reflected samples */
                for (Py_ssize_t i = 0; i < n; i++) {
                    Py_ssize_t s = start + i;
                    if (s < 0) s = -s;
                    if (s >= samples) s = 2 * (samples - 1) - s;
                    frame[i] = x[s] * w[i];
                }
            }
            /* ordered: DC and Nyquist (both real) first, then re, im of bins 1 .. n/2 - 1 */
            pffft_transform_ordered(setup, frame, spectrum, work, PFFFT_FORWARD);
            power[0] = spectrum[0] * spectrum[0];
            power[n / 2 * GROUP] = spectrum[1] * spectrum[1];
            for (Py_ssize_t k = 1; k < n / 2; k++) {
                float re = spectrum[2 * k], im = spectrum[2 * k + 1];
                power[k * GROUP] = re * re + im * im;
            }
        }
        /* Each filter's sum for the group's frames side by side, one per lane: in every lane
           the same products added in the same order as one frame's sum on its own. */
        for (Py_ssize_t m = 0; m < mels; m++) {
            const float *row = fb + m * bins;
            float lanes[GROUP] __attribute__((aligned(16)));
#ifdef LANES_SSE
            __m128 sum = _mm_setzero_ps();
            for (Py_ssize_t k = spans[2 * m]; k < spans[2 * m + 1]; k++)
                sum = _mm_add_ps(sum, _mm_mul_ps(_mm_set1_ps(row[k]), _mm_load_ps(powers + k * GROUP)));
            _mm_store_ps(lanes, sum);
#else
            for (Py_ssize_t j = 0; j < GROUP; j++) lanes[j] = 0.0f;
            for (Py_ssize_t k = spans[2 * m]; k < spans[2 * m + 1]; k++)
                for (Py_ssize_t j = 0; j < GROUP; j++) lanes[j] += row[k] * powers[k * GROUP + j];
#endif
            for (Py_ssize_t j = 0; j < group; j++) o[m * frames + f0 + j] = lanes[j];
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(spans);
    free(buffers);
    PyBuffer_Release(&signal);
    PyBuffer_Release(&window);
    PyBuffer_Release(&filters);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef module_methods[] = {
    {"mel_power", mel_power, METH_VARARGS,
     "mel_power(signal, left, right, window, hop, filters, out): each frame's power through the mel filters"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef spectrum_module = {
    PyModuleDef_HEAD_INIT, "tagger._spectrum", "The mel power of a signal's frames, through PFFFT.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__spectrum(void) { return PyModule_Create(&spectrum_module); }
