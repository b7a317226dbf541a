# The nogil C API of poppins' byte-level BPE core (ext/bpe/bpe_core.h).
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t

cdef extern from "poppins_common.h":
    int poppins_build_openmp() nogil

cdef extern from "bpe_core.h":
    size_t bpe_pretok_next(const uint8_t *s, size_t n, size_t i) nogil
    int bpe_uclass(uint32_t cp) nogil

    ctypedef struct bpe_added:
        int n
    int bpe_added_init(bpe_added *a, int n, const uint8_t *const *tok, const uint32_t *len,
                       const uint32_t *id, const uint8_t *special) nogil
    void bpe_added_free(bpe_added *a) nogil

    ctypedef struct bpe_wmap:
        uint64_t *hash
        uint64_t *koff
        uint32_t *klen
        int64_t *cnt
        size_t cap
        size_t n
        uint8_t *arena
    int bpe_wmap_init(bpe_wmap *m, size_t cap) nogil
    void bpe_wmap_free(bpe_wmap *m) nogil
    int bpe_count_texts(bpe_wmap *m, const bpe_added *a, const uint8_t *const *texts,
                        const size_t *lens, size_t ntexts, int threads) nogil

    long bpe_train(const uint8_t *wbytes, const uint64_t *woff, const uint32_t *wlen,
                   const int64_t *cnt, size_t nwords, uint32_t byte_base, long max_merges,
                   int64_t min_frequency, const uint8_t *const *forbidden,
                   const uint32_t *forbidden_len, int nforbidden, int32_t *merges_out) nogil

    ctypedef struct bpe_encoder:
        size_t pcap
    ctypedef struct bpe_ids:
        uint32_t *data
        size_t n
        size_t cap
    int bpe_enc_init(bpe_encoder *e, const uint32_t *byte_id, const uint32_t *merges,
                     size_t nmerges, const bpe_added *added) nogil
    void bpe_enc_free(bpe_encoder *e) nogil
    int bpe_enc_text(const bpe_encoder *e, const uint8_t *s, size_t n, int use_special,
                     bpe_ids *out) nogil
    int bpe_enc_batch(const bpe_encoder *e, const uint8_t *const *texts, const size_t *lens,
                      size_t ntexts, int use_special, int threads, bpe_ids *outs) nogil
