/* tagger._vorbis: Ogg Vorbis decoded by libvorbisfile into a caller's float32 buffer.
 *
 * Most clips people tag (all of ESC-50) are Ogg Vorbis, and decoding them is the
 * pipeline's largest cost outside the network. libsndfile decodes them with the same
 * libvorbis but copies every sample once more in its own loop, and the copy shipped in
 * the soundfile wheel is built for size; this module runs libvorbisfile, built with the
 * package at -O3, and fills the caller's buffer in one call per block with the GIL
 * released. tagger.audio uses it for clean single-stream files only and hands anything
 * irregular to libsndfile and FFmpeg as before, so it adds no new way to fail.
 * libvorbis's inverse MDCT, its largest cost, runs through PFFFT (imdct_pffft.c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <vorbis/vorbisfile.h>

#include "book_cache.h"
#include "mdct.h"

typedef struct {
    Py_buffer view;       /* the encoded bytes, held while the reader lives */
    Py_ssize_t pos;
} MemorySource;

static size_t mem_read(void *ptr, size_t size, size_t nmemb, void *datasource) {
    MemorySource *src = datasource;
    if (size == 0) return 0;
    Py_ssize_t left = src->view.len - src->pos;
    size_t items = nmemb;
    if ((size_t)left / size < items) items = (size_t)left / size;
    memcpy(ptr, (const char *)src->view.buf + src->pos, items * size);
    src->pos += (Py_ssize_t)(items * size);
    return items;
}

static int mem_seek(void *datasource, ogg_int64_t offset, int whence) {
    MemorySource *src = datasource;
    ogg_int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? src->pos : src->view.len;
    if (whence != SEEK_SET && whence != SEEK_CUR && whence != SEEK_END) return -1;
    ogg_int64_t target = base + offset;
    if (target < 0 || target > src->view.len) return -1;
    src->pos = (Py_ssize_t)target;
    return 0;
}

static long mem_tell(void *datasource) { return (long)((MemorySource *)datasource)->pos; }

static const ov_callbacks memory_callbacks = {mem_read, mem_seek, NULL, mem_tell};

typedef struct {
    PyObject_HEAD
    OggVorbis_File vf;
    int open;
    MemorySource *memory;
    int channels;
    long rate;
    long long frames;  /* ov_pcm_total; -1 when the stream cannot tell */
    long streams;
} Reader;

static PyObject *VorbisError;

static const char *ov_reason(long code) {
    switch (code) {
    case OV_EREAD: return "read error";
    case OV_ENOTVORBIS: return "not Vorbis data";
    case OV_EVERSION: return "unsupported Vorbis version";
    case OV_EBADHEADER: return "invalid Vorbis header";
    case OV_EFAULT: return "internal decoder fault";
    case OV_HOLE: return "interruption in the data";
    case OV_EBADLINK: return "invalid stream section";
    case OV_EINVAL: return "invalid stream";
    default: return "decoder error";
    }
}

static PyObject *raise_ov(long code) {
    return PyErr_Format(VorbisError, "%s (libvorbisfile error %ld)", ov_reason(code), code);
}

static void reader_close(Reader *self) {
    if (self->open) {
        ov_clear(&self->vf);
        self->open = 0;
    }
    if (self->memory) {
        PyBuffer_Release(&self->memory->view);
        PyMem_Free(self->memory);
        self->memory = NULL;
    }
}

static int reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"source", NULL};
    PyObject *source;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &source)) return -1;
    reader_close(self);
    int rc;
    if (PyUnicode_Check(source) || PyObject_HasAttrString(source, "__fspath__")) {
        PyObject *encoded = NULL;
        if (!PyUnicode_FSConverter(source, &encoded)) return -1;
        const char *path = PyBytes_AS_STRING(encoded);
        Py_BEGIN_ALLOW_THREADS
        rc = ov_fopen(path, &self->vf);
        Py_END_ALLOW_THREADS
        Py_DECREF(encoded);
    } else {
        MemorySource *mem = PyMem_Calloc(1, sizeof(MemorySource));
        if (!mem) {
            PyErr_NoMemory();
            return -1;
        }
        if (PyObject_GetBuffer(source, &mem->view, PyBUF_SIMPLE) < 0) {
            PyMem_Free(mem);
            return -1;
        }
        self->memory = mem;
        Py_BEGIN_ALLOW_THREADS
        rc = ov_open_callbacks(mem, &self->vf, NULL, 0, memory_callbacks);
        Py_END_ALLOW_THREADS
    }
    if (rc != 0) {
        int missing = rc == OV_FALSE && self->memory == NULL;  /* ov_fopen: fopen failed */
        reader_close(self);
        if (missing) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, source);
        else raise_ov(rc);
        return -1;
    }
    self->open = 1;
    vorbis_info *info = ov_info(&self->vf, -1);
    if (info == NULL || info->channels < 1) {  /* read_into divides by the channels */
        reader_close(self);
        raise_ov(OV_EBADHEADER);
        return -1;
    }
    self->channels = info->channels;
    self->rate = info->rate;
    self->streams = ov_streams(&self->vf);
    ogg_int64_t total = ov_seekable(&self->vf) ? ov_pcm_total(&self->vf, -1) : -1;
    self->frames = total < 0 ? -1 : (long long)total;
    return 0;
}

static void reader_dealloc(Reader *self) {
    reader_close(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fill ``out`` (writable, C-contiguous float32, a whole number of interleaved frames)
 * with the next frames; returns how many, 0 at the end of the stream. */
static PyObject *reader_read_into(Reader *self, PyObject *arg) {
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "reader is closed");
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(arg, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (out.itemsize != sizeof(float) || (out.format && strcmp(out.format, "f") != 0)) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_TypeError, "read_into needs a float32 buffer");
        return NULL;
    }
    const int channels = self->channels;
    const long capacity = (long)(out.len / (Py_ssize_t)sizeof(float) / channels);
    float *dest = out.buf;
    long filled = 0, code = 0;
    int section = 0, changed = 0;
    Py_BEGIN_ALLOW_THREADS
    while (filled < capacity) {
        float **pcm;
        long got = ov_read_float(&self->vf, &pcm, (int)(capacity - filled > 1 << 20 ? 1 << 20 : capacity - filled), &section);
        if (got == 0) break;
        if (got < 0) {
            code = got;
            break;
        }
        vorbis_info *now = ov_info(&self->vf, -1);
        if (now == NULL || now->channels != channels || now->rate != self->rate) {
            changed = 1;
            break;
        }
        if (channels == 1) {
            memcpy(dest + filled, pcm[0], (size_t)got * sizeof(float));
        } else {
            float *row = dest + (size_t)filled * channels;
            for (long i = 0; i < got; i++)
                for (int c = 0; c < channels; c++) row[(size_t)i * channels + c] = pcm[c][i];
        }
        filled += got;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    if (changed) {
        PyErr_SetString(VorbisError, "channels or sample rate change inside the stream");
        return NULL;
    }
    if (code < 0) return raise_ov(code);
    return PyLong_FromLong(filled);
}

static PyObject *reader_close_method(Reader *self, PyObject *Py_UNUSED(ignored)) {
    reader_close(self);
    Py_RETURN_NONE;
}

static PyObject *reader_enter(Reader *self, PyObject *Py_UNUSED(ignored)) {
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *reader_exit(Reader *self, PyObject *Py_UNUSED(args)) {
    reader_close(self);
    Py_RETURN_FALSE;
}

static PyObject *reader_get_channels(Reader *self, void *c) { return PyLong_FromLong(self->channels); }
static PyObject *reader_get_rate(Reader *self, void *c) { return PyLong_FromLong(self->rate); }
static PyObject *reader_get_frames(Reader *self, void *c) { return PyLong_FromLongLong(self->frames); }
static PyObject *reader_get_streams(Reader *self, void *c) { return PyLong_FromLong(self->streams); }

static PyGetSetDef reader_getset[] = {
    {"channels", (getter)reader_get_channels, NULL, "channels in the stream", NULL},
    {"rate", (getter)reader_get_rate, NULL, "sample rate in Hz", NULL},
    {"frames", (getter)reader_get_frames, NULL, "frames the stream holds (-1: unknown)", NULL},
    {"streams", (getter)reader_get_streams, NULL, "logical bitstreams chained in the file", NULL},
    {NULL},
};

static PyMethodDef reader_methods[] = {
    {"read_into", (PyCFunction)reader_read_into, METH_O,
     "read_into(buffer) -> frames: decode the next frames, interleaved, into a float32 buffer"},
    {"close", (PyCFunction)reader_close_method, METH_NOARGS, "release the decoder"},
    {"__enter__", (PyCFunction)reader_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)reader_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tagger._vorbis.Reader",
    .tp_doc = "Reader(source): an Ogg Vorbis stream from a path or from bytes",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};

/* For the tests: one block's inverse MDCT, n/2 float32 coefficients into n samples,
 * through PFFFT (what decoding runs) or, with fast false, libvorbis's own butterflies. */
static PyObject *inverse_mdct(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer in, out;
    int fast = 1;
    if (!PyArg_ParseTuple(args, "y*w*|p", &in, &out, &fast)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(float);
    if (n < 64 || n > 8192 || (n & (n - 1)) || out.len != n * (Py_ssize_t)sizeof(float) ||
        in.len != n / 2 * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "inverse_mdct takes n/2 float32 coefficients and n float32 samples, "
                                          "n a power of 2 from 64 to 8192");
        goto done;
    }
    mdct_lookup lookup;
    mdct_init(&lookup, (int)n);
    if (fast && lookup.fast == NULL) {
        mdct_clear(&lookup);
        PyErr_NoMemory();
        goto done;
    }
    struct imdct_fast *kept = lookup.fast;
    if (!fast) lookup.fast = NULL;
    mdct_backward(&lookup, (float *)in.buf, (float *)out.buf);
    lookup.fast = kept;
    mdct_clear(&lookup);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* For the tests: what the codebook cache (book_cache.c) has done in this process. */
static PyObject *book_cache_info(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)) {
    long hits, stored;
    int entries;
    book_cache_counts(&hits, &stored, &entries);
    return Py_BuildValue("{sl,sl,si}", "hits", hits, "stored", stored, "entries", entries);
}

static PyMethodDef module_methods[] = {
    {"book_cache_info", book_cache_info, METH_NOARGS, "book_cache_info(): the codebook cache's hits, stored, entries"},
    {"inverse_mdct", inverse_mdct, METH_VARARGS, "inverse_mdct(coefficients, out, fast=True): one block's inverse MDCT"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef vorbis_module = {
    PyModuleDef_HEAD_INIT, "tagger._vorbis", "Ogg Vorbis decoding through libvorbisfile.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__vorbis(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&vorbis_module);
    if (m == NULL) return NULL;
    VorbisError = PyErr_NewException("tagger._vorbis.VorbisError", PyExc_ValueError, NULL);
    if (VorbisError == NULL || PyModule_AddObjectRef(m, "VorbisError", VorbisError) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
