/* The C sampler (see engine_sample.h; reference: poppins/engine/sampling.py). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_sample.h"

uint64_t eng_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double eng_uniform(uint64_t *state)
{
    return (double)(eng_splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

int64_t eng_sample_work_bytes(int64_t V)
{
    return V * (int64_t)(2 * sizeof(double) + sizeof(int32_t) + 1) + 64;
}

/* a ranks before b: larger logit, then smaller id */
static inline int before(const double *lg, int32_t a, int32_t b)
{
    return lg[a] > lg[b] || (lg[a] == lg[b] && a < b);
}

/* insertion sort by rank (k is small: top-k) */
static void sort_rank(const double *lg, int32_t *idx, int64_t n)
{
    for (int64_t i = 1; i < n; i++) {
        int32_t v = idx[i];
        int64_t j = i - 1;
        while (j >= 0 && before(lg, v, idx[j])) { idx[j + 1] = idx[j]; j--; }
        idx[j + 1] = v;
    }
}

/* stable bottom-up merge sort of idx[0..n) by rank, tmp: n int32 of scratch */
static void merge_sort_rank(const double *lg, int32_t *idx, int32_t *tmp, int64_t n)
{
    int32_t *a = idx, *b = tmp;
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) b[o++] = before(lg, a[j], a[i]) ? a[j++] : a[i++];
            while (i < mid) b[o++] = a[i++];
            while (j < hi) b[o++] = a[j++];
        }
        int32_t *t = a; a = b; b = t;
    }
    if (a != idx) memcpy(idx, a, (size_t)n * sizeof(int32_t));
}

int32_t eng_sample(const eng_sampling *p, uint64_t *state, const float *logits, int64_t V,
                   const int32_t *recent, int64_t n_recent, void *work)
{
    if (V <= 0) return -1;
    double *lg = (double *)work;
    double *c = lg + V;
    int32_t *idx = (int32_t *)(c + V);
    unsigned char *seen = (unsigned char *)(idx + V);
    for (int64_t v = 0; v < V; v++) lg[v] = (double)logits[v];
    if (p->repeat_penalty != 1.0 && p->repeat_last_n != 0 && n_recent > 0) {
        int64_t start = 0;
        if (p->repeat_last_n > 0 && n_recent > p->repeat_last_n) start = n_recent - p->repeat_last_n;
        memset(seen, 0, (size_t)V);
        for (int64_t i = start; i < n_recent; i++) {
            const int32_t t = recent[i];
            if (t < 0 || t >= V || seen[t]) continue;
            seen[t] = 1;
            lg[t] = lg[t] <= 0 ? lg[t] * p->repeat_penalty : lg[t] / p->repeat_penalty;
        }
    }
    if (p->temperature <= 0) {
        int32_t best = 0;
        for (int32_t v = 1; v < V; v++)
            if (lg[v] > lg[best]) best = v;
        return best;
    }
    /* top-k: the k best by (logit desc, id asc), sorted */
    int64_t k = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
    int64_t n;
    if (k < V) {
        /* the k best, kept sorted (k is small; most ids are rejected by one comparison) */
        for (int64_t i = 0; i < k; i++) idx[i] = (int32_t)i;
        sort_rank(lg, idx, k);
        for (int64_t v = k; v < V; v++) {
            if (!before(lg, (int32_t)v, idx[k - 1])) continue;
            int64_t j = k - 1;
            while (j > 0 && before(lg, (int32_t)v, idx[j - 1])) { idx[j] = idx[j - 1]; j--; }
            idx[j] = (int32_t)v;
        }
        n = k;
    } else {
        for (int64_t i = 0; i < V; i++) idx[i] = (int32_t)i;
        merge_sort_rank(lg, idx, (int32_t *)c, V);
        n = V;
    }
    const double top = lg[idx[0]];
    if (p->top_p < 1.0 && n > 1) {
        double s = 0;
        for (int64_t i = 0; i < n; i++) { s += exp(lg[idx[i]] - top); c[i] = s; }
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++)
            if (c[i] / s >= p->top_p) { keep = i + 1; break; }
        n = keep;
    }
    if (p->min_p > 0.0 && n > 1) {
        const double thresh = top + log(p->min_p);
        int64_t cnt = 0;
        for (int64_t i = 0; i < n; i++)
            if (lg[idx[i]] >= thresh) cnt++;
        n = cnt > 0 ? cnt : 1;
    }
    if (n == 1) return idx[0];
    const double z0 = lg[idx[0]] / p->temperature;
    double s = 0;
    for (int64_t i = 0; i < n; i++) { s += exp(lg[idx[i]] / p->temperature - z0); c[i] = s; }
    const double u = eng_uniform(state) * s;
    int64_t j = 0;
    while (j < n - 1 && !(c[j] > u)) j++;
    return idx[j];
}
