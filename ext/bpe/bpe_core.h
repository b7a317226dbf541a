/* poppins byte-level BPE: the nogil C core behind poppins._bpe.
 *
 * - bpe_pretok_next: the GPT-4 split pattern as a hand-written state machine over UTF-8
 *   (invalid bytes are single "other" characters, as Python's surrogateescape sees them);
 * - bpe_added_*: leftmost-longest matching of added tokens (specials and requested tokens),
 *   with the Hugging Face rule that a skipped special token stays plain text;
 * - bpe_wcount_*: unique pre-token words with counts (training input);
 * - bpe_train: the merge loop with incremental pair counts and a lazy max-heap;
 * - bpe_enc_*: rank-ordered BPE encoding with a per-call word cache, plus batch encoding
 *   with OpenMP.
 * The pure-Python twin of every function is poppins/tokenizer/reference.py. */
#ifndef POPPINS_BPE_CORE_H
#define POPPINS_BPE_CORE_H

#include <stddef.h>
#include <stdint.h>

/* ---- pre-tokenizer ---- */
size_t bpe_pretok_next(const uint8_t *s, size_t n, size_t i);
int bpe_uclass(uint32_t cp); /* 0 other, 1 letter, 2 number, 3 whitespace */

/* ---- added tokens ---- */
typedef struct {
    int n;
    uint32_t *len;
    uint32_t *id;
    uint8_t *special;
    /* byte trie of the contents: edges in an open-addressing table keyed by
     * (node << 8 | byte); term[node] = token index ending there, or -1 */
    uint64_t *ekey;   /* UINT64_MAX = empty */
    int32_t *echild;
    size_t ecap;
    int32_t *term;
    int32_t nnodes;
    uint8_t root_has[256];
} bpe_added;

int bpe_added_init(bpe_added *a, int n, const uint8_t *const *tok, const uint32_t *len,
                   const uint32_t *id, const uint8_t *special);
void bpe_added_free(bpe_added *a);
/* Next match at or after pos (special tokens are skipped, staying text, unless use_special).
 * Returns 1 and the match [*ms, *me) with its id, or 0 when there is none. */
int bpe_added_next(const bpe_added *a, const uint8_t *s, size_t n, size_t pos, int use_special,
                   size_t *ms, size_t *me, uint32_t *mid);

/* ---- word counting (training input) ---- */
typedef struct {
    uint64_t *hash;
    uint64_t *koff;
    uint32_t *klen;
    int64_t *cnt;
    size_t cap, n;
    uint8_t *arena;
    size_t alen, acap;
} bpe_wmap;

int bpe_wmap_init(bpe_wmap *m, size_t cap);
void bpe_wmap_free(bpe_wmap *m);
int bpe_wmap_add(bpe_wmap *m, const uint8_t *k, uint32_t len, uint64_t h, int64_t c);
uint64_t bpe_hash(const uint8_t *p, size_t n);
/* Pre-tokenize texts (text segments between added tokens; specials are text) and count
 * words into m, with `threads` threads. Returns 0, or -1 when out of memory. */
int bpe_count_texts(bpe_wmap *m, const bpe_added *a, const uint8_t *const *texts,
                    const size_t *lens, size_t ntexts, int threads);

/* ---- training ---- */
/* words: concatenated bytes (woff[i], wlen[i]); cnt[i] > 0. Byte b has id byte_base + b;
 * merge r creates id byte_base + 256 + r. forbidden: byte strings no merge may create.
 * Writes up to max_merges pairs to merges_out (2 ints each); returns the number of merges,
 * or -1 when out of memory. */
long bpe_train(const uint8_t *wbytes, const uint64_t *woff, const uint32_t *wlen,
               const int64_t *cnt, size_t nwords, uint32_t byte_base, long max_merges,
               int64_t min_frequency, const uint8_t *const *forbidden,
               const uint32_t *forbidden_len, int nforbidden, int32_t *merges_out);

/* ---- encoding ---- */
typedef struct {
    uint64_t *pkey;   /* (a << 32) | b, UINT64_MAX = empty */
    uint32_t *prank;
    uint32_t *pnew;
    size_t pcap;
    uint32_t byte_id[256];
    const bpe_added *added;
} bpe_encoder;

typedef struct {
    uint32_t *data;
    size_t n, cap;
} bpe_ids;

int bpe_enc_init(bpe_encoder *e, const uint32_t *byte_id, const uint32_t *merges /* n x 3 */,
                 size_t nmerges, const bpe_added *added);
void bpe_enc_free(bpe_encoder *e);
/* Encode one UTF-8 buffer, appending to out. Returns 0 or -1 (out of memory). */
int bpe_enc_text(const bpe_encoder *e, const uint8_t *s, size_t n, int use_special, bpe_ids *out);
/* Encode many buffers with `threads` threads; outs[i] must be zeroed. Returns 0 or -1. */
int bpe_enc_batch(const bpe_encoder *e, const uint8_t *const *texts, const size_t *lens,
                  size_t ntexts, int use_special, int threads, bpe_ids *outs);

#endif
