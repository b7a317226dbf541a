# cython: language_level=3
"""poppins._bpe: the compiled byte-level BPE kernels (pre-tokenizer, word counting, training,
encoding, decoding).  poppins/tokenizer/reference.py has the same functions and classes in
pure Python; poppins.tokenizer picks one of them through poppins.native.load("bpe").
Thin wrappers: the Python layer (poppins.tokenizer) checks types and values."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from bpe_api cimport *

import numpy as np
cimport numpy as cnp

cnp.import_array()


def build_info():
    return {"openmp": bool(poppins_build_openmp()), "kernel": "c", "pretokenizer": "gpt4-c"}


def pretokenize(data):
    """End offsets (int64) of the pre-tokens of a UTF-8 buffer (bytes-like, may be read-only)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0], i = 0, k = 0
    out = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    if n == 0:
        return out[:0]
    cdef const uint8_t *s = &view[0]
    with nogil:
        while i < n:
            i = bpe_pretok_next(s, n, i)
            o[k] = <int64_t>i
            k += 1
    return out[:k].copy()


cdef class _Added:
    cdef bpe_added a
    cdef bint ready

    def __cinit__(self, contents, ids, specials):
        cdef int n = len(contents), k
        cdef const uint8_t **toks = <const uint8_t **>malloc(sizeof(uint8_t *) * (n + 1))
        cdef uint32_t *lens = <uint32_t *>malloc(sizeof(uint32_t) * (n + 1))
        cdef uint32_t *idv = <uint32_t *>malloc(sizeof(uint32_t) * (n + 1))
        cdef uint8_t *sp = <uint8_t *>malloc(n + 1)
        keep = [bytes(c) for c in contents]
        try:
            for k in range(n):
                toks[k] = <const uint8_t *>PyBytes_AS_STRING(keep[k])
                lens[k] = <uint32_t>PyBytes_GET_SIZE(keep[k])
                idv[k] = <uint32_t>ids[k]
                sp[k] = 1 if specials[k] else 0
            if bpe_added_init(&self.a, n, toks, lens, idv, sp) != 0:
                raise MemoryError()
            self.ready = True
        finally:
            free(toks); free(lens); free(idv); free(sp)

    def __dealloc__(self):
        if self.ready:
            bpe_added_free(&self.a)


cdef class _Texts:
    """Pointers and lengths of a list of bytes objects (kept alive by self.keep)."""
    cdef const uint8_t **ptr
    cdef size_t *lens
    cdef size_t n
    cdef object keep

    def __cinit__(self, texts):
        self.keep = [t if isinstance(t, bytes) else bytes(t) for t in texts]
        self.n = len(self.keep)
        self.ptr = <const uint8_t **>malloc(sizeof(uint8_t *) * (self.n + 1))
        self.lens = <size_t *>malloc(sizeof(size_t) * (self.n + 1))
        if self.ptr == NULL or self.lens == NULL:
            raise MemoryError()
        cdef size_t k
        for k in range(self.n):
            self.ptr[k] = <const uint8_t *>PyBytes_AS_STRING(self.keep[k])
            self.lens[k] = <size_t>PyBytes_GET_SIZE(self.keep[k])

    def __dealloc__(self):
        free(self.ptr)
        free(self.lens)


cdef class WordCounter:
    """Counts the pre-token words of texts (UTF-8 bytes).  Added tokens (contents, ids,
    special flags) are cut out first as in encode(special=False): requested tokens split the
    text, special-token strings stay text."""
    cdef bpe_wmap m
    cdef bint ready
    cdef _Added added

    def __cinit__(self, added_contents=(), added_ids=(), added_special=()):
        if bpe_wmap_init(&self.m, 1024) != 0:
            raise MemoryError()
        self.ready = True
        self.added = _Added(list(added_contents), list(added_ids), list(added_special))

    def __dealloc__(self):
        if self.ready:
            bpe_wmap_free(&self.m)

    def add(self, texts, int threads=1):
        cdef _Texts t = _Texts(texts)
        cdef int r
        with nogil:
            r = bpe_count_texts(&self.m, &self.added.a, t.ptr, t.lens, t.n, threads)
        if r != 0:
            raise MemoryError("poppins: out of memory while counting words")

    def words(self):
        """(list of word bytes, int64 counts), in first-seen-independent sorted order."""
        cdef size_t q
        words = []
        counts = []
        for q in range(self.m.cap):
            if self.m.cnt[q] != 0:
                words.append(PyBytes_FromStringAndSize(<char *>self.m.arena + self.m.koff[q],
                                                       self.m.klen[q]))
                counts.append(self.m.cnt[q])
        order = sorted(range(len(words)), key=words.__getitem__)
        return [words[i] for i in order], np.asarray([counts[i] for i in order], dtype=np.int64)


def train_merges(words, counts, int byte_base, long max_merges, long min_frequency,
                 forbidden=()):
    """Merge loop over unique words (bytes) with counts; returns int32 (n, 2) id pairs."""
    cdef cnp.ndarray[int64_t, ndim=1] cnt = np.ascontiguousarray(counts, dtype=np.int64)
    cdef size_t nw = len(words), k
    if <size_t>cnt.shape[0] != nw:
        raise ValueError("words and counts differ in length")
    blob = b"".join(words)
    cdef cnp.ndarray[uint64_t, ndim=1] woff = np.zeros(nw + 1, dtype=np.uint64)
    cdef cnp.ndarray[uint32_t, ndim=1] wlen = np.zeros(nw + 1, dtype=np.uint32)
    cdef uint64_t o = 0
    for k in range(nw):
        woff[k] = o
        wlen[k] = len(words[k])
        o += wlen[k]
    cdef _Texts fb = _Texts(list(forbidden))
    cdef uint32_t *flen = <uint32_t *>malloc(sizeof(uint32_t) * (fb.n + 1))
    for k in range(fb.n):
        flen[k] = <uint32_t>fb.lens[k]
    if max_merges < 0:
        max_merges = 0
    out = np.zeros((max_merges, 2), dtype=np.int32)
    cdef int32_t[:, ::1] ov = out
    cdef int32_t *op = &ov[0, 0] if max_merges > 0 else NULL
    cdef const uint8_t *wb = <const uint8_t *>PyBytes_AS_STRING(blob)
    cdef long r
    with nogil:
        r = bpe_train(wb, &woff[0], &wlen[0], &cnt[0] if nw > 0 else NULL, nw,
                      <uint32_t>byte_base, max_merges, min_frequency, fb.ptr, flen,
                      <int>fb.n, op)
    free(flen)
    if r < 0:
        raise MemoryError("poppins: out of memory during BPE training")
    return out[:r].copy()


cdef _to_array(bpe_ids *v):
    cdef cnp.npy_intp dims[1]
    dims[0] = <cnp.npy_intp>v.n
    cdef cnp.ndarray arr = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_UINT32)
    if v.n:
        memcpy(cnp.PyArray_DATA(arr), v.data, sizeof(uint32_t) * v.n)
    free(v.data)
    v.data = NULL
    v.n = v.cap = 0
    return arr


cdef class Encoder:
    """Rank-ordered BPE encoder.  token_bytes: bytes of every id (index = id); byte_ids: the
    id of each of the 256 bytes; merges: (n, 3) [left, right, new] in rank order; added
    tokens: contents (UTF-8 bytes), ids, special flags."""
    cdef bpe_encoder e
    cdef bint ready
    cdef _Added added
    cdef object token_bytes
    cdef object blob
    cdef cnp.ndarray offs

    def __cinit__(self, token_bytes, byte_ids, merges, added_contents=(), added_ids=(),
                  added_special=()):
        self.added = _Added(list(added_contents), list(added_ids), list(added_special))
        cdef cnp.ndarray[uint32_t, ndim=1] bid = np.ascontiguousarray(byte_ids, dtype=np.uint32)
        if bid.shape[0] != 256:
            raise ValueError("byte_ids must have 256 entries")
        cdef cnp.ndarray[uint32_t, ndim=2] mg = np.ascontiguousarray(
            np.asarray(merges, dtype=np.uint32).reshape(-1, 3))
        cdef size_t nm = mg.shape[0]
        cdef const uint32_t *mp = &mg[0, 0] if nm > 0 else NULL
        if bpe_enc_init(&self.e, &bid[0], mp, nm, &self.added.a) != 0:
            raise MemoryError()
        self.ready = True
        self.token_bytes = [bytes(t) for t in token_bytes]
        self.blob = b"".join(self.token_bytes)
        offs = np.zeros(len(self.token_bytes) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in self.token_bytes], out=offs[1:])
        self.offs = offs

    def __dealloc__(self):
        if self.ready:
            bpe_enc_free(&self.e)

    def encode(self, data, bint special=True):
        """uint32 ids of a UTF-8 buffer (bytes or any read-only buffer)."""
        cdef const uint8_t[::1] view
        cdef size_t n
        cdef const uint8_t *s
        cdef bpe_ids out
        out.data = NULL
        out.n = out.cap = 0
        if type(data) is bytes:
            n = <size_t>PyBytes_GET_SIZE(data)
            s = <const uint8_t *>PyBytes_AS_STRING(data)
        else:
            view = memoryview(data).cast("B")
            n = view.shape[0]
            s = &view[0] if n > 0 else NULL
        if n == 0:
            return np.empty(0, dtype=np.uint32)
        cdef int r
        with nogil:
            r = bpe_enc_text(&self.e, s, n, special, &out)
        if r != 0:
            free(out.data)
            raise MemoryError()
        return _to_array(&out)

    def encode_batch(self, texts, bint special=True, int threads=1):
        cdef _Texts t = _Texts(texts)
        cdef bpe_ids *outs = <bpe_ids *>calloc(t.n + 1, sizeof(bpe_ids))
        cdef int r
        cdef size_t k
        if outs == NULL:
            raise MemoryError()
        with nogil:
            r = bpe_enc_batch(&self.e, t.ptr, t.lens, t.n, special, threads, outs)
        if r != 0:
            for k in range(t.n):
                free(outs[k].data)
            free(outs)
            raise MemoryError()
        res = [_to_array(&outs[k]) for k in range(t.n)]
        free(outs)
        return res

    def decode(self, ids):
        """The bytes of a sequence of ids (IndexError for an unknown id)."""
        cdef cnp.ndarray[int64_t, ndim=1] idv = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        cdef int64_t[::1] offs = self.offs
        cdef int64_t ntok = offs.shape[0] - 1
        cdef size_t k, n = idv.shape[0]
        cdef int64_t total = 0, i
        for k in range(n):
            i = idv[k]
            if i < 0 or i >= ntok:
                raise IndexError(f"token id {i} is out of range (vocabulary of {ntok})")
            total += offs[i + 1] - offs[i]
        res = PyBytes_FromStringAndSize(NULL, total)
        cdef char *dst = PyBytes_AS_STRING(res)
        cdef const char *src = PyBytes_AS_STRING(self.blob)
        cdef int64_t pos = 0, L
        for k in range(n):
            i = idv[k]
            L = offs[i + 1] - offs[i]
            memcpy(dst + pos, src + offs[i], L)
            pos += L
        return res
