/* poppins byte-level BPE core; see bpe_core.h. */
#include "bpe_core.h"

#include <stdlib.h>
#include <string.h>

#include "bpe_unicode_tables.h"
#include "poppins_common.h"

/* ======================================================================================
 * UTF-8 decoding and character classes
 * ==================================================================================== */

#define CP_INVALID 0xFFFFFFFFu
enum { C_OTHER = 0, C_LETTER = 1, C_NUMBER = 2, C_SPACE = 3 };

int bpe_uclass(uint32_t cp) {
    if (cp >= 0x110000u) return C_OTHER;
    unsigned blk = bpe_uclass_stage1[cp >> 8];
    unsigned byte = bpe_uclass_stage2[blk * 64 + ((cp & 255) >> 2)];
    return (byte >> ((cp & 3) * 2)) & 3;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). An ill-formed byte is one
 * character of its own, CP_INVALID (class "other"), exactly as Python's surrogateescape. */
static inline size_t dec(const uint8_t *s, size_t n, size_t i, uint32_t *cp) {
    uint8_t b0 = s[i];
    if (b0 < 0x80) { *cp = b0; return 1; }
    size_t left = n - i;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        if (left >= 2 && (s[i + 1] & 0xC0) == 0x80) {
            *cp = ((uint32_t)(b0 & 0x1F) << 6) | (s[i + 1] & 0x3F);
            return 2;
        }
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        if (left >= 3 && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
            uint8_t b1 = s[i + 1];
            int ok = (b0 == 0xE0) ? b1 >= 0xA0 : (b0 == 0xED) ? b1 < 0xA0 : 1;
            if (ok) {
                *cp = ((uint32_t)(b0 & 0x0F) << 12) | ((uint32_t)(b1 & 0x3F) << 6) |
                      (s[i + 2] & 0x3F);
                return 3;
            }
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        if (left >= 4 && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
            (s[i + 3] & 0xC0) == 0x80) {
            uint8_t b1 = s[i + 1];
            int ok = (b0 == 0xF0) ? b1 >= 0x90 : (b0 == 0xF4) ? b1 < 0x90 : 1;
            if (ok) {
                *cp = ((uint32_t)(b0 & 0x07) << 18) | ((uint32_t)(b1 & 0x3F) << 12) |
                      ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
                return 4;
            }
        }
    }
    *cp = CP_INVALID;
    return 1;
}

static inline int cls(uint32_t cp) {
    if (cp < 128) return bpe_ascii_class[cp];
    return bpe_uclass(cp);
}

/* Lower-case contraction letter that cp folds to under (?i:...), or 0. */
static inline int fold(uint32_t cp) {
    if (cp >= 'A' && cp <= 'Z') cp += 32;
    switch (cp) {
    case 's': case 't': case 'r': case 'e': case 'v': case 'm': case 'l': case 'd':
        return (int)cp;
    BPE_FOLD_EXTRA_CASES
    default:
        return 0;
    }
}

/* The piece of the GPT-4 pattern
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * that starts at i (i < n); returns its end. Alternatives are tried in order. */
size_t bpe_pretok_next(const uint8_t *s, size_t n, size_t i) {
    uint32_t c0, c1, c2;
    size_t l0 = dec(s, n, i, &c0), j, l;
    int k0 = cls(c0);
    /* 1: contractions */
    if (c0 == '\'' && i + 1 < n) {
        size_t l1 = dec(s, n, i + 1, &c1);
        int f = fold(c1);
        if (f == 's' || f == 't' || f == 'm' || f == 'd') return i + 1 + l1;
        if ((f == 'r' || f == 'v' || f == 'l') && i + 1 + l1 < n) {
            size_t l2 = dec(s, n, i + 1 + l1, &c2);
            int g = fold(c2);
            if (((f == 'r' || f == 'v') && g == 'e') || (f == 'l' && g == 'l'))
                return i + 1 + l1 + l2;
        }
    }
    /* 2: [^\r\n\p{L}\p{N}]?\p{L}+ */
    j = n;
    if (k0 == C_LETTER) {
        j = i + l0;
    } else if (k0 != C_NUMBER && c0 != '\r' && c0 != '\n' && i + l0 < n) {
        dec(s, n, i + l0, &c1);
        if (cls(c1) == C_LETTER) j = i + l0;
    }
    if (j != n || k0 == C_LETTER) {
        while (j < n) {
            l = dec(s, n, j, &c1);
            if (cls(c1) != C_LETTER) break;
            j += l;
        }
        return j;
    }
    /* 3: \p{N}{1,3} */
    if (k0 == C_NUMBER) {
        j = i + l0;
        for (int k = 1; k < 3 && j < n; k++) {
            l = dec(s, n, j, &c1);
            if (cls(c1) != C_NUMBER) break;
            j += l;
        }
        return j;
    }
    /* 4: ' '?[^\s\p{L}\p{N}]+[\r\n]* */
    j = n;
    if (k0 == C_OTHER) {
        j = i + l0;
    } else if (c0 == ' ' && i + 1 < n) {
        dec(s, n, i + 1, &c1);
        if (cls(c1) == C_OTHER) j = i + 1;
    }
    if (j != n || k0 == C_OTHER) {
        while (j < n) {
            l = dec(s, n, j, &c1);
            if (cls(c1) != C_OTHER) break;
            j += l;
        }
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    /* c0 is whitespace. 5: \s*[\r\n]+ ends right after the run's last CR/LF */
    size_t last_nl = n, last_start = i, m = 0;
    j = i;
    while (j < n) {
        l = dec(s, n, j, &c1);
        if (cls(c1) != C_SPACE) break;
        if (c1 == '\r' || c1 == '\n') last_nl = j;
        last_start = j;
        m++;
        j += l;
    }
    if (last_nl != n) return last_nl + 1;
    /* 6: \s+(?!\S) ; 7: \s+ */
    if (j == n) return n;
    if (m >= 2) return last_start;
    return j;
}

/* ======================================================================================
 * Hashing
 * ==================================================================================== */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

uint64_t bpe_hash(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x9FB21C651E98DF25ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++) v |= (uint64_t)p[k] << (8 * k);
    h = (h ^ v) * 0x9FB21C651E98DF25ULL;
    return mix64(h);
}

/* ======================================================================================
 * Added tokens
 * ==================================================================================== */


static inline int32_t trie_child(const bpe_added *a, int32_t node, uint8_t byte) {
    uint64_t key = ((uint64_t)node << 8) | byte;
    size_t q = mix64(key) & (a->ecap - 1);
    while (a->ekey[q] != UINT64_MAX) {
        if (a->ekey[q] == key) return a->echild[q];
        q = (q + 1) & (a->ecap - 1);
    }
    return -1;
}

int bpe_added_init(bpe_added *a, int n, const uint8_t *const *tok, const uint32_t *len,
                   const uint32_t *id, const uint8_t *special) {
    memset(a, 0, sizeof(*a));
    size_t total = 0;
    for (int k = 0; k < n; k++) total += len[k];
    a->n = n;
    a->ecap = 16;
    while (a->ecap < 2 * (total + 1)) a->ecap <<= 1;
    a->len = malloc(sizeof(uint32_t) * (n + 1));
    a->id = malloc(sizeof(uint32_t) * (n + 1));
    a->special = malloc(n + 1);
    a->ekey = malloc(sizeof(uint64_t) * a->ecap);
    a->echild = malloc(sizeof(int32_t) * a->ecap);
    a->term = malloc(sizeof(int32_t) * (total + 1));
    if (!a->len || !a->id || !a->special || !a->ekey || !a->echild || !a->term) {
        bpe_added_free(a);
        return -1;
    }
    for (size_t q = 0; q < a->ecap; q++) a->ekey[q] = UINT64_MAX;
    a->nnodes = 1;
    a->term[0] = -1;
    for (int k = 0; k < n; k++) {
        a->len[k] = len[k];
        a->id[k] = id[k];
        a->special[k] = special[k];
        if (len[k] == 0) continue;
        a->root_has[tok[k][0]] = 1;
        int32_t node = 0;
        for (uint32_t j = 0; j < len[k]; j++) {
            int32_t c = trie_child(a, node, tok[k][j]);
            if (c < 0) {
                uint64_t key = ((uint64_t)node << 8) | tok[k][j];
                size_t q = mix64(key) & (a->ecap - 1);
                while (a->ekey[q] != UINT64_MAX) q = (q + 1) & (a->ecap - 1);
                c = a->nnodes++;
                a->term[c] = -1;
                a->ekey[q] = key;
                a->echild[q] = c;
            }
            node = c;
        }
        if (a->term[node] < 0) a->term[node] = k; /* a duplicate content keeps the first */
    }
    return 0;
}

void bpe_added_free(bpe_added *a) {
    free(a->len);
    free(a->id);
    free(a->special);
    free(a->ekey);
    free(a->echild);
    free(a->term);
    memset(a, 0, sizeof(*a));
}

/* Leftmost-longest: the first position where some token matches, the longest one there. */
int bpe_added_next(const bpe_added *a, const uint8_t *s, size_t n, size_t pos, int use_special,
                   size_t *ms, size_t *me, uint32_t *mid) {
    if (!a || a->n == 0) return 0;
    size_t p = pos;
    while (p < n) {
        if (!a->root_has[s[p]]) {
            p++;
            continue;
        }
        int32_t node = 0, hit = -1;
        size_t hit_end = p;
        for (size_t k = p; k < n; k++) {
            node = trie_child(a, node, s[k]);
            if (node < 0) break;
            if (a->term[node] >= 0) {
                hit = a->term[node];
                hit_end = k + 1;
            }
        }
        if (hit < 0) {
            p++;
            continue;
        }
        if (a->special[hit] && !use_special) { /* stays text; the scan resumes after it */
            p = hit_end;
            continue;
        }
        *ms = p;
        *me = hit_end;
        *mid = a->id[hit];
        return 1;
    }
    return 0;
}

/* ======================================================================================
 * Word map (bytes -> count)
 * ==================================================================================== */

int bpe_wmap_init(bpe_wmap *m, size_t cap) {
    memset(m, 0, sizeof(*m));
    size_t c = 1024;
    while (c < cap * 2) c <<= 1;
    m->cap = c;
    m->hash = malloc(sizeof(uint64_t) * c);
    m->koff = malloc(sizeof(uint64_t) * c);
    m->klen = malloc(sizeof(uint32_t) * c);
    m->cnt = calloc(c, sizeof(int64_t));
    m->acap = 1 << 16;
    m->arena = malloc(m->acap);
    if (!m->hash || !m->koff || !m->klen || !m->cnt || !m->arena) {
        bpe_wmap_free(m);
        return -1;
    }
    return 0;
}

void bpe_wmap_free(bpe_wmap *m) {
    free(m->hash);
    free(m->koff);
    free(m->klen);
    free(m->cnt);
    free(m->arena);
    memset(m, 0, sizeof(*m));
}

static int wmap_grow(bpe_wmap *m) {
    size_t nc = m->cap * 2;
    uint64_t *h = malloc(sizeof(uint64_t) * nc);
    uint64_t *ko = malloc(sizeof(uint64_t) * nc);
    uint32_t *kl = malloc(sizeof(uint32_t) * nc);
    int64_t *ct = calloc(nc, sizeof(int64_t));
    if (!h || !ko || !kl || !ct) {
        free(h); free(ko); free(kl); free(ct);
        return -1;
    }
    for (size_t s = 0; s < m->cap; s++) {
        if (m->cnt[s] == 0) continue;
        size_t q = m->hash[s] & (nc - 1);
        while (ct[q] != 0) q = (q + 1) & (nc - 1);
        h[q] = m->hash[s];
        ko[q] = m->koff[s];
        kl[q] = m->klen[s];
        ct[q] = m->cnt[s];
    }
    free(m->hash); free(m->koff); free(m->klen); free(m->cnt);
    m->hash = h; m->koff = ko; m->klen = kl; m->cnt = ct; m->cap = nc;
    return 0;
}

/* counts are > 0, so cnt == 0 marks an empty slot */
int bpe_wmap_add(bpe_wmap *m, const uint8_t *k, uint32_t len, uint64_t h, int64_t c) {
    size_t q = h & (m->cap - 1);
    while (m->cnt[q] != 0) {
        if (m->hash[q] == h && m->klen[q] == len && memcmp(m->arena + m->koff[q], k, len) == 0) {
            m->cnt[q] += c;
            return 0;
        }
        q = (q + 1) & (m->cap - 1);
    }
    if (m->alen + len > m->acap) {
        size_t na = m->acap * 2;
        while (na < m->alen + len) na *= 2;
        uint8_t *ar = realloc(m->arena, na);
        if (!ar) return -1;
        m->arena = ar;
        m->acap = na;
    }
    memcpy(m->arena + m->alen, k, len);
    m->hash[q] = h;
    m->koff[q] = m->alen;
    m->klen[q] = len;
    m->cnt[q] = c;
    m->alen += len;
    m->n++;
    if (m->n * 2 > m->cap) return wmap_grow(m);
    return 0;
}

static int count_one(bpe_wmap *m, const bpe_added *a, const uint8_t *s, size_t n) {
    size_t pos = 0, ms, me;
    uint32_t id;
    while (pos < n) {
        int found = bpe_added_next(a, s, n, pos, 0, &ms, &me, &id);
        size_t end = found ? ms : n;
        const uint8_t *seg = s + pos;
        size_t sn = end - pos, i = 0;
        while (i < sn) {
            size_t e = bpe_pretok_next(seg, sn, i);
            if (bpe_wmap_add(m, seg + i, (uint32_t)(e - i), bpe_hash(seg + i, e - i), 1)) return -1;
            i = e;
        }
        pos = found ? me : n;
    }
    return 0;
}

int bpe_count_texts(bpe_wmap *m, const bpe_added *a, const uint8_t *const *texts,
                    const size_t *lens, size_t ntexts, int threads) {
    int nt = poppins_threads(threads);
    if (nt <= 1 || ntexts < 2) {
        for (size_t t = 0; t < ntexts; t++)
            if (count_one(m, a, texts[t], lens[t])) return -1;
        return 0;
    }
    int err = 0;
#ifdef _OPENMP
    if ((size_t)nt > ntexts) nt = (int)ntexts;
    bpe_wmap *loc = calloc(nt, sizeof(bpe_wmap));
    if (!loc) return -1;
    #pragma omp parallel num_threads(nt) reduction(| : err)
    {
        int me = omp_get_thread_num();
        if (bpe_wmap_init(&loc[me], 1024)) {
            err |= 1;
        } else {
            #pragma omp for schedule(dynamic, 1)
            for (long t = 0; t < (long)ntexts; t++)
                if (!err && count_one(&loc[me], a, texts[t], lens[t])) err |= 1;
        }
    }
    for (int k = 0; k < nt; k++) {
        bpe_wmap *l = &loc[k];
        for (size_t q = 0; !err && q < l->cap; q++)
            if (l->cnt && l->cnt[q] != 0)
                if (bpe_wmap_add(m, l->arena + l->koff[q], l->klen[q], l->hash[q], l->cnt[q]))
                    err = 1;
        bpe_wmap_free(l);
    }
    free(loc);
#endif
    return err ? -1 : 0;
}

/* ======================================================================================
 * Training
 * ==================================================================================== */

typedef struct {
    int32_t *w;
    int32_t n, cap;
} ivec;

static inline int ivec_push(ivec *v, int32_t x) {
    if (v->n == v->cap) {
        int32_t nc = v->cap ? v->cap * 2 : 4;
        int32_t *nw = realloc(v->w, sizeof(int32_t) * nc);
        if (!nw) return -1;
        v->w = nw;
        v->cap = nc;
    }
    v->w[v->n++] = x;
    return 0;
}

typedef struct {
    /* hash index over pairs */
    uint64_t *hkey;
    int32_t *hidx; /* -1 empty */
    size_t hcap;
    /* pair records */
    uint64_t *key;
    int64_t *count;
    ivec *words;
    int32_t *last_word;
    int32_t *touched; /* stamp */
    uint8_t *blocked;
    size_t n, cap;
} pairtab;

typedef struct {
    int64_t count;
    uint32_t a, b;
} hentry;

/* better(x, y): higher count, then smaller left id, then smaller right id */
static inline int better(const hentry *x, const hentry *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

typedef struct {
    hentry *e;
    size_t n, cap;
} heap;

static int heap_push(heap *h, hentry x) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 1024;
        hentry *ne = realloc(h->e, sizeof(hentry) * nc);
        if (!ne) return -1;
        h->e = ne;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!better(&x, &h->e[p])) break;
        h->e[i] = h->e[p];
        i = p;
    }
    h->e[i] = x;
    return 0;
}

static hentry heap_pop(heap *h) {
    hentry top = h->e[0], x = h->e[--h->n];
    size_t i = 0, n = h->n;
    while (1) {
        size_t l = 2 * i + 1, r = l + 1, b = i;
        const hentry *best = &x;
        if (l < n && better(&h->e[l], best)) { b = l; best = &h->e[l]; }
        if (r < n && better(&h->e[r], best)) { b = r; best = &h->e[r]; }
        if (b == i) break;
        h->e[i] = h->e[b];
        i = b;
    }
    if (n > 0) h->e[i] = x;
    return top;
}

static int pt_init(pairtab *t) {
    memset(t, 0, sizeof(*t));
    t->hcap = 1 << 16;
    t->hkey = malloc(sizeof(uint64_t) * t->hcap);
    t->hidx = malloc(sizeof(int32_t) * t->hcap);
    if (!t->hkey || !t->hidx) return -1;
    for (size_t i = 0; i < t->hcap; i++) t->hidx[i] = -1;
    return 0;
}

static void pt_free(pairtab *t) {
    free(t->hkey);
    free(t->hidx);
    if (t->words)
        for (size_t i = 0; i < t->n; i++) free(t->words[i].w);
    free(t->key); free(t->count); free(t->words); free(t->last_word); free(t->touched);
    free(t->blocked);
}

static inline size_t pt_slot(uint64_t key, size_t cap) { return mix64(key) & (cap - 1); }

static int pt_rehash(pairtab *t) {
    size_t nc = t->hcap * 2;
    uint64_t *hk = malloc(sizeof(uint64_t) * nc);
    int32_t *hi = malloc(sizeof(int32_t) * nc);
    if (!hk || !hi) { free(hk); free(hi); return -1; }
    for (size_t i = 0; i < nc; i++) hi[i] = -1;
    for (size_t i = 0; i < t->hcap; i++) {
        if (t->hidx[i] < 0) continue;
        size_t q = pt_slot(t->hkey[i], nc);
        while (hi[q] >= 0) q = (q + 1) & (nc - 1);
        hk[q] = t->hkey[i];
        hi[q] = t->hidx[i];
    }
    free(t->hkey); free(t->hidx);
    t->hkey = hk; t->hidx = hi; t->hcap = nc;
    return 0;
}

/* index of pair key, creating it when create; -1 when absent (or out of memory: -2) */
static int32_t pt_find(pairtab *t, uint64_t key, int create) {
    size_t q = pt_slot(key, t->hcap);
    while (t->hidx[q] >= 0) {
        if (t->hkey[q] == key) return t->hidx[q];
        q = (q + 1) & (t->hcap - 1);
    }
    if (!create) return -1;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 4096;
        uint64_t *k = realloc(t->key, sizeof(uint64_t) * nc);
        if (k) t->key = k;
        int64_t *c = realloc(t->count, sizeof(int64_t) * nc);
        if (c) t->count = c;
        ivec *w = realloc(t->words, sizeof(ivec) * nc);
        if (w) t->words = w;
        int32_t *lw = realloc(t->last_word, sizeof(int32_t) * nc);
        if (lw) t->last_word = lw;
        int32_t *tc = realloc(t->touched, sizeof(int32_t) * nc);
        if (tc) t->touched = tc;
        uint8_t *bl = realloc(t->blocked, nc);
        if (bl) t->blocked = bl;
        if (!k || !c || !w || !lw || !tc || !bl) return -2;
        t->cap = nc;
    }
    int32_t idx = (int32_t)t->n++;
    t->key[idx] = key;
    t->count[idx] = 0;
    t->words[idx].w = NULL;
    t->words[idx].n = t->words[idx].cap = 0;
    t->last_word[idx] = -1;
    t->touched[idx] = -1;
    t->blocked[idx] = 0;
    t->hkey[q] = key;
    t->hidx[q] = idx;
    if (t->n * 2 > t->hcap && pt_rehash(t)) return -2;
    return idx;
}

typedef struct {
    pairtab pt;
    heap hp;
    ivec touched_list;
    int32_t stamp;
    int err;
} trainer;

static inline void pair_add(trainer *T, uint32_t a, uint32_t b, int64_t delta, int32_t w) {
    int32_t p = pt_find(&T->pt, ((uint64_t)a << 32) | b, delta > 0);
    if (p < 0) {
        if (p == -2) T->err = 1;
        return; /* decrement of an unknown pair cannot happen with exact bookkeeping */
    }
    T->pt.count[p] += delta;
    if (delta > 0) {
        if (T->pt.last_word[p] != w) {
            if (ivec_push(&T->pt.words[p], w)) T->err = 1;
            T->pt.last_word[p] = w;
        }
        if (T->pt.touched[p] != T->stamp) {
            T->pt.touched[p] = T->stamp;
            if (ivec_push(&T->touched_list, p)) T->err = 1;
        }
    }
}

long bpe_train(const uint8_t *wbytes, const uint64_t *woff, const uint32_t *wlen,
               const int64_t *cnt, size_t nwords, uint32_t byte_base, long max_merges,
               int64_t min_frequency, const uint8_t *const *forbidden,
               const uint32_t *forbidden_len, int nforbidden, int32_t *merges_out) {
    long nm = 0;
    size_t total = 0;
    for (size_t w = 0; w < nwords; w++) total += wlen[w];
    int32_t *sym = malloc(sizeof(int32_t) * (total + 1));
    uint64_t *soff = malloc(sizeof(uint64_t) * (nwords + 1));
    uint32_t *slen = malloc(sizeof(uint32_t) * (nwords + 1));
    int32_t *visit = malloc(sizeof(int32_t) * (nwords + 1));
    /* token bytes (only needed for the forbidden check) */
    size_t ntok = 256 + (max_merges > 0 ? (size_t)max_merges : 0);
    uint64_t *toff = malloc(sizeof(uint64_t) * ntok);
    uint32_t *tlen = malloc(sizeof(uint32_t) * ntok);
    uint8_t *tarena = NULL;
    size_t talen = 0, tacap = 0;
    trainer T;
    memset(&T, 0, sizeof(T));
    int ok = sym && soff && slen && visit && toff && tlen && pt_init(&T.pt) == 0;
    if (!ok) goto fail;
    if (nforbidden > 0) {
        tacap = 4096;
        tarena = malloc(tacap);
        if (!tarena) goto fail;
        for (int b = 0; b < 256; b++) {
            tarena[b] = (uint8_t)b;
            toff[b] = b;
            tlen[b] = 1;
        }
        talen = 256;
    }
    size_t o = 0;
    for (size_t w = 0; w < nwords; w++) {
        soff[w] = o;
        slen[w] = wlen[w];
        visit[w] = -1;
        for (uint32_t k = 0; k < wlen[w]; k++) sym[o + k] = (int32_t)(byte_base + wbytes[woff[w] + k]);
        o += wlen[w];
    }
    T.stamp = 0;
    for (size_t w = 0; w < nwords; w++) {
        int32_t *s = sym + soff[w];
        for (uint32_t k = 0; k + 1 < slen[w]; k++) pair_add(&T, s[k], s[k + 1], cnt[w], (int32_t)w);
        if (T.err) goto fail;
    }
    for (size_t p = 0; p < T.pt.n; p++) {
        hentry e = {T.pt.count[p], (uint32_t)(T.pt.key[p] >> 32), (uint32_t)T.pt.key[p]};
        if (e.count > 0 && heap_push(&T.hp, e)) goto fail;
    }
    while (nm < max_merges && T.hp.n > 0) {
        hentry e = heap_pop(&T.hp);
        uint64_t key = ((uint64_t)e.a << 32) | e.b;
        int32_t p = pt_find(&T.pt, key, 0);
        int64_t actual = T.pt.count[p];
        if (actual != e.count) {
            if (actual < e.count && actual > 0) {
                hentry f = {actual, e.a, e.b};
                if (heap_push(&T.hp, f)) goto fail;
            }
            continue;
        }
        if (actual <= 0 || actual < min_frequency) break;
        if (T.pt.blocked[p]) continue;
        uint32_t K = byte_base + 256 + (uint32_t)nm;
        if (nforbidden > 0) {
            uint32_t ia = e.a - byte_base, ib = e.b - byte_base;
            uint32_t L = tlen[ia] + tlen[ib];
            if (talen + L > tacap) {
                while (talen + L > tacap) tacap *= 2;
                uint8_t *na = realloc(tarena, tacap);
                if (!na) goto fail;
                tarena = na;
            }
            memcpy(tarena + talen, tarena + toff[ia], tlen[ia]);
            memcpy(tarena + talen + tlen[ia], tarena + toff[ib], tlen[ib]);
            int hit = 0;
            for (int f = 0; f < nforbidden && !hit; f++)
                hit = forbidden_len[f] == L && memcmp(forbidden[f], tarena + talen, L) == 0;
            if (hit) {
                T.pt.blocked[p] = 1;
                continue;
            }
            toff[256 + nm] = talen;
            tlen[256 + nm] = L;
            talen += L;
        }
        merges_out[2 * nm] = (int32_t)e.a;
        merges_out[2 * nm + 1] = (int32_t)e.b;
        nm++;
        T.stamp++;
        T.touched_list.n = 0;
        /* the pair's own word list does not grow during its merge (new pairs contain K) */
        int32_t *wl = T.pt.words[p].w;
        int32_t nwl = T.pt.words[p].n;
        int32_t a = (int32_t)e.a, b = (int32_t)e.b;
        for (int32_t q = 0; q < nwl; q++) {
            int32_t w = wl[q];
            if (visit[w] == T.stamp) continue;
            visit[w] = T.stamp;
            int32_t *s = sym + soff[w];
            uint32_t n = slen[w], i = 0, out = 0;
            int64_t c = cnt[w];
            while (i < n) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                    if (out > 0) {
                        pair_add(&T, s[out - 1], a, -c, w);
                        pair_add(&T, s[out - 1], K, c, w);
                    }
                    if (i + 2 < n) {
                        pair_add(&T, b, s[i + 2], -c, w);
                        pair_add(&T, K, s[i + 2], c, w);
                    }
                    T.pt.count[p] -= c;
                    s[out++] = (int32_t)K;
                    i += 2;
                } else {
                    s[out++] = s[i++];
                }
            }
            slen[w] = out;
            if (T.err) goto fail;
        }
        for (int32_t k = 0; k < T.touched_list.n; k++) {
            int32_t tp = T.touched_list.w[k];
            if (T.pt.count[tp] > 0) {
                hentry f = {T.pt.count[tp], (uint32_t)(T.pt.key[tp] >> 32), (uint32_t)T.pt.key[tp]};
                if (heap_push(&T.hp, f)) goto fail;
            }
        }
    }
    goto done;
fail:
    nm = -1;
done:
    free(sym); free(soff); free(slen); free(visit); free(toff); free(tlen); free(tarena);
    pt_free(&T.pt);
    free(T.hp.e);
    free(T.touched_list.w);
    return nm;
}

/* ======================================================================================
 * Encoding
 * ==================================================================================== */

#define PKEY_EMPTY UINT64_MAX

int bpe_enc_init(bpe_encoder *e, const uint32_t *byte_id, const uint32_t *merges,
                 size_t nmerges, const bpe_added *added) {
    memset(e, 0, sizeof(*e));
    size_t cap = 64;
    while (cap < nmerges * 2 + 2) cap <<= 1;
    e->pcap = cap;
    e->pkey = malloc(sizeof(uint64_t) * cap);
    e->prank = malloc(sizeof(uint32_t) * cap);
    e->pnew = malloc(sizeof(uint32_t) * cap);
    if (!e->pkey || !e->prank || !e->pnew) {
        bpe_enc_free(e);
        return -1;
    }
    for (size_t i = 0; i < cap; i++) e->pkey[i] = PKEY_EMPTY;
    for (size_t r = 0; r < nmerges; r++) {
        uint64_t key = ((uint64_t)merges[3 * r] << 32) | merges[3 * r + 1];
        size_t q = pt_slot(key, cap);
        while (e->pkey[q] != PKEY_EMPTY && e->pkey[q] != key) q = (q + 1) & (cap - 1);
        if (e->pkey[q] == key) continue; /* a duplicate pair keeps its first (lowest) rank */
        e->pkey[q] = key;
        e->prank[q] = (uint32_t)r;
        e->pnew[q] = merges[3 * r + 2];
    }
    memcpy(e->byte_id, byte_id, sizeof(e->byte_id));
    e->added = added;
    return 0;
}

void bpe_enc_free(bpe_encoder *e) {
    free(e->pkey);
    free(e->prank);
    free(e->pnew);
    memset(e, 0, sizeof(*e));
}

static inline uint32_t enc_rank(const bpe_encoder *e, uint32_t a, uint32_t b, uint32_t *nid) {
    uint64_t key = ((uint64_t)a << 32) | b;
    size_t q = pt_slot(key, e->pcap);
    while (1) {
        uint64_t k = e->pkey[q];
        if (k == key) {
            *nid = e->pnew[q];
            return e->prank[q];
        }
        if (k == PKEY_EMPTY) return UINT32_MAX;
        q = (q + 1) & (e->pcap - 1);
    }
}

static int ids_reserve(bpe_ids *v, size_t extra) {
    if (v->n + extra <= v->cap) return 0;
    size_t nc = v->cap ? v->cap * 2 : 64;
    while (nc < v->n + extra) nc *= 2;
    uint32_t *d = realloc(v->data, sizeof(uint32_t) * nc);
    if (!d) return -1;
    v->data = d;
    v->cap = nc;
    return 0;
}

/* BPE of one word (n >= 2 byte ids in ids[]); the result replaces ids[0..*n). Merges go by
 * rank, the leftmost occurrence first. Short words: linear scans; long words: a heap. */
static int bpe_word(const bpe_encoder *e, uint32_t *ids, size_t *np) {
    size_t n = *np;
    if (n <= 96) {
        uint32_t rank[96], nid[96];
        for (size_t i = 0; i + 1 < n; i++) rank[i] = enc_rank(e, ids[i], ids[i + 1], &nid[i]);
        while (n > 1) {
            uint32_t best = UINT32_MAX;
            size_t bi = 0;
            for (size_t i = 0; i + 1 < n; i++)
                if (rank[i] < best) { best = rank[i]; bi = i; }
            if (best == UINT32_MAX) break;
            ids[bi] = nid[bi];
            /* remove element bi+1 */
            memmove(ids + bi + 1, ids + bi + 2, sizeof(uint32_t) * (n - bi - 2));
            memmove(rank + bi + 1, rank + bi + 2, sizeof(uint32_t) * (n > bi + 2 ? n - bi - 2 : 0));
            memmove(nid + bi + 1, nid + bi + 2, sizeof(uint32_t) * (n > bi + 2 ? n - bi - 2 : 0));
            n--;
            if (bi > 0) rank[bi - 1] = enc_rank(e, ids[bi - 1], ids[bi], &nid[bi - 1]);
            if (bi + 1 < n) rank[bi] = enc_rank(e, ids[bi], ids[bi + 1], &nid[bi]);
        }
        *np = n;
        return 0;
    }
    /* heap of (rank, pos) over a linked list */
    int32_t *nxt = malloc(sizeof(int32_t) * n), *prv = malloc(sizeof(int32_t) * n);
    uint64_t *hp = malloc(sizeof(uint64_t) * 3 * n);
    if (!nxt || !prv || !hp) { free(nxt); free(prv); free(hp); return -1; }
    size_t hn = 0;
#define HPUSH(v) do { uint64_t x_ = (v); size_t i_ = hn++; \
        while (i_ > 0 && hp[(i_ - 1) / 2] > x_) { hp[i_] = hp[(i_ - 1) / 2]; i_ = (i_ - 1) / 2; } \
        hp[i_] = x_; } while (0)
    for (size_t i = 0; i < n; i++) {
        nxt[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prv[i] = (int32_t)i - 1;
    }
    uint32_t tmp;
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r = enc_rank(e, ids[i], ids[i + 1], &tmp);
        if (r != UINT32_MAX) HPUSH(((uint64_t)r << 32) | i);
    }
    while (hn > 0) {
        uint64_t top = hp[0], x = hp[--hn];
        size_t i = 0;
        while (1) {
            size_t l = 2 * i + 1, r = l + 1, b = i;
            uint64_t bv = x;
            if (l < hn && hp[l] < bv) { b = l; bv = hp[l]; }
            if (r < hn && hp[r] < bv) { b = r; }
            if (b == i) break;
            hp[i] = hp[b];
            i = b;
        }
        if (hn > 0) hp[i] = x;
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(uint32_t)top;
        if (ids[pos] == UINT32_MAX || nxt[pos] < 0) continue; /* dead or last */
        int32_t q = nxt[pos];
        uint32_t nid = 0;
        if (enc_rank(e, ids[pos], ids[q], &nid) != rank) continue; /* stale */
        ids[pos] = nid;
        ids[q] = UINT32_MAX;
        nxt[pos] = nxt[q];
        if (nxt[q] >= 0) prv[nxt[q]] = pos;
        if (prv[pos] >= 0) {
            uint32_t r = enc_rank(e, ids[prv[pos]], ids[pos], &tmp);
            if (r != UINT32_MAX) HPUSH(((uint64_t)r << 32) | (uint32_t)prv[pos]);
        }
        if (nxt[pos] >= 0) {
            uint32_t r = enc_rank(e, ids[pos], ids[nxt[pos]], &tmp);
            if (r != UINT32_MAX) HPUSH(((uint64_t)r << 32) | (uint32_t)pos);
        }
    }
#undef HPUSH
    size_t m = 0;
    for (int32_t i = 0; i >= 0; i = nxt[i]) ids[m++] = ids[i];
    *np = m;
    free(nxt); free(prv); free(hp);
    return 0;
}

/* per-call cache: word bytes -> ids */
typedef struct {
    uint64_t *hash;
    uint64_t *koff; /* into karena */
    uint32_t *klen;  /* 0 = empty */
    uint64_t *voff;  /* into varena */
    uint32_t *vlen;
    size_t cap, n;
    uint8_t *karena;
    size_t kn, kcap;
    uint32_t *varena;
    size_t vn, vcap;
} wcache;

#define CACHE_MAX_ENTRIES (1u << 20)

static void cache_free(wcache *c) {
    free(c->hash); free(c->koff); free(c->klen); free(c->voff); free(c->vlen);
    free(c->karena); free(c->varena);
    memset(c, 0, sizeof(*c));
}

static int cache_init(wcache *c, size_t cap) {
    memset(c, 0, sizeof(*c));
    c->cap = cap;
    c->hash = malloc(sizeof(uint64_t) * cap);
    c->koff = malloc(sizeof(uint64_t) * cap);
    c->klen = calloc(cap, sizeof(uint32_t));
    c->voff = malloc(sizeof(uint64_t) * cap);
    c->vlen = malloc(sizeof(uint32_t) * cap);
    c->kcap = 4096;
    c->karena = malloc(c->kcap);
    c->vcap = 1024;
    c->varena = malloc(sizeof(uint32_t) * c->vcap);
    if (!c->hash || !c->koff || !c->klen || !c->voff || !c->vlen || !c->karena || !c->varena) {
        cache_free(c);
        return -1;
    }
    return 0;
}

static int cache_grow(wcache *c) {
    wcache d = *c;
    size_t nc = c->cap * 2;
    d.hash = malloc(sizeof(uint64_t) * nc);
    d.koff = malloc(sizeof(uint64_t) * nc);
    d.klen = calloc(nc, sizeof(uint32_t));
    d.voff = malloc(sizeof(uint64_t) * nc);
    d.vlen = malloc(sizeof(uint32_t) * nc);
    if (!d.hash || !d.koff || !d.klen || !d.voff || !d.vlen) {
        free(d.hash); free(d.koff); free(d.klen); free(d.voff); free(d.vlen);
        return -1;
    }
    d.cap = nc;
    for (size_t i = 0; i < c->cap; i++) {
        if (!c->klen[i]) continue;
        size_t q = c->hash[i] & (nc - 1);
        while (d.klen[q]) q = (q + 1) & (nc - 1);
        d.hash[q] = c->hash[i]; d.koff[q] = c->koff[i]; d.klen[q] = c->klen[i];
        d.voff[q] = c->voff[i]; d.vlen[q] = c->vlen[i];
    }
    free(c->hash); free(c->koff); free(c->klen); free(c->voff); free(c->vlen);
    *c = d;
    return 0;
}

static int encode_word(const bpe_encoder *e, const uint8_t *w, size_t len, bpe_ids *out,
                       wcache *c) {
    if (ids_reserve(out, len)) return -1;
    if (len == 1) {
        out->data[out->n++] = e->byte_id[w[0]];
        return 0;
    }
    uint64_t h = bpe_hash(w, len);
    size_t q = 0;
    if (c->cap) {
        q = h & (c->cap - 1);
        while (c->klen[q]) {
            if (c->hash[q] == h && c->klen[q] == len && memcmp(c->karena + c->koff[q], w, len) == 0) {
                memcpy(out->data + out->n, c->varena + c->voff[q], sizeof(uint32_t) * c->vlen[q]);
                out->n += c->vlen[q];
                return 0;
            }
            q = (q + 1) & (c->cap - 1);
        }
    }
    uint32_t *ids = out->data + out->n;
    for (size_t k = 0; k < len; k++) ids[k] = e->byte_id[w[k]];
    size_t m = len;
    if (bpe_word(e, ids, &m)) return -1;
    out->n += m;
    if (!c->cap || c->n >= CACHE_MAX_ENTRIES) return 0;
    /* insert */
    if (c->kn + len > c->kcap) {
        size_t nk = c->kcap * 2;
        while (nk < c->kn + len) nk *= 2;
        uint8_t *ka = realloc(c->karena, nk);
        if (!ka) return 0;
        c->karena = ka;
        c->kcap = nk;
    }
    if (c->vn + m > c->vcap) {
        size_t nv = c->vcap * 2;
        while (nv < c->vn + m) nv *= 2;
        uint32_t *va = realloc(c->varena, sizeof(uint32_t) * nv);
        if (!va) return 0;
        c->varena = va;
        c->vcap = nv;
    }
    memcpy(c->karena + c->kn, w, len);
    memcpy(c->varena + c->vn, ids, sizeof(uint32_t) * m);
    c->hash[q] = h;
    c->koff[q] = c->kn;
    c->klen[q] = (uint32_t)len;
    c->voff[q] = c->vn;
    c->vlen[q] = (uint32_t)m;
    c->kn += len;
    c->vn += m;
    c->n++;
    if (c->n * 2 > c->cap) cache_grow(c); /* on failure the cache just stays fuller */
    return 0;
}

static int enc_text_cached(const bpe_encoder *e, const uint8_t *s, size_t n, int use_special,
                           bpe_ids *out, wcache *c) {
    size_t pos = 0, ms, me;
    uint32_t id;
    while (pos < n) {
        int found = bpe_added_next(e->added, s, n, pos, use_special, &ms, &me, &id);
        size_t end = found ? ms : n;
        const uint8_t *seg = s + pos;
        size_t sn = end - pos, i = 0;
        while (i < sn) {
            size_t j = bpe_pretok_next(seg, sn, i);
            if (encode_word(e, seg + i, j - i, out, c)) return -1;
            i = j;
        }
        if (found) {
            if (ids_reserve(out, 1)) return -1;
            out->data[out->n++] = id;
            pos = me;
        } else {
            pos = n;
        }
    }
    return 0;
}

int bpe_enc_text(const bpe_encoder *e, const uint8_t *s, size_t n, int use_special, bpe_ids *out) {
    wcache c;
    memset(&c, 0, sizeof(c)); /* short texts: no cache (cap 0) */
    if (n >= 1024 && cache_init(&c, n > 16384 ? 4096 : 512)) memset(&c, 0, sizeof(c));
    int r = enc_text_cached(e, s, n, use_special, out, &c);
    cache_free(&c);
    return r;
}

int bpe_enc_batch(const bpe_encoder *e, const uint8_t *const *texts, const size_t *lens,
                  size_t ntexts, int use_special, int threads, bpe_ids *outs) {
    int nt = poppins_threads(threads);
    int err = 0;
    if ((size_t)nt > ntexts) nt = ntexts > 0 ? (int)ntexts : 1;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nt) reduction(| : err)
#endif
    {
        wcache c;
        if (cache_init(&c, 4096)) memset(&c, 0, sizeof(c));
        /* encode into a thread-local buffer, then copy out: neighbouring outs[] entries
         * belong to other threads, and writing them while encoding would share cache lines */
        bpe_ids loc = {NULL, 0, 0};
#ifdef _OPENMP
        #pragma omp for schedule(dynamic, 8)
#endif
        for (long t = 0; t < (long)ntexts; t++) {
            loc.n = 0;
            if (enc_text_cached(e, texts[t], lens[t], use_special, &loc, &c)) {
                err |= 1;
                continue;
            }
            uint32_t *d = malloc(sizeof(uint32_t) * (loc.n ? loc.n : 1));
            if (!d) {
                err |= 1;
                continue;
            }
            if (loc.n) memcpy(d, loc.data, sizeof(uint32_t) * loc.n);
            outs[t].data = d;
            outs[t].n = outs[t].cap = loc.n;
        }
        free(loc.data);
        cache_free(&c);
    }
    return err ? -1 : 0;
}
