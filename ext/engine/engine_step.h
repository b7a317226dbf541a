/* The compiled decode step: one token through every layer, the KV cache and the output head,
 * with no Python in between (the GIL is released by the caller).
 *
 * Same numbers as the Python path of poppins/engine/runtime.py (Session.forward with one
 * token): per-token absmax int8 activations (s = 127 / max|y| in float32, round half to even),
 * exact int32 ternary sums times w_scale / s, RMSNorm with the mean of squares in float64,
 * half-split RoPE, softmax attention over the cache (MLA: latent cache, absorbed up-projection).
 *
 * Threads: with threads > 1 a step runs either on one thread or as ONE OpenMP parallel region
 * (its own barriers: spin for an adaptive budget, then sleep); every ternary product is split
 * into contiguous row ranges (multiples of 16 rows, one per thread, each thread dequantizing
 * its own rows), attention over heads (or whole kv groups) and the head over vocab rows.  The
 * session picks, step by step, whichever of the two is faster at the time (an oversubscribed
 * machine or a tiny model makes the team the slower) and counts the steps each way
 * (eng_session_tokens); eng_session_fixed_team pins the team.  Same numbers either way.
 */
#ifndef POPPINS_ENGINE_STEP_H
#define POPPINS_ENGINE_STEP_H

#include <stdint.h>

typedef struct {
    const uint8_t *w;     /* b256 kernel layout */
    int64_t stride, m, k;
    float scale;
} eng_tern;

typedef struct {
    const float *attn_norm, *ffn_norm, *q_norm, *kv_norm;
    eng_tern wqkv, wq, wq_a, wq_b, wkv_a, wo, w_up, w_down;
    const float *wkv_b;   /* MLA: ternary values as float32 [2*H*hd, kvl] */
    float wkv_b_scale;
} eng_layer;

/* The attention types of the decode step (one unit each in engine_step.c; attn_unit() is the
 * one switch over them). */
typedef enum { ENG_ATTN_MHA = 0, ENG_ATTN_MLA = 1 } eng_attention;

typedef struct {
    int attention;            /* eng_attention */
    int64_t dim, layers, heads, kv_heads, head_dim, hidden, kvl, rope, qlat, vocab;
    double eps;
    const float *cos, *sin;   /* [model context, rot/2] */
    int64_t rot_half, rope_rows;
    const void *emb;          /* [vocab, dim]: kind 0 f32, 1 f16, 2 int8 (times emb_scale) */
    int emb_kind;
    const float *emb_scale;
    const void *head;
    int head_kind;
    const float *head_scale;
    const float *final_norm;
    const eng_layer *L;
    int kernel;               /* ternary kernel path id (-1: best) */
} eng_model;

typedef struct eng_session eng_session;

/* caches: per layer two float32 arrays of ctx rows (MHA: keys, values [ctx, Hk*hd];
 * MLA: latents [ctx, kvl], rotary keys [ctx, r]); they stay owned by the caller. */
eng_session *eng_session_new(const eng_model *M, float **cache_a, float **cache_b, int64_t ctx);
void eng_session_free(eng_session *S);

/* The ternary kernels' C API (a const tern_c_api *, from the capsule poppins._ternary._C_API):
 * set once at import, before eng_step_init().  Returns 0, or -1 for a wrong table version. */
int eng_set_ternary(const void *api);

/* Detect CPU features once (call before threads use the step). */
void eng_step_init(void);

/* The ternary paths through the table: available, name, and the decode matvec (x zero-padded
 * to whole blocks; kernel < 0: best).  -1 / NULL before eng_set_ternary(). */
int eng_tern_available(int kernel);
const char *eng_tern_kernel_name(int kernel);
int eng_tern_matvec(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k, const int8_t *x,
                    int32_t *y, int kernel);

/* Feed `token` at position `pos` (< ctx): fills the caches at pos, writes logits[vocab].
 * Returns 0, or -1 on bad arguments. */
int eng_decode_step(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                    float *logits, int threads);

/* The session's decode steps so far: run by a team of threads, run by one thread (threads was
 * 1, or one thread was the faster at the time: an oversubscribed machine, a model too small to
 * split; see eng_decode_step in engine_step.c). */
void eng_session_tokens(const eng_session *S, int64_t *team, int64_t *solo);

/* fixed != 0: every step with threads > 1 runs on the team (tests of the team path, and
 * benchmarks of it); 0 (a new session): the session picks the faster size as it goes. */
void eng_session_fixed_team(eng_session *S, int fixed);

/* The chooser's state (the size in use, each size's mean step time, the next try and its gap):
 * a new session can start from the choice a finished one arrived at instead of learning the
 * machine again (the Python API keeps the last one per engine).  A state that is not one of
 * ours is ignored. */
#define ENG_CHOICE_N 5
void eng_session_choice(const eng_session *S, int64_t c[ENG_CHOICE_N]);
void eng_session_set_choice(eng_session *S, const int64_t c[ENG_CHOICE_N]);

#endif
