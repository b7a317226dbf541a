/* The compiled decode step (see engine_step.h). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1  /* syscall() under -std=c11 */
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/* A sense-reversing barrier for the threads of one step: spin for an adaptive number of
 * pauses, then sleep in the kernel (Linux futex; elsewhere yield).  Spinning pays when the
 * other thread is running and a few microseconds away (a free core); it costs a lot when the
 * thread we wait for is descheduled (a busy machine: the spinner holds the core it needs).
 * Counting successes and failures cannot tell the two apart: on a free core of an idle 2-vCPU
 * AMD EPYC (Zen 3) VM a few % of the waits of a 10M decode step take 10-100 us (a phase
 * with more work on one side, the OpenMP worker waking at the start of a step), and the old
 * rule (+25% per caught release, a quarter per sleep, 400 pauses at most) decayed to
 * sleeping at every barrier: two threads ran at 0.22x one thread (600 against 2,700 tok/s).
 * So the budget follows how long a wait that had to sleep really lasted (its spin, plus the
 * time from the failed spin to the release, which the releaser stamps when it has sleepers;
 * the fast path reads no clock):
 *   - at most SHORT_NS: the other thread was running, only late -> spin long enough to catch
 *     twice that wait next time (at most SPIN_MAX_NS, at least double the budget);
 *   - longer: it was descheduled (a busy machine) -> the next COOL_WAITS waits (a few
 *     decode steps) sleep at once, then the budget grows back from 0 as waits prove short.
 * A wait that sleeps at budget 0 is measured the same way, so a machine that frees up gets its
 * spinning back without a probe.  Spinning while the other thread is descheduled holds the core
 * it needs: with a CPU-bound process beside a 100M decode step on 2 cores, a rule that only
 * shrank the budget after such waits ran two threads at 0.4x one thread.  The pause's cost
 * (about 25 ns on Zen 3, 30-140 ns on Intel) is measured once.  The first wait of a step does not count: there the other thread may
 * still be waking from the OpenMP runtime's sleep between steps, which says nothing about the
 * machine.  *local: bit 0 the thread's sense, the bits above it its waits in this step. */
typedef struct {
    atomic_int count;
    atomic_int sense;
    atomic_int sleepers;
    atomic_int spin;    /* the spin budget in pauses, shared by the waiters (a heuristic) */
    _Atomic int64_t rel_ns;  /* when the last release that had sleepers happened */
    atomic_int cool;    /* waits left that sleep at once (after a wait for a descheduled thread) */
    atomic_int late;    /* waits of this step for a descheduled thread (see eng_decode_step) */
} eng_barrier;

#define SPIN_MAX_NS 100000   /* the longest spin */
#define SHORT_NS 200000      /* a wait up to this long had its thread running */
#define SPIN_START 400       /* the budget of a new session, in pauses */
#define COOL_WAITS 1024      /* waits that sleep at once after a wait longer than SHORT_NS */
#define PROBE_START_NS 20000000LL   /* the first try of the other team size (see eng_decode_step) */
#define PROBE_MAX_NS 1000000000LL    /* the longest gap between tries */
#define PROBE_STEPS 3                /* steps of a try; the first one is not timed */
#define PROBE_LOSS 3                 /* a try's step this many times the mean step loses at once */

static int64_t now_ns(void)
{
    struct timespec t;
#if defined(CLOCK_MONOTONIC)
    clock_gettime(CLOCK_MONOTONIC, &t);
#else
    timespec_get(&t, TIME_UTC);
#endif
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* nanoseconds per ENG_PAUSE(), measured once (a benign race: every thread stores the same
 * kind of value) */
static int pause_ns(void)
{
    static atomic_int v;
    int p = atomic_load_explicit(&v, memory_order_relaxed);
    if (p) return p;
    const int64_t t0 = now_ns();
    for (int i = 0; i < 1024; i++) ENG_PAUSE();
    p = (int)((now_ns() - t0) / 1024);
    if (p < 1) p = 1;
    atomic_store_explicit(&v, p, memory_order_relaxed);
    return p;
}

static void barrier_wait(eng_barrier *b, int nt, int *local)
{
    if (nt <= 1) return;
    const int s = !(*local & 1);
    const int first = (*local >> 1) == 0;   /* the step's first wait: a worker still waking */
    *local = ((((*local >> 1) + 1) & 0xffff) << 1) | s;
    if (atomic_fetch_add(&b->count, 1) == nt - 1) {
        atomic_store(&b->count, 0);
        atomic_store(&b->sense, s);
#ifdef ENG_FUTEX
        if (atomic_load(&b->sleepers) > 0) {
            atomic_store_explicit(&b->rel_ns, now_ns(), memory_order_relaxed);
            syscall(SYS_futex, (int *)&b->sense, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
        }
#endif
        return;
    }
    int lim = atomic_load_explicit(&b->spin, memory_order_relaxed);
    if (atomic_load_explicit(&b->cool, memory_order_relaxed) > 0) {
        atomic_fetch_sub_explicit(&b->cool, 1, memory_order_relaxed);
        lim = 0;
    }
    for (int spins = 0; spins < lim; spins++) {
        if (atomic_load(&b->sense) == s) return;
        ENG_PAUSE();
    }
    if (atomic_load(&b->sense) == s) return;
    const int pns = pause_ns();
    const int64_t t_fail = now_ns();
    while (atomic_load(&b->sense) != s) {
#ifdef ENG_FUTEX
        atomic_fetch_add(&b->sleepers, 1);
        /* sleeps only while sense still holds the old value (no lost wake-up) */
        syscall(SYS_futex, (int *)&b->sense, FUTEX_WAIT_PRIVATE, !s, NULL, NULL, 0);
        atomic_fetch_sub(&b->sleepers, 1);
#elif defined(__unix__) || defined(__APPLE__)
        sched_yield();
#endif
    }
    /* until the release, not until we woke: waking a sleeping thread (an idle vCPU) can take
     * 100-200 us, which says nothing about the other thread being descheduled */
    int64_t until = now_ns();
#ifdef ENG_FUTEX
    const int64_t rel = atomic_load_explicit(&b->rel_ns, memory_order_relaxed);
    if (rel < until) until = rel > t_fail ? rel : t_fail;
#endif
    const int64_t waited = (until - t_fail) + (int64_t)lim * pns;
    if (first) return;                       /* says nothing about the machine */
    if (waited > SHORT_NS) {                 /* descheduled: sleep at once for COOL_WAITS waits */
        atomic_fetch_add_explicit(&b->late, 1, memory_order_relaxed);
        /* not re-armed by a wait that slept at once: that wait includes the other thread's
         * own wake-up from its sleep (50-100 us on a VM), so cooling would feed itself and
         * two threads on a free core stayed asleep at 0.2x one thread (588 vs 2,700 tok/s,
         * 10M, Zen 3 VM) */
        if (lim > 0) {
            atomic_store_explicit(&b->cool, COOL_WAITS, memory_order_relaxed);
            atomic_store_explicit(&b->spin, 0, memory_order_relaxed);
        }
        return;
    }
    if (atomic_load_explicit(&b->cool, memory_order_relaxed) > 0) return;
    /* running but late: spin for twice this wait, at least double the budget, 64..most */
    const int64_t most = SPIN_MAX_NS / pns, want = 2 * waited / pns;
    int64_t next = want > 2 * (int64_t)lim ? want : 2 * (int64_t)lim;
    next = next < 64 ? 64 : next > most ? most : next;
    atomic_store_explicit(&b->spin, (int)next, memory_order_relaxed);
}

struct eng_session {
    eng_barrier bar;
    /* the team size chooser (see eng_decode_step): the size in use (0 the team, 1 one
     * thread), each size's mean step time (ns, exponential, 0 unknown), the next try of the
     * other size and the gap before it, the steps left in a try and their summed time */
    int solo, probe_left, fixed;   /* fixed: every step on the team (no chooser) */
    int64_t mean_ns[2], probe_at, probe_gap, probe_sum, probe_cost;
    int64_t tokens_team, tokens_solo;
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

/* Scratch buffers start on 64-byte boundaries: the kernels read activations with 32-byte
 * loads, and one that straddles two cache lines costs a second access.  With the int8
 * activations at 16 mod 64 (where a block from malloc put them) the AVX2 decode matvec read
 * 13.2 GB/s instead of 16.8 (8 mod 64: 11.7) on a Zen 3 EPYC, k = 1,024.  carve_block() takes
 * the list of pieces (where each pointer goes, its bytes), allocates one block for all of them
 * and points each piece at its own 64-byte aligned part; it returns the block to free(), or
 * NULL.  The list is the one place a piece is sized. */
#define CARVE_ALIGN 64
#define CARVE_UP(n) (((n) + CARVE_ALIGN - 1) / CARVE_ALIGN * CARVE_ALIGN)
typedef struct { void **dst; int64_t bytes; } eng_piece;
static void *carve_block(const eng_piece *pc, int n)
{
    int64_t total = CARVE_ALIGN - 1;
    for (int i = 0; i < n; i++) total += CARVE_UP(pc[i].bytes);
    char *block = (char *)malloc((size_t)total);
    if (!block) return NULL;
    char *p = block + CARVE_UP((uintptr_t)block) - (uintptr_t)block;
    for (int i = 0; i < n; i++) {
        *pc[i].dst = p;
        p += CARVE_UP(pc[i].bytes);
    }
    return block;
}

static int tls_reserve(const eng_model *M, eng_session *S, int nt)
{
    if (nt <= S->tls_n) return 0;
    eng_tls *t = (eng_tls *)realloc(S->tls, (size_t)nt * sizeof(eng_tls));
    if (!t) return -1;
    S->tls = t;
    const int64_t F = M->hidden > M->dim ? M->hidden : M->dim;
    for (int64_t i = S->tls_n; i < nt; i++) {
        const eng_piece pc[] = {{(void **)&t[i].h, 4 * M->dim}, {(void **)&t[i].u, 4 * F},
                                {(void **)&t[i].q8, S->wide_in}, {(void **)&t[i].c8, S->wide_in}};
        t[i].block = carve_block(pc, (int)(sizeof pc / sizeof pc[0]));
        if (!t[i].block) return -1;
        S->tls_n = i + 1;
    }
    return 0;
}

/* An attention unit (one per enum eng_attention; see "attention units" below). */
typedef void (*attn_step_fn)(const eng_model *M, eng_session *S, const eng_layer *L, float *ca,
                             float *cb, eng_tls *T, int64_t pos, const float *cs, const float *sn,
                             int tid, int nt, int *sense_p);
typedef struct {
    attn_step_fn step;
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
    wide_in = (wide_in + 255) / 256 * 256;  /* activations are zero-padded to whole blocks */
    const int64_t ql = M->qlat ? M->qlat : 0;
    const eng_piece pc[] = {
        {(void **)&S->x, 4 * d},           {(void **)&S->h, 4 * d},
        {(void **)&S->big, 4 * wide_out},  {(void **)&S->o, 4 * H * hd},
        {(void **)&S->tmp, 4 * d},         {(void **)&S->scores, 4 * H * ctx},
        {(void **)&S->u, 4 * H * kvl},     {(void **)&S->mix, 4 * H * kvl},
        {(void **)&S->cq, 4 * ql},         {(void **)&S->acc, 4 * wide_out},
        {(void **)&S->q8, wide_in},        {(void **)&S->c8, wide_in}};
    S->block = carve_block(pc, (int)(sizeof pc / sizeof pc[0]));
    if (!S->block) { free(S); return NULL; }
    S->ca = cache_a;
    S->cb = cache_b;
    S->ctx = ctx;
    S->wide_in = wide_in;
    atomic_store(&S->bar.spin, SPIN_START);
    S->probe_gap = PROBE_START_NS;
    S->probe_at = INT64_MAX;   /* set by the first timed step */
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

/* ---------------------------------------------------------------- parallel pieces */
/* This thread's share of out (= or +=) (W x) * scale / xs: contiguous rows, multiples of 16. */
static void linear_part(const eng_tern *w, const int8_t *x, float xs, int32_t *acc, float *out,
                        int accumulate, int kernel, int tid, int nt)
{
    const int64_t chunks = (w->m + 15) / 16;
    const int64_t a = chunks * tid / nt, b = chunks * (tid + 1) / nt;
    const int64_t r0 = a * 16, r1 = b * 16 < w->m ? b * 16 : w->m;
    if (r0 >= r1) return;
    g_tern->matvec_padded(w->w + r0 * w->stride, w->stride, r1 - r0, w->k, x, acc + r0, kernel);
    const float f = w->scale / xs;
    if (accumulate)
        for (int64_t r = r0; r < r1; r++) out[r] = out[r] + (float)acc[r] * f;
    else
        for (int64_t r = r0; r < r1; r++) out[r] = (float)acc[r] * f;
}

/* out[r] = (W x)[r] * scale / xs for the rows [r0, r1) (one thread's rows picked by the caller) */
static void linear_rows(const eng_tern *w, const int8_t *x, float xs, int32_t *acc, float *out,
                        int kernel, int64_t r0, int64_t r1)
{
    if (r0 >= r1) return;
    g_tern->matvec_padded(w->w + r0 * w->stride, w->stride, r1 - r0, w->k, x, acc + r0, kernel);
    const float f = w->scale / xs;
    for (int64_t r = r0; r < r1; r++) out[r] = (float)acc[r] * f;
}

/* BARRIER: every thread waits; ON_ONE(...): thread 0 runs the block, then a barrier;
 * RANGE(lo, hi, n): this thread's contiguous share of [0, n). */
#define BARRIER barrier_wait(&S->bar, nt, sense_p)
#define ON_ONE(block) do { if (tid == 0) { block } BARRIER; } while (0)
#define RANGE(lo, hi, n) const int64_t lo = (n) * tid / nt, hi = (n) * (tid + 1) / nt

/* ---------------------------------------------------------------- attention units
 * One function per attention type (enum eng_attention, engine_step.h): the step of one layer
 * from the normalized, quantized input (T->q8, T->qs) to the heads' outputs in S->o, filling the
 * layer's caches at pos; and the scratch sizes it needs.  attn_unit() is the one switch point:
 * adding an attention type = one more enum value, one more unit, one more case there
 * (eng_attn_unit is declared above eng_session_new, which sizes the scratch through it). */

/* MHA / GQA: one fused q|k|v projection, rotated keys and values cached per kv head. */
static void attn_mha_step(const eng_model *M, eng_session *S, const eng_layer *L, float *ca,
                          float *cb, eng_tls *T, int64_t pos, const float *cs, const float *sn,
                          int tid, int nt, int *sense_p)
{
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, P = pos + 1;
    const int kern = M->kernel;
    RANGE(h0, h1, H);
    (void)d;
    const int64_t Hk = M->kv_heads, grp = H / Hk;
    const float scale = (float)(1.0 / sqrt((double)hd));
    if (nt > 1 && Hk % nt == 0) {
        /* each thread takes whole kv groups: it projects, rotates and caches its own query,
         * key and value heads and attends with them, so no barrier is needed before the
         * caller's (two fewer per layer than the row split below) */
        const int64_t g0 = Hk * tid / nt, g1 = Hk * (tid + 1) / nt;
        float *big = S->big;
        linear_rows(&L->wqkv, T->q8, T->qs, S->acc, big, kern, g0 * grp * hd, g1 * grp * hd);
        linear_rows(&L->wqkv, T->q8, T->qs, S->acc, big, kern, (H + g0) * hd, (H + g1) * hd);
        linear_rows(&L->wqkv, T->q8, T->qs, S->acc, big, kern, (H + Hk + g0) * hd,
                    (H + Hk + g1) * hd);
        for (int64_t h = g0 * grp; h < g1 * grp; h++)
            rope_row(big + h * hd, cs, sn, M->rot_half, 1, hd, 0);
        for (int64_t g = g0; g < g1; g++) {
            rope_row(big + (H + g) * hd, cs, sn, M->rot_half, 1, hd, 0);
            memcpy(ca + pos * Hk * hd + g * hd, big + (H + g) * hd, (size_t)hd * 4);
            memcpy(cb + pos * Hk * hd + g * hd, big + (H + Hk + g) * hd, (size_t)hd * 4);
        }
        for (int64_t h = g0 * grp; h < g1 * grp; h++) {
            const int64_t hk = h / grp;
            eng_attend_f32(big + h * hd, ca + hk * hd, Hk * hd, cb + hk * hd, Hk * hd, P, hd, hd,
                           scale, S->scores + h * S->ctx, S->o + h * hd);
        }
        (void)h0; (void)h1;
        return;
    }
    linear_part(&L->wqkv, T->q8, T->qs, S->acc, S->big, 0, kern, tid, nt);
    BARRIER;
    {   /* rotate this thread's share of the query/key heads; cache its kv heads */
        RANGE(r0, r1, H + Hk);
        for (int64_t h = r0; h < r1; h++)
            rope_row(S->big + h * hd, cs, sn, M->rot_half, 1, hd, 0);
        for (int64_t h = (r0 > H ? r0 : H); h < r1; h++)
            memcpy(ca + pos * Hk * hd + (h - H) * hd, S->big + h * hd, (size_t)hd * 4);
        RANGE(v0, v1, Hk);
        if (v1 > v0)
            memcpy(cb + pos * Hk * hd + v0 * hd, S->big + (H + Hk + v0) * hd,
                   (size_t)((v1 - v0) * hd) * 4);
    }
    BARRIER;
    for (int64_t h = h0; h < h1; h++) {
        const int64_t hk = h / grp;
        eng_attend_f32(S->big + h * hd, ca + hk * hd, Hk * hd, cb + hk * hd, Hk * hd, P, hd, hd,
                       scale, S->scores + h * S->ctx, S->o + h * hd);
    }
}

static int64_t attn_mha_wide_out(const eng_model *M) { return (M->heads + 2 * M->kv_heads) * M->head_dim; }
static int64_t attn_mha_latent(const eng_model *M) { (void)M; return 0; }

/* MLA: latent cache (normalized, quantized-dequantized) + shared rotary key, with the key/value
 * up-projection absorbed into the query and the output. */
static void attn_mla_step(const eng_model *M, eng_session *S, const eng_layer *L, float *ca,
                          float *cb, eng_tls *T, int64_t pos, const float *cs, const float *sn,
                          int tid, int nt, int *sense_p)
{
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, P = pos + 1;
    const int kern = M->kernel;
    RANGE(h0, h1, H);
    (void)d;
    const int64_t r = M->rope, kvl = M->kvl, w = hd + r;
    const float scale = (float)(1.0 / sqrt((double)(hd + r)));
    float *qf = S->big, *kva = S->big + H * w;
    if (M->qlat) {
        linear_part(&L->wq_a, T->q8, T->qs, S->acc, S->cq, 0, kern, tid, nt);
        BARRIER;
        rms_row(S->cq, L->q_norm, M->qlat, M->eps, T->u);
        quant_row(T->u, M->qlat, T->c8, &T->cs);
        linear_part(&L->wq_b, T->c8, T->cs, S->acc, qf, 0, kern, tid, nt);
    } else {
        linear_part(&L->wq, T->q8, T->qs, S->acc, qf, 0, kern, tid, nt);
    }
    linear_part(&L->wkv_a, T->q8, T->qs, S->acc + H * w, kva, 0, kern, tid, nt);
    BARRIER;
    ON_ONE({
        float ls;
        float *lat = kvl <= d ? S->tmp : S->mix;
        rms_row(kva, L->kv_norm, kvl, M->eps, lat);
        quant_row(lat, kvl, S->c8, &ls);
        float *crow = ca + pos * kvl;
        for (int64_t c = 0; c < kvl; c++) crow[c] = (float)S->c8[c] / ls;
        rope_row(qf, cs, sn, M->rot_half, H, w, hd);
        rope_row(kva, cs, sn, M->rot_half, 1, kvl + r, kvl);
        memcpy(cb + pos * r, kva + kvl, (size_t)r * 4);
    });
    for (int64_t h = h0; h < h1; h++) {
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
            sc[j] = (eng_dot_f32(u, ca + j * kvl, kvl) +
                     eng_dot_f32(qn + hd, cb + j * r, r)) * scale;
        eng_softmax_mix_f32(sc, P, ca, kvl, kvl, m);
        for (int64_t i = 0; i < hd; i++)
            S->o[h * hd + i] =
                eng_dot_f32(L->wkv_b + ((H + h) * hd + i) * kvl, m, kvl) * ws;
    }
}

static int64_t attn_mla_wide_out(const eng_model *M)
{
    return M->heads * (M->head_dim + M->rope) + M->kvl + M->rope + (M->qlat ? M->qlat : 0);
}
static int64_t attn_mla_latent(const eng_model *M) { return M->kvl; }

static const eng_attn_unit ATTN_MHA = {attn_mha_step, attn_mha_wide_out, attn_mha_latent};
static const eng_attn_unit ATTN_MLA = {attn_mla_step, attn_mla_wide_out, attn_mla_latent};

/* THE switch over attention types (NULL for an unknown one). */
static const eng_attn_unit *attn_unit(const eng_model *M)
{
    switch ((eng_attention)M->attention) {
    case ENG_ATTN_MHA: return &ATTN_MHA;
    case ENG_ATTN_MLA: return &ATTN_MLA;
    default: return NULL;
    }
}

static void step_body(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                      float *logits, int tid, int nt)
{
    const int64_t d = M->dim, H = M->heads, hd = M->head_dim, F = M->hidden;
    const int kern = M->kernel;
    const float *cs = M->cos + pos * M->rot_half, *sn = M->sin + pos * M->rot_half;
    int sense = atomic_load(&S->bar.sense), *sense_p = &sense;
    eng_tls *T = &S->tls[tid];
    const eng_attn_unit *A = attn_unit(M);
    ON_ONE({ embed_row(M, token, S->x); });
    for (int64_t l = 0; l < M->layers; l++) {
        const eng_layer *L = &M->L[l];
        float *ca = S->ca[l], *cb = S->cb[l];
        rms_row(S->x, L->attn_norm, d, M->eps, T->h);
        quant_row(T->h, d, T->q8, &T->qs);
        A->step(M, S, L, ca, cb, T, pos, cs, sn, tid, nt, sense_p);
        BARRIER;
        quant_row(S->o, H * hd, T->q8, &T->qs);
        linear_part(&L->wo, T->q8, T->qs, S->acc, S->x, 1, kern, tid, nt);
        BARRIER;
        rms_row(S->x, L->ffn_norm, d, M->eps, T->h);
        quant_row(T->h, d, T->q8, &T->qs);
        linear_part(&L->w_up, T->q8, T->qs, S->acc, S->big, 0, kern, tid, nt);
        BARRIER;
        eng_relu2_row(S->big, F, T->u);
        quant_row(T->u, F, T->q8, &T->qs);
        linear_part(&L->w_down, T->q8, T->qs, S->acc, S->x, 1, kern, tid, nt);
        BARRIER;
    }
    rms_row(S->x, M->final_norm, d, M->eps, T->h);
    RANGE(v0, v1, M->vocab);
    if (M->head_kind == 2) {
        if (v1 > v0)
            eng_dot_i8_rows((const int8_t *)M->head + v0 * d, d, v1 - v0, T->h, d,
                            M->head_scale + v0, logits + v0);
        return;
    }
    for (int64_t v = v0; v < v1; v++) {
        if (M->head_kind == 0)
            logits[v] = eng_dot_f32((const float *)M->head + v * d, T->h, d);
        else if (M->head_kind == 1)
            logits[v] = eng_dot_f16((const uint16_t *)M->head + v * d, T->h, d);
        else
            logits[v] = eng_dot_i8((const int8_t *)M->head + v * d, T->h, d) * M->head_scale[v];
    }
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

/* The team size.  The step is lockstep: every phase waits for every thread, so a thread the
 * kernel has descheduled (more runnable threads than cores: a build, a browser, another model
 * beside us) stalls the others for its time slice, many times a token, and where each phase is
 * only a few microseconds of work (a 10M model) the barriers cost more than the second thread
 * gives.  With one CPU-bound process beside a two-thread decode on 2 cores (Zen 3 VM) two
 * threads ran at 0.1-0.5x one thread (10M: 200-264 against 2,800 tok/s; 100M: 114-216 against
 * 450).  So the session times its steps and runs the team size that is faster now: it keeps a
 * mean step time for the team and for one thread, and tries the other size for PROBE_STEPS
 * steps (the first one untimed: a worker waking from the OpenMP runtime's sleep); a try whose
 * step takes PROBE_LOSS times the mean of the size in use loses at once.  After a won try the
 * next one comes PROBE_START_NS later; after a lost one the gap doubles up to PROBE_MAX_NS and
 * is at least 16 times what the try cost, so tries take at most about 1/16 of the time.  A team
 * step whose barrier waited for a descheduled thread (barrier_wait's SHORT_NS test) tries one
 * thread at once.  The step's numbers do not depend on the size (each row and each head is
 * computed by the same code either way).  Not silent: eng_session_tokens() counts the steps
 * each way (Session.thread_steps, Completion.one_thread_steps, infer's timing line);
 * eng_session_fixed_team() turns the chooser off (POPPINS_TEAM=fixed). */
static int pick_solo(eng_session *S, int64_t t0)
{
    if (S->probe_left == 0 && t0 >= S->probe_at) {
        S->probe_left = PROBE_STEPS;
        S->probe_sum = S->probe_cost = 0;
    }
    return S->probe_left > 0 ? !S->solo : S->solo;
}

static void timed(eng_session *S, int solo, int64_t ns, int late)
{
    if (S->probe_left > 0 && solo != S->solo) {
        const int64_t cur = S->mean_ns[S->solo];
        const int timed_step = S->probe_left < PROBE_STEPS;   /* not the first */
        S->probe_cost += ns;
        if (timed_step) S->probe_sum += ns;
        const int lost = timed_step && ns > PROBE_LOSS * cur;   /* far slower: stop now */
        if (--S->probe_left == 0 || lost) {
            const int64_t mean = S->probe_sum / (PROBE_STEPS - 1);
            if (!lost && mean < cur) {
                S->solo = solo;                 /* the other size is faster now */
                S->probe_gap = PROBE_START_NS;
                S->mean_ns[solo] = mean;
            } else {                            /* try less often, at most 1/16 of the time */
                int64_t gap = 2 * S->probe_gap < PROBE_MAX_NS ? 2 * S->probe_gap : PROBE_MAX_NS;
                S->probe_gap = gap > 16 * S->probe_cost ? gap : 16 * S->probe_cost;
            }
            S->probe_left = 0;
            S->probe_at = now_ns() + S->probe_gap;
        }
        return;
    }
    S->mean_ns[solo] = S->mean_ns[solo] ? S->mean_ns[solo] + (ns - S->mean_ns[solo]) / 8 : ns;
    if (S->probe_at == INT64_MAX) S->probe_at = now_ns() + S->probe_gap;
    if (late && !solo) S->probe_at = 0;   /* a thread was descheduled: try one thread now */
}

int eng_decode_step(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                    float *logits, int threads)
{
    if (!g_tern || !M || !S || !attn_unit(M) || pos < 0 || pos >= S->ctx || pos >= M->rope_rows || token < 0 ||
        token >= M->vocab)
        return -1;
    int nt = poppins_threads(threads);
    if (tls_reserve(M, S, nt)) return -1;
    if (nt <= 1) {
        step_body(M, S, token, pos, logits, 0, 1);
        S->tokens_solo++;
        return 0;
    }
    const int64_t t0 = now_ns();
    const int solo = S->fixed ? 0 : pick_solo(S, t0);
    if (solo) {
        step_body(M, S, token, pos, logits, 0, 1);
        S->tokens_solo++;
    } else {
        atomic_store_explicit(&S->bar.late, 0, memory_order_relaxed);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        step_body(M, S, token, pos, logits, omp_get_thread_num(), omp_get_num_threads());
#endif
        S->tokens_team++;
    }
    timed(S, solo, now_ns() - t0, atomic_load_explicit(&S->bar.late, memory_order_relaxed) > 0);
    return 0;
}

void eng_session_fixed_team(eng_session *S, int fixed) { S->fixed = fixed != 0; }

void eng_session_choice(const eng_session *S, int64_t c[ENG_CHOICE_N])
{
    c[0] = S->solo;
    c[1] = S->mean_ns[0];
    c[2] = S->mean_ns[1];
    c[3] = S->probe_at;
    c[4] = S->probe_gap;
}

void eng_session_set_choice(eng_session *S, const int64_t c[ENG_CHOICE_N])
{
    if (S->probe_left || c[1] < 0 || c[2] < 0 || c[4] < PROBE_START_NS)
        return;   /* in a try, or not a choice of ours */
    S->solo = c[0] != 0;
    S->mean_ns[0] = c[1];
    S->mean_ns[1] = c[2];
    S->probe_at = c[3];
    S->probe_gap = c[4];
}

void eng_session_tokens(const eng_session *S, int64_t *team, int64_t *solo)
{
    *team = S->tokens_team;
    *solo = S->tokens_solo;
}
