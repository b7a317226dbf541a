/* Sampling the next token in C (the same rules, order and generator as
 * poppins/engine/sampling.py, which is the reference):
 * repeat penalty, top-k (ties: smaller id first), top-p, min-p, temperature, then a draw
 * u = uniform * sum(weights) with the first cumulative weight > u.  temperature <= 0: argmax
 * after the repeat penalty.  Generator: splitmix64, uniform = (next >> 11) * 2^-53. */
#ifndef POPPINS_ENGINE_SAMPLE_H
#define POPPINS_ENGINE_SAMPLE_H

#include <stdint.h>

typedef struct {
    double temperature, top_p, min_p, repeat_penalty;
    int64_t top_k, repeat_last_n;
} eng_sampling;

uint64_t eng_splitmix64(uint64_t *state);
double eng_uniform(uint64_t *state);

/* logits[V] (float32); recent[n_recent] the context so far (for the repeat penalty);
 * work: 2*V doubles + V int32 + V bytes of scratch (eng_sample_work_bytes(V)).
 * Returns the token, or -1 when V <= 0. */
int64_t eng_sample_work_bytes(int64_t V);
int32_t eng_sample(const eng_sampling *p, uint64_t *state, const float *logits, int64_t V,
                   const int32_t *recent, int64_t n_recent, void *work);

#endif
