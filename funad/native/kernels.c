/* CPU kernels for the nearest-neighbour search of funad.methods.irmb (see funad/native/__init__.py).

   1. merge_rows / merge_cols: merge a block of approximate keys d [rows x cols] (row-major, leading
      dimension ld) into running "k smallest so far" sets, one set per block row (merge_rows) or per
      block column (merge_cols). A set holds k (value, index) slots, +inf = empty. A key enters only
      when it is strictly smaller than the set's largest value, replacing that slot (the first one
      if several are equal), so after any sequence of merges every key left out is >= the largest
      kept value: the kept keys are a k-smallest set of everything seen (the property the exact
      re-rank's certificate needs). One streaming pass over the block per direction: keys are
      compared a chunk at a time as order-preserving integers (vectorised min / compare), and only
      chunks holding a key below a set's threshold are looked at one by one.
   2. pair_sqdist: out[p] = sum_j (q[qi[p], j] - s[si[p], j])^2 in fp32 from the bf16 or fp32 rows,
      with 16 partial sums in a fixed order (deterministic, no temporaries).

   Plain C99, no Python or torch headers: it compiles in a fraction of a second. The Python side
   owns threading (ctypes releases the GIL) and passes disjoint line ranges to each thread. */
#include <stdint.h>
#include <math.h>
#include <string.h>

#define CHUNK 64
#define LANES 16

static inline float bf16_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* order-preserving integer keys: a < b (floats, no NaN) <=> key(a) < key(b) (-0 sorts below +0) */
static inline int16_t key_bf16(uint16_t b) {
    int16_t i = (int16_t)b;
    return (int16_t)(i ^ ((i >> 15) & 0x7fff));
}

static inline int32_t key_f32(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i ^ ((i >> 31) & 0x7fffffff);
}

/* the bf16 key of the smallest bf16 value >= t (a conservative threshold for the chunk filter) */
static inline int16_t key_bf16_up(float t) {
    uint32_t u;
    memcpy(&u, &t, sizeof u);
    uint16_t hi = (uint16_t)(u >> 16);
    if ((u & 0xffffu) && !(u >> 31) && hi < 0x7f80u) hi += 1; /* positive, not exact: round up */
    return key_bf16(hi);
}

static inline int max_slot(const float *v, int k) {
    int m = 0;
    for (int j = 1; j < k; j++)
        if (v[j] > v[m]) m = j;
    return m;
}

/* k-th smallest of keys[0..n) (n >= k), by insertion into a sorted k-array (n and k are small) */
#define KTH_SMALLEST(KT, KMAX)                                                    \
    static inline KT kth_##KT(const KT *keys, int64_t n, int k, KT *best) {       \
        for (int j = 0; j < k; j++) best[j] = KMAX;                                 \
        for (int64_t i = 0; i < n; i++) {                                           \
            KT x = keys[i];                                                         \
            if (x >= best[k - 1]) continue;                                         \
            int j = k - 1;                                                          \
            while (j > 0 && best[j - 1] > x) {                                      \
                best[j] = best[j - 1];                                              \
                j--;                                                                \
            }                                                                       \
            best[j] = x;                                                            \
        }                                                                           \
        return best[k - 1];                                                         \
    }
KTH_SMALLEST(int16_t, INT16_MAX)
KTH_SMALLEST(int32_t, INT32_MAX)

#define MAXK 64    /* k larger than this: no pre-threshold (the sets still come out right) */
#define RCHUNK 32  /* row lines: keys per chunk of the pre-threshold and of the scalar scan */
#define RGROUP 64  /* column lines: rows per group of the pre-threshold */

/* Row lines: line r's set at vals[r * k]; a key at column c enters with index col_offset + c.
   Per line: (1) the minimum of every RCHUNK keys (vectorised); (2) a pre-threshold t = the k-th
   smallest chunk minimum (k distinct keys are <= t, so the line's k smallest are all <= t);
   (3) scan only chunks whose minimum is <= t and below the set's largest value; within them keys
   <= t only. Every key left out is >= the largest kept value, as with a scan of every key.
   Column lines: the same with the pre-threshold per column over groups of RGROUP rows, then one
   pass over the rows comparing each chunk of CHUNK columns with the columns' thresholds.
   scratch: funad_merge_rows_scratch(ncols) / funad_merge_cols_scratch(nrows, c1 - c0) keys of
   the key type, per call (the Python side asks for these sizes, so they live only here). */
int64_t funad_merge_rows_scratch(int64_t ncols) { return (ncols + RCHUNK - 1) / RCHUNK + MAXK; }
int64_t funad_merge_cols_scratch(int64_t nrows, int64_t ncols) {
    return ((nrows + RGROUP - 1) / RGROUP + 2) * ncols + MAXK;
}

#define DEFINE_MERGE(SUF, T, KT, KMAX, KEY, KEYUP, TOF)                                              \
    void funad_merge_rows_##SUF(const T *d, int64_t ld, int64_t r0, int64_t r1, int64_t ncols,      \
                                float *vals, int64_t *idx, int k, int64_t col_offset, KT *scratch) { \
        int64_t nch = (ncols + RCHUNK - 1) / RCHUNK;                                                 \
        KT *cmin = scratch, *best = scratch + nch;                                                   \
        for (int64_t r = r0; r < r1; r++) {                                                          \
            const T *x = d + r * ld;                                                                 \
            float *v = vals + r * k;                                                                 \
            int64_t *ix = idx + r * k;                                                               \
            int slot = max_slot(v, k);                                                               \
            float tau = v[slot];                                                                     \
            KT tk = KEYUP(tau);                                                                      \
            for (int64_t c = 0; c < nch; c++) {                                                      \
                int64_t b = c * RCHUNK, len = ncols - b < RCHUNK ? ncols - b : RCHUNK;               \
                KT m = KMAX;                                                                         \
                for (int64_t j = 0; j < len; j++) {                                                  \
                    KT kj = KEY(x[b + j]);                                                           \
                    m = kj < m ? kj : m;                                                             \
                }                                                                                    \
                cmin[c] = m;                                                                         \
            }                                                                                        \
            KT t = (nch >= k && k <= MAXK) ? kth_##KT(cmin, nch, k, best) : KMAX;                    \
            for (int64_t c = 0; c < nch; c++) {                                                      \
                if (cmin[c] > t || cmin[c] >= tk) continue;                                          \
                int64_t b = c * RCHUNK, len = ncols - b < RCHUNK ? ncols - b : RCHUNK;               \
                for (int64_t j = 0; j < len; j++) {                                                  \
                    T raw = x[b + j];                                                                \
                    float f = TOF(raw);                                                              \
                    if (f < tau && KEY(raw) <= t) {                                                  \
                        v[slot] = f;                                                                 \
                        ix[slot] = col_offset + b + j;                                               \
                        slot = max_slot(v, k);                                                       \
                        tau = v[slot];                                                               \
                    }                                                                                \
                }                                                                                    \
                tk = KEYUP(tau);                                                                     \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
                                                                                                     \
    void funad_merge_cols_##SUF(const T *d, int64_t ld, int64_t nrows, int64_t c0, int64_t c1,      \
                                float *vals, int64_t *idx, int k, int64_t row_offset, KT *scratch) { \
        int64_t ncols = c1 - c0, ng = (nrows + RGROUP - 1) / RGROUP;                                 \
        KT *gmin = scratch, *lim = scratch + ng * ncols, *thk = lim + ncols, *best = thk + ncols;    \
        /* the pre-threshold costs a pass over the block: worth it only while some set is not full */ \
        int pre = 0;                                                                                 \
        for (int64_t c = 0; c < ncols && !pre; c++)                                                  \
            pre = !(vals[(c0 + c) * k + max_slot(vals + (c0 + c) * k, k)] < INFINITY);               \
        pre = pre && ng >= k && k <= MAXK && ng <= 1024;                                             \
        for (int64_t g = 0; pre && g < ng; g++) {                                                    \
            KT *gm = gmin + g * ncols;                                                               \
            for (int64_t c = 0; c < ncols; c++) gm[c] = KMAX;                                        \
            int64_t e = (g + 1) * RGROUP < nrows ? (g + 1) * RGROUP : nrows;                         \
            for (int64_t r = g * RGROUP; r < e; r++) {                                               \
                const T *x = d + r * ld + c0;                                                        \
                for (int64_t c = 0; c < ncols; c++) {                                                \
                    KT kc = KEY(x[c]);                                                               \
                    gm[c] = kc < gm[c] ? kc : gm[c];                                                 \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        KT col[1024];                                                                                \
        for (int64_t c = 0; c < ncols; c++) {                                                        \
            float *v = vals + (c0 + c) * k;                                                          \
            KT t = KMAX;                                                                             \
            if (pre) {                                                                               \
                for (int64_t g = 0; g < ng; g++) col[g] = gmin[g * ncols + c];                       \
                t = kth_##KT(col, ng, k, best);                                                      \
            }                                                                                        \
            lim[c] = t;                                                                              \
            KT up = KEYUP(v[max_slot(v, k)]);                                                        \
            /* a key enters only if key <= t and key < up: key < min(up, t + 1) */                   \
            thk[c] = (t < KMAX && t + 1 < up) ? (KT)(t + 1) : up;                                    \
        }                                                                                            \
        for (int64_t r = 0; r < nrows; r++) {                                                        \
            const T *x = d + r * ld + c0;                                                            \
            for (int64_t b = 0; b < ncols; b += CHUNK) {                                             \
                int64_t len = ncols - b < CHUNK ? ncols - b : CHUNK;                                 \
                int any = 0;                                                                         \
                for (int64_t j = 0; j < len; j++) any |= KEY(x[b + j]) < thk[b + j];                 \
                if (!any) continue;                                                                  \
                for (int64_t j = 0; j < len; j++) {                                                  \
                    int64_t c = b + j;                                                               \
                    if (!(KEY(x[c]) < thk[c])) continue;                                             \
                    float f = TOF(x[c]);                                                             \
                    float *v = vals + (c0 + c) * k;                                                  \
                    int slot = max_slot(v, k);                                                       \
                    if (!(f < v[slot])) continue;                                                    \
                    v[slot] = f;                                                                     \
                    idx[(c0 + c) * k + slot] = row_offset + r;                                       \
                    KT up = KEYUP(v[max_slot(v, k)]);                                                \
                    KT t = lim[c];                                                                   \
                    thk[c] = (t < KMAX && t + 1 < up) ? (KT)(t + 1) : up;                            \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }

static inline float f32_id(float f) { return f; }
DEFINE_MERGE(bf16, uint16_t, int16_t, INT16_MAX, key_bf16, key_bf16_up, bf16_f32)
DEFINE_MERGE(f32, float, int32_t, INT32_MAX, key_f32, key_f32, f32_id)

/* ---- exact squared distances of (query row, source row) pairs ---- */
static inline float lanes_sum(const float *acc) {
    float s8[8], s4[4];
    for (int j = 0; j < 8; j++) s8[j] = acc[j] + acc[j + 8];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

#define DEFINE_SQDIST(SUF, T, TOF)                                                                   \
    void funad_pair_sqdist_##SUF(const T *q, int64_t ldq, const T *s, int64_t lds, int64_t dim,         \
                                 const int64_t *qi, const int64_t *si, int64_t p0, int64_t p1,          \
                                 float *out) {                                                          \
        for (int64_t p = p0; p < p1; p++) {                                                             \
            const T *a = q + qi[p] * ldq;                                                               \
            const T *b = s + si[p] * lds;                                                               \
            float acc[LANES] = {0};                                                                     \
            int64_t j = 0;                                                                              \
            for (; j + LANES <= dim; j += LANES)                                                        \
                for (int l = 0; l < LANES; l++) {                                                       \
                    float t = TOF(a[j + l]) - TOF(b[j + l]);                                            \
                    acc[l] += t * t;                                                                    \
                }                                                                                       \
            for (int l = 0; j + l < dim; l++) {                                                         \
                float t = TOF(a[j + l]) - TOF(b[j + l]);                                                \
                acc[l] += t * t;                                                                        \
            }                                                                                           \
            out[p] = lanes_sum(acc);                                                                    \
        }                                                                                               \
    }

DEFINE_SQDIST(bf16, uint16_t, bf16_f32)
DEFINE_SQDIST(f32, float, f32_id)
