# The nogil C API of the engine dot products (ext/engine/engine.h).
from libc.stdint cimport int8_t, uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef extern from "engine.h" nogil:
    int ENG_NKERNELS
    int eng_init()
    int eng_kernel()
    int eng_kernel_available(int kernel)
    int eng_set_kernel(int kernel)
    const char *eng_kernel_name(int kernel)
    long eng_kernel_needs(int kernel)
    float eng_dot_f32(const float *a, const float *b, int64_t n)
    float eng_dot_i8(const int8_t *a, const float *b, int64_t n)
    float eng_dot_f16(const uint16_t *a, const float *b, int64_t n)
    void eng_relu2_row(const float *u, int64_t d, float *out)
    void eng_dot_i8_rows(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                         int64_t n, const float *scale, float *out)
    float eng_half_to_float(uint16_t h)
    void eng_axpy_f32(float a, const float *x, float *y, int64_t n)
    void eng_attend_f32(const float *q, const float *k, int64_t k_stride, const float *v,
                        int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale,
                        float *sc, float *o)

cdef extern from "poppins_common.h" nogil:
    int poppins_build_openmp()

cdef extern from "engine_step.h" nogil:
    int ENG_ATTN_MHA
    int ENG_ATTN_MLA
    ctypedef struct eng_tern:
        const uint8_t *w
        int64_t stride, m, k
        float scale
    ctypedef struct eng_layer:
        const float *attn_norm
        const float *ffn_norm
        const float *q_norm
        const float *kv_norm
        eng_tern wqkv, wq, wq_a, wq_b, wkv_a, wo, w_up, w_down
        const float *wkv_b
        float wkv_b_scale
    ctypedef struct eng_model:
        int attention
        int64_t dim, layers, heads, kv_heads, head_dim, hidden, kvl, rope, qlat, vocab
        double eps
        const float *cos
        const float *sin
        int64_t rot_half, rope_rows
        const void *emb
        int emb_kind
        const float *emb_scale
        const void *head
        int head_kind
        const float *head_scale
        const float *final_norm
        const eng_layer *L
        int kernel
    ctypedef struct eng_session:
        pass
    int eng_set_ternary(const void *api)
    void eng_step_init()
    int eng_tern_available(int kernel)
    const char *eng_tern_kernel_name(int kernel)
    int eng_tern_matvec(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                        const int8_t *x, int32_t *y, int kernel)
    eng_session *eng_session_new(const eng_model *M, float **cache_a, float **cache_b, int64_t ctx)
    void eng_session_free(eng_session *S)
    int eng_decode_step(const eng_model *M, eng_session *S, int32_t token, int64_t pos,
                        float *logits, int threads)
    void eng_session_tokens(const eng_session *S, int64_t *team, int64_t *solo)
    void eng_session_fixed_team(eng_session *S, int fixed)
    enum: ENG_CHOICE_N
    void eng_session_choice(const eng_session *S, int64_t *c)
    void eng_session_set_choice(eng_session *S, const int64_t *c)

cdef extern from "engine_sample.h" nogil:
    ctypedef struct eng_sampling:
        double temperature, top_p, min_p, repeat_penalty
        int64_t top_k, repeat_last_n
    uint64_t eng_splitmix64(uint64_t *state)
    double eng_uniform(uint64_t *state)
    int64_t eng_sample_work_bytes(int64_t V)
    int32_t eng_sample(const eng_sampling *p, uint64_t *state, const float *logits, int64_t V,
                       const int32_t *recent, int64_t n_recent, void *work)
