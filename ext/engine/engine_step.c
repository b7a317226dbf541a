/* The compiled decode step (see engine_step.h). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1  /* syscall() under -std=c11 */
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ENG_FUTEX 1
#elif defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ENG_PAUSE() _mm_pause()
#else
#define ENG_PAUSE() ((void)0)
#endif

#include "poppins_common.h"
#include "poppins_numerics.h"
#include "../ternary/ternary.h"
#include "engine.h"
#include "engine_step.h"

/* The ternary kernels are compiled once, into poppins._ternary; the step calls them through
 * its C API table (set by poppins._engine at import from the capsule poppins._ternary._C_API). */
static const tern_c_api *g_tern = NULL;

/* Work sharing inside one step: the step is a fixed sequence of PHASES, each cut into CHUNKS
 * (row ranges of a ternary product, attention heads, vocabulary rows).  Threads claim chunks
 * from one shared counter (claim) and count finished ones (done); a phase may start once
 * every chunk of the one before is done, whoever did it.  So a thread never waits for another
 * to ARRIVE somewhere (a barrier does): a worker the OS has not scheduled yet (a busy second
 * core) simply finds the chunks taken and catches up, and the step runs as fast as one thread
 * at worst; with a free second core both threads stream weights.  Waiting (only for chunks
 * another thread is computing) spins briefly, then sleeps in the kernel (Linux futex on the
 * done counter; the thread finishing the last chunk of a phase wakes sleepers).
 * Chunk and phase indices run over the whole step (reset at each step; < 2^24 chunks and
 * 2^16 phases per step, checked in eng_decode_step). */
#define SPIN_LIMIT 400

typedef struct {
    _Atomic uint64_t claim;   /* (phase + 1) << 48 | next front chunk << 24 | end of the back */
    atomic_int done;
    atomic_int sleepers;
} eng_work;

#define WORK_FIELD ((1ull << 24) - 1)

/* The next unclaimed chunk of phase `ph` (chunks [p0, p1)), or -1.  Even threads take chunks
 * from the front, odd ones from the back, so with two threads each streams one contiguous
 * part of every matrix (as a static split would) until they meet. */
static inline int work_claim(eng_work *W, int ph, int p0, int p1, int back)
{
    const uint64_t tag = (uint64_t)(ph + 1) << 48;
    uint64_t st = atomic_load(&W->claim);
    for (;;) {
        uint64_t sph = st >> 48;
        uint64_t want;
        if (sph < (uint64_t)(ph + 1)) {           /* first thread into the phase opens it */
            want = tag | (uint64_t)p0 << 24 | (uint64_t)p1;
            if (atomic_compare_exchange_weak(&W->claim, &st, want)) st = want;
            continue;
        }
        if (sph > (uint64_t)(ph + 1)) return -1;  /* a later phase: all taken */
        const int lo = (int)((st >> 24) & WORK_FIELD), hi = (int)(st & WORK_FIELD);
        if (lo >= hi) return -1;
        want = back ? (tag | (uint64_t)lo << 24 | (uint64_t)(hi - 1))
                    : (tag | (uint64_t)(lo + 1) << 24 | (uint64_t)hi);
        if (atomic_compare_exchange_weak(&W->claim, &st, want)) return back ? hi - 1 : lo;
    }
}

/* 1 when phase ph may still have unclaimed chunks (worth preparing for) */
static inline int work_open(eng_work *W, int ph)
{
    const uint64_t st = atomic_load(&W->claim);
    const uint64_t sph = st >> 48;
    return sph < (uint64_t)(ph + 1) ||
           (sph == (uint64_t)(ph + 1) && ((st >> 24) & WORK_FIELD) < (st & WORK_FIELD));
}

static inline void work_done(eng_work *W, int end)
{
    if (atomic_fetch_add(&W->done, 1) + 1 == end && atomic_load(&W->sleepers) > 0) {
#ifdef ENG_FUTEX
        syscall(SYS_futex, (int *)&W->done, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#endif
    }
}

/* until every chunk below end is done */
static void work_wait(eng_work *W, int end)
{
    for (int spins = 0; spins < SPIN_LIMIT; spins++) {
        if (atomic_load(&W->done) >= end) return;
        ENG_PAUSE();
    }
    int d;
    while ((d = atomic_load(&W->done)) < end) {
#ifdef ENG_FUTEX
        atomic_fetch_add(&W->sleepers, 1);
        /* sleeps only while done still holds d (no lost wake-up) */
        syscall(SYS_futex, (int *)&W->done, FUTEX_WAIT_PRIVATE, d, NULL, NULL, 0);
        atomic_fetch_sub(&W->sleepers, 1);
#elif defined(__unix__) || defined(__APPLE__)
        sched_yield();
#endif
    }
}

struct eng_session {
    eng_work work;
    float **ca, **cb;
    int64_t ctx;
    float *x, *h, *big, *o, *tmp, *scores, *u, *mix, *cq;
    int8_t *q8, *c8;
    int32_t *acc;
    float qs, cs;
    void *block;
    /* per-thread private activations (each thread normalizes/quantizes the shared vector
     * itself instead of waiting at one more barrier) */
    int64_t wide_in, tls_n;
    struct eng_tls *tls;
};

typedef struct eng_tls {
    int8_t *q8, *c8;
    float *h, *u;
    float qs, cs;
    void *block;
} eng_tls;

static int tls_reserve(const eng_model *M, eng_session *S, int nt)
{
    if (nt <= S->tls_n) return 0;
    eng_tls *t = (eng_tls *)realloc(S->tls, (size_t)nt * sizeof(eng_tls));
    if (!t) return -1;
    S->tls = t;
    const int64_t F = M->hidden > M->dim ? M->hidden : M->dim;
    for (int64_t i = S->tls_n; i < nt; i++) {
        char *b = (char *)malloc((size_t)(2 * S->wide_in + 4 * (M->dim + F) + 64));
        if (!b) return -1;
        t[i].block = b;
        t[i].h = (float *)b;
        t[i].u = t[i].h + M->dim;
        t[i].q8 = (int8_t *)(t[i].u + F);
        t[i].c8 = t[i].q8 + S->wide_in;
        S->tls_n = i + 1;
    }
    return 0;
}

/* An attention unit (one per enum eng_attention; see "attention units" below): the attention
 * of one layer as nphases phases of chunks (see "Work sharing" above). */
typedef struct {
    int nphases;
    /* chunks of phase p (0 allowed) */
    int64_t (*chunks)(const eng_model *M, const eng_layer *L, int p);
    /* what each thread does once before taking chunks of phase p (its private activations) */
    void (*prep)(const eng_model *M, eng_session *S, const eng_layer *L, eng_tls *T, int p);
    /* chunk ci of phase p */
    void (*chunk)(const eng_model *M, eng_session *S, const eng_layer *L, float *ca, float *cb,
                  eng_tls *T, int64_t pos, const float *cs, const float *sn, int p, int64_t ci);
    int64_t (*wide_out)(const eng_model *M);  /* floats of the widest projection output */
    int64_t (*latent)(const eng_model *M);    /* per-head latent scratch (floats) */
} eng_attn_unit;
static const eng_attn_unit *attn_unit(const eng_model *M);

#define MAX3(a, b, c) ((a) > (b) ? ((a) > (c) ? (a) : (c)) : ((b) > (c) ? (b) : (c)))

eng_session *eng_session_new(const eng_model *M, float **cache_a, float **cache_b, int64_t ctx)
{
    eng_session *S = (eng_session *)calloc(1, sizeof(eng_session));
    if (!S) return NULL;
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, F = M->hidden;
    const eng_attn_unit *A = attn_unit(M);
    if (!A) { free(S); return NULL; }
    int64_t wide_out = A->wide_out(M);
    if (wide_out < F) wide_out = F;
    int64_t wide_in = MAX3(d, F, H * hd);
    if (M->qlat > wide_in) wide_in = M->qlat;
    if (M->kvl > wide_in) wide_in = M->kvl;
    const int64_t kvl = A->latent(M);
    const int64_t nf = d + d + wide_out + H * hd + d + H * ctx + 2 * H * kvl + (M->qlat ? M->qlat : 0);
    wide_in = (wide_in + 255) / 256 * 256;  /* activations are zero-padded to whole blocks */
    const int64_t nbytes = nf * 4 + wide_out * 4 + 2 * wide_in + 64;
    char *b = (char *)malloc((size_t)nbytes);
    if (!b) { free(S); return NULL; }
    S->block = b;
    float *f = (float *)b;
    S->x = f; f += d;
    S->h = f; f += d;
    S->big = f; f += wide_out;
    S->o = f; f += H * hd;
    S->tmp = f; f += d;
    S->scores = f; f += H * ctx;
    S->u = f; f += H * kvl;
    S->mix = f; f += H * kvl;
    S->cq = f; f += (M->qlat ? M->qlat : 0);
    S->acc = (int32_t *)f;
    S->q8 = (int8_t *)(S->acc + wide_out);
    S->c8 = S->q8 + wide_in;
    S->ca = cache_a;
    S->cb = cache_b;
    S->ctx = ctx;
    S->wide_in = wide_in;
    if (tls_reserve(M, S, 1)) { eng_session_free(S); return NULL; }
    return S;
}

void eng_session_free(eng_session *S)
{
    if (!S) return;
    for (int64_t i = 0; i < S->tls_n; i++) free(S->tls[i].block);
    free(S->tls);
    free(S->block);
    free(S);
}

/* ---------------------------------------------------------------- element-wise helpers */
/* The quantizer, RMSNorm and RoPE are the one copy of poppins_numerics.h. */
static void quant_row(const float *y, int64_t d, int8_t *q, float *s)
{
    *s = pp_quant_row_f32(y, d, q);
    /* zero padding up to a whole 256-weight block (the decode matvec reads whole blocks) */
    const int64_t pad = (d + 255) / 256 * 256;
    if (pad > d) memset(q + d, 0, (size_t)(pad - d));
}

static void rms_row(const float *x, const float *g, int64_t d, double eps, float *y)
{
    pp_rms_row_f32(x, g, d, eps, y);
}

static void rope_row(float *x, const float *c, const float *s, int64_t half, int64_t nheads,
                     int64_t stride, int64_t offset)
{
    for (int64_t h = 0; h < nheads; h++) {
        float *p = x + h * stride + offset;
        pp_rope_pairs_f32(p, p + half, c, s, half, 0);
    }
}

static void softmax_mix(float *sc, int64_t P, const float *v, int64_t v_stride, int64_t dv,
                        float *o)
{
    float mx = sc[0], z = 0.0f;
    for (int64_t j = 1; j < P; j++)
        if (sc[j] > mx) mx = sc[j];
    for (int64_t c = 0; c < dv; c++) o[c] = 0.0f;
    for (int64_t j = 0; j < P; j++) {
        float p = expf(sc[j] - mx);
        z = z + p;
        eng_axpy_f32(p, v + j * v_stride, o, dv);
    }
    float inv = 1.0f / z;
    for (int64_t c = 0; c < dv; c++) o[c] = o[c] * inv;
}

static void embed_row(const eng_model *M, int32_t tok, float *out)
{
    const int64_t d = M->dim;
    if (M->emb_kind == 0) {
        memcpy(out, (const float *)M->emb + (int64_t)tok * d, (size_t)d * 4);
    } else if (M->emb_kind == 1) {
        const uint16_t *r = (const uint16_t *)M->emb + (int64_t)tok * d;
        for (int64_t k = 0; k < d; k++) out[k] = eng_half_to_float(r[k]);
    } else {
        const int8_t *r = (const int8_t *)M->emb + (int64_t)tok * d;
        const float s = M->emb_scale[tok];
        for (int64_t k = 0; k < d; k++) out[k] = (float)r[k] * s;
    }
}

/* ---------------------------------------------------------------- chunks of products */
/* Rows of a ternary product per chunk: multiples of 16 rows, at least ~16 KiB of weights (so
 * claiming a chunk costs little next to streaming it). */
static int64_t lin_rows(const eng_tern *w)
{
    int64_t per16 = 16 * (w->stride > 0 ? w->stride : 1);
    int64_t n = (16384 + per16 - 1) / per16;
    return 16 * (n > 0 ? n : 1);
}

static int64_t lin_chunks(const eng_tern *w)
{
    const int64_t rc = lin_rows(w);
    return (w->m + rc - 1) / rc;
}

/* out[r0:r1] (= or +=) (W x)[r0:r1] * scale / xs; acc: int32 scratch indexed like out */
static void linear_rows(const eng_tern *w, const int8_t *x, float xs, int32_t *acc, float *out,
                        int accumulate, int kernel, int64_t r0, int64_t r1)
{
    if (r1 > w->m) r1 = w->m;
    if (r0 >= r1) return;
    g_tern->matvec_padded(w->w + r0 * w->stride, w->stride, r1 - r0, w->k, x, acc + r0, kernel);
    const float f = w->scale / xs;
    if (accumulate)
        for (int64_t r = r0; r < r1; r++) out[r] = out[r] + (float)acc[r] * f;
    else
        for (int64_t r = r0; r < r1; r++) out[r] = (float)acc[r] * f;
}

/* chunk ci of a product (lin_chunks(w) chunks) */
static void linear_chunk(const eng_tern *w, const int8_t *x, float xs, int32_t *acc, float *out,
                         int accumulate, int kernel, int64_t ci)
{
    const int64_t rc = lin_rows(w);
    linear_rows(w, x, xs, acc, out, accumulate, kernel, ci * rc, ci * rc + rc);
}

/* The thread's private normalized, quantized copy of the shared residual x. */
static void norm_quant(const eng_model *M, eng_session *S, const float *g, eng_tls *T)
{
    rms_row(S->x, g, M->dim, M->eps, T->h);
    quant_row(T->h, M->dim, T->q8, &T->qs);
}

/* ---------------------------------------------------------------- attention units
 * One set of functions per attention type (enum eng_attention, engine_step.h): the attention
 * of one layer, from the normalized, quantized input (T->q8, T->qs, made before phase 0) to the
 * heads' outputs in S->o, filling the layer's caches at pos, as phases of chunks; and the
 * scratch sizes it needs.  attn_unit() is the one switch point: adding an attention type = one
 * more enum value, one more unit, one more case there (eng_attn_unit is declared above
 * eng_session_new, which sizes the scratch through it). */

/* MHA / GQA.  Phase 0: the fused q|k|v projection one head (hd rows) per chunk, each chunk
 * rotating its query/key head and caching its key/value head at once; phase 1: one query head
 * per chunk (scores, softmax, values). */
static int64_t attn_mha_chunks(const eng_model *M, const eng_layer *L, int p)
{
    (void)L;
    return p == 0 ? M->heads + 2 * M->kv_heads : M->heads;
}

static void attn_mha_prep(const eng_model *M, eng_session *S, const eng_layer *L, eng_tls *T, int p)
{
    (void)M; (void)S; (void)L; (void)T; (void)p;
}

static void attn_mha_chunk(const eng_model *M, eng_session *S, const eng_layer *L, float *ca,
                           float *cb, eng_tls *T, int64_t pos, const float *cs, const float *sn,
                           int p, int64_t h)
{
    const int64_t H = M->heads, hd = M->head_dim, Hk = M->kv_heads;
    if (p == 0) {
        linear_rows(&L->wqkv, T->q8, T->qs, S->acc, S->big, 0, M->kernel, h * hd, (h + 1) * hd);
        float *row = S->big + h * hd;
        if (h < H + Hk) rope_row(row, cs, sn, M->rot_half, 1, hd, 0);
        if (h >= H && h < H + Hk) memcpy(ca + pos * Hk * hd + (h - H) * hd, row, (size_t)hd * 4);
        if (h >= H + Hk) memcpy(cb + pos * Hk * hd + (h - H - Hk) * hd, row, (size_t)hd * 4);
        return;
    }
    const int64_t P = pos + 1, hk = h / (H / Hk);
    const float scale = (float)(1.0 / sqrt((double)hd));
    float *sc = S->scores + h * S->ctx;
    const float *q = S->big + h * hd;
    for (int64_t j = 0; j < P; j++)
        sc[j] = eng_dot_f32(q, ca + j * Hk * hd + hk * hd, hd) * scale;
    softmax_mix(sc, P, cb + hk * hd, Hk * hd, hd, S->o + h * hd);
}

static int64_t attn_mha_wide_out(const eng_model *M) { return (M->heads + 2 * M->kv_heads) * M->head_dim; }
static int64_t attn_mha_latent(const eng_model *M) { (void)M; return 0; }

/* MLA: latent cache (normalized, quantized-dequantized) + shared rotary key, with the key/value
 * up-projection absorbed into the query and the output.  Phase 0: the query (or its low-rank
 * down-projection) and the kv down-projection; phase 1: the query up-projection (qlat > 0;
 * each thread normalizes/quantizes the query latent itself); phase 2 (one chunk): the latent
 * and rotary key into the caches, rotary queries; phase 3: one head per chunk. */
#define MLA_ACC_KV(M) ((M)->heads * ((M)->head_dim + (M)->rope))
#define MLA_ACC_QA(M) (MLA_ACC_KV(M) + (M)->kvl + (M)->rope)

static int64_t attn_mla_chunks(const eng_model *M, const eng_layer *L, int p)
{
    switch (p) {
    case 0: return lin_chunks(M->qlat ? &L->wq_a : &L->wq) + lin_chunks(&L->wkv_a);
    case 1: return M->qlat ? lin_chunks(&L->wq_b) : 0;
    case 2: return 1;
    default: return M->heads;
    }
}

static void attn_mla_prep(const eng_model *M, eng_session *S, const eng_layer *L, eng_tls *T, int p)
{
    if (p == 1 && M->qlat) {
        rms_row(S->cq, L->q_norm, M->qlat, M->eps, T->u);
        quant_row(T->u, M->qlat, T->c8, &T->cs);
    }
}

static void attn_mla_chunk(const eng_model *M, eng_session *S, const eng_layer *L, float *ca,
                           float *cb, eng_tls *T, int64_t pos, const float *cs, const float *sn,
                           int p, int64_t ci)
{
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, P = pos + 1;
    const int64_t r = M->rope, kvl = M->kvl, w = hd + r;
    const int kern = M->kernel;
    float *qf = S->big, *kva = S->big + H * w;
    if (p == 0) {
        const eng_tern *wq = M->qlat ? &L->wq_a : &L->wq;
        const int64_t nq = lin_chunks(wq);
        if (ci < nq) {
            if (M->qlat) linear_chunk(wq, T->q8, T->qs, S->acc + MLA_ACC_QA(M), S->cq, 0, kern, ci);
            else linear_chunk(wq, T->q8, T->qs, S->acc, qf, 0, kern, ci);
        } else {
            linear_chunk(&L->wkv_a, T->q8, T->qs, S->acc + MLA_ACC_KV(M), kva, 0, kern, ci - nq);
        }
        return;
    }
    if (p == 1) {
        linear_chunk(&L->wq_b, T->c8, T->cs, S->acc, qf, 0, kern, ci);
        return;
    }
    if (p == 2) {
        float ls;
        float *lat = kvl <= d ? S->tmp : S->mix;
        rms_row(kva, L->kv_norm, kvl, M->eps, lat);
        quant_row(lat, kvl, S->c8, &ls);
        float *crow = ca + pos * kvl;
        for (int64_t c = 0; c < kvl; c++) crow[c] = (float)S->c8[c] / ls;
        rope_row(qf, cs, sn, M->rot_half, H, w, hd);
        rope_row(kva, cs, sn, M->rot_half, 1, kvl + r, kvl);
        memcpy(cb + pos * r, kva + kvl, (size_t)r * 4);
        return;
    }
    const int64_t h = ci;
    const float scale = (float)(1.0 / sqrt((double)(hd + r)));
    float *sc = S->scores + h * S->ctx;
    float *u = S->u + h * kvl, *m = S->mix + h * kvl;
    const float *qn = qf + h * w;
    const float ws = L->wkv_b_scale;
    for (int64_t c = 0; c < kvl; c++) u[c] = 0.0f;
    for (int64_t i = 0; i < hd; i++) {
        const float a = qn[i];
        const float *wr = L->wkv_b + (h * hd + i) * kvl;
        for (int64_t c = 0; c < kvl; c++) u[c] = u[c] + a * wr[c];
    }
    for (int64_t c = 0; c < kvl; c++) u[c] = u[c] * ws;
    for (int64_t j = 0; j < P; j++)
        sc[j] = (eng_dot_f32(u, ca + j * kvl, kvl) + eng_dot_f32(qn + hd, cb + j * r, r)) * scale;
    softmax_mix(sc, P, ca, kvl, kvl, m);
    for (int64_t i = 0; i < hd; i++)
        S->o[h * hd + i] = eng_dot_f32(L->wkv_b + ((H + h) * hd + i) * kvl, m, kvl) * ws;
}

static int64_t attn_mla_wide_out(const eng_model *M)
{
    return M->heads * (M->head_dim + M->rope) + M->kvl + M->rope + (M->qlat ? M->qlat : 0);
}
static int64_t attn_mla_latent(const eng_model *M) { return M->kvl; }

static const eng_attn_unit ATTN_MHA = {2, attn_mha_chunks, attn_mha_prep, attn_mha_chunk,
                                       attn_mha_wide_out, attn_mha_latent};
static const eng_attn_unit ATTN_MLA = {4, attn_mla_chunks, attn_mla_prep, attn_mla_chunk,
                                       attn_mla_wide_out, attn_mla_latent};

/* THE switch over attention types (NULL for an unknown one). */
static const eng_attn_unit *attn_unit(const eng_model *M)
{
    switch ((eng_attention)M->attention) {
    case ENG_ATTN_MHA: return &ATTN_MHA;
    case ENG_ATTN_MLA: return &ATTN_MLA;
    default: return NULL;
    }
}

/* PHASE(n, prep, body): the next phase of the step, n chunks: unless every chunk is already
 * claimed, run `prep` once, then `body` for each chunk this thread claims (ci: the chunk's
 * index within the phase); then wait until every chunk of the phase is done. */
#define PHASE(n, prep, ...)                                                                \
    do {                                                                                   \
        const int p0_ = base, p1_ = base + (int)(n), ph_ = phase++;                        \
        base = p1_;                                                                        \
        if (p1_ > p0_ && work_open(W, ph_)) {                                              \
            prep;                                                                          \
            int c_;                                                                        \
            while ((c_ = work_claim(W, ph_, p0_, p1_, tid & 1)) >= 0) {                    \
                const int64_t ci = c_ - p0_;                                               \
                (void)ci;                                                                  \
                __VA_ARGS__;                                                               \
                work_done(W, p1_);                                                         \
            }                                                                              \
        }                                                                                  \
        work_wait(W, p1_);                                                                 \
    } while (0)

#define HEAD_ROWS 256   /* vocabulary rows of the output head per chunk */

static void step_body(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                      float *logits, int tid)
{
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, F = M->hidden;
    const int kern = M->kernel;
    const float *cs = M->cos + pos * M->rot_half, *sn = M->sin + pos * M->rot_half;
    eng_work *W = &S->work;
    int base = 0, phase = 0;
    eng_tls *T = &S->tls[tid];
    const eng_attn_unit *A = attn_unit(M);
    PHASE(1, (void)0, embed_row(M, token, S->x));
    for (int64_t l = 0; l < M->layers; l++) {
        const eng_layer *L = &M->L[l];
        float *ca = S->ca[l], *cb = S->cb[l];
        for (int p = 0; p < A->nphases; p++) {
            if (p == 0)
                PHASE(A->chunks(M, L, p), { norm_quant(M, S, L->attn_norm, T); A->prep(M, S, L, T, p); },
                      A->chunk(M, S, L, ca, cb, T, pos, cs, sn, p, ci));
            else
                PHASE(A->chunks(M, L, p), A->prep(M, S, L, T, p),
                      A->chunk(M, S, L, ca, cb, T, pos, cs, sn, p, ci));
        }
        PHASE(lin_chunks(&L->wo), quant_row(S->o, H * hd, T->q8, &T->qs),
              linear_chunk(&L->wo, T->q8, T->qs, S->acc, S->x, 1, kern, ci));
        PHASE(lin_chunks(&L->w_up), norm_quant(M, S, L->ffn_norm, T),
              linear_chunk(&L->w_up, T->q8, T->qs, S->acc, S->big, 0, kern, ci));
        PHASE(lin_chunks(&L->w_down), {
                  for (int64_t k = 0; k < F; k++) {
                      float v = S->big[k] < 0.0f ? 0.0f : S->big[k];
                      T->u[k] = v * v;
                  }
                  quant_row(T->u, F, T->q8, &T->qs);
              },
              linear_chunk(&L->w_down, T->q8, T->qs, S->acc, S->x, 1, kern, ci));
    }
    PHASE((M->vocab + HEAD_ROWS - 1) / HEAD_ROWS, rms_row(S->x, M->final_norm, d, M->eps, T->h), {
        const int64_t v1 = ci * HEAD_ROWS + HEAD_ROWS < M->vocab ? ci * HEAD_ROWS + HEAD_ROWS : M->vocab;
        for (int64_t v = ci * HEAD_ROWS; v < v1; v++) {
            if (M->head_kind == 0)
                logits[v] = eng_dot_f32((const float *)M->head + v * d, T->h, d);
            else if (M->head_kind == 1)
                logits[v] = eng_dot_f16((const uint16_t *)M->head + v * d, T->h, d);
            else
                logits[v] = eng_dot_i8((const int8_t *)M->head + v * d, T->h, d) * M->head_scale[v];
        }
    });
}

int eng_set_ternary(const void *api)
{
    const tern_c_api *t = (const tern_c_api *)api;
    if (!t || t->version != TERN_C_API_VERSION) return -1;
    g_tern = t;
    return 0;
}

void eng_step_init(void)
{
    if (g_tern) g_tern->init();
    eng_init();
}

int eng_tern_available(int kernel) { return g_tern && g_tern->kernel_available(kernel); }

const char *eng_tern_kernel_name(int kernel) { return g_tern ? g_tern->kernel_name(kernel) : NULL; }

int eng_tern_matvec(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k, const int8_t *x,
                    int32_t *y, int kernel)
{
    return g_tern ? g_tern->matvec_padded(w, w_stride, m, k, x, y, kernel) : -1;
}

int eng_decode_step(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                    float *logits, int threads)
{
    if (!g_tern || !M || !S || !attn_unit(M) || pos < 0 || pos >= S->ctx || pos >= M->rope_rows || token < 0 ||
        token >= M->vocab)
        return -1;
    int nt = poppins_threads(threads);
    if (tls_reserve(M, S, nt)) return -1;
    if (M->layers * 8 + 2 >= (1 << 15)) return -1;  /* the claim word's phase field */
    atomic_store(&S->work.claim, 0);
    atomic_store(&S->work.done, 0);
    if (nt <= 1) {
        step_body(M, S, token, pos, logits, 0);
        return 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    step_body(M, S, token, pos, logits, omp_get_thread_num());
#else
    step_body(M, S, token, pos, logits, 0);
#endif
    return 0;
}
