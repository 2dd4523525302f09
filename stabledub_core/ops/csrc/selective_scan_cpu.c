/*
 * Selective scan (Mamba v1's S6 recurrence) for CPUs: a plain C99 kernel, loaded with ctypes by
 * stabledub_core/ops/selective_scan_cpu.py, which also documents the maths and the layouts.
 *
 * Work is cut into tiles of LANES neighbouring channels of one batch element, held in GCC/Clang vector types (`vf`,
 * 8 floats: one AVX register, two NEON ones). A tile's state (N vectors) stays in L1 while the tile walks along the
 * sequence, so each position costs N vector exponentials and a few vector multiply-adds; nothing of size (B, D, L, N)
 * is ever written.
 *
 * Layouts (all fp32):
 *   per-channel tensors u, delta (before bias and softplus), z, out and their gradients: element (b, l, d) at
 *       p[b * stride_b + l * stride_l + d]  (channels innermost, as Mamba's transposed projections are);
 *   B, C: (batch, groups, length, N) contiguous;  A2 = A * log2(e) and A itself: (N, dim) contiguous;
 *   chunk states: (batch, n_chunks - 1, N, dim), the state at the start of every chunk of `chunk` positions but the
 *       first, written by the forward pass when asked and read by the backward pass; the final state: (batch, N, dim).
 * With `reverse`, the scan runs from the last position to the first (Vision Mamba's backward direction): step l of
 * the recurrence reads and writes position length - 1 - l, so nothing needs flipping.
 * The caller (Python) runs tiles of disjoint batch/channel ranges on several threads; each thread has its own
 * accumulators for the gradients that are summed over batch or channels (dA, dD, dB, dC).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define MAX_STATE 64
#define EXPORT __attribute__((visibility("default")))

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

typedef struct {
    const float *u, *delta, *z;        /* z may be NULL */
    int64_t u_sb, u_sl, dt_sb, dt_sl, z_sb, z_sl;
    const float *B, *C;                /* (batch, groups, length, N) */
    const float *A2, *A;               /* (N, dim): A * log2(e), and A */
    const float *D, *delta_bias;       /* (dim) or NULL */
    int64_t batch, dim, length, d_state, groups, chunk, delta_softplus, reverse;
} ScanInputs;

typedef struct {
    const float *grad_out;             /* (b, l, d) with the strides below */
    int64_t go_sb, go_sl;
    const float *grad_last;            /* (batch, N, dim) or NULL */
    float *grad_u, *grad_delta, *grad_z;   /* (batch, length, dim) contiguous; grad_z may be NULL */
    float *grad_A;                     /* (N, dim), this thread's accumulator */
    float *grad_D, *grad_bias;         /* (dim), this thread's accumulators */
    float *grad_B, *grad_C;            /* (batch, groups, length, N), this thread's accumulators */
    float *out;                        /* NULL, or the gated output to write again, (batch, length, dim) */
} ScanGrads;

/* A tile: batch element b, channels [d, d + width) (width <= LANES, inside one group of B/C). */
typedef struct {
    int64_t b, d, width;
} Tile;

static inline vf splat(float x) {
    return (vf){x, x, x, x, x, x, x, x};
}

static inline vf blend(vi mask, vf a, vf b) {
    return (vf)((mask & (vi)a) | (~mask & (vi)b));
}

/* Clamp to [lo, hi] and round to the nearest integer: one instruction each with AVX, else portable vector code
 * (a compare and three bit operations; rounding by adding and subtracting 1.5 * 2^23). */
#if defined(__AVX__)
#include <immintrin.h>
static inline vf clamp(vf x, float lo, float hi) {
    return (vf)_mm256_min_ps(_mm256_max_ps((__m256)x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
}

static inline vf round_nearest(vf x) {
    return (vf)_mm256_round_ps((__m256)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#else
static inline vf clamp(vf x, float lo, float hi) {
    x = blend(x < splat(lo), splat(lo), x);
    return blend(x > splat(hi), splat(hi), x);
}

static inline vf round_nearest(vf x) {
    return (x + 12582912.0f) - 12582912.0f;
}
#endif

/* `width` floats from p, the remaining lanes zero. */
static inline vf load(const float *p, int64_t width) {
    vf v = splat(0.0f);
    if (width == LANES) memcpy(&v, p, sizeof(v));
    else for (int64_t k = 0; k < width; k++) v[k] = p[k];
    return v;
}

static inline void store(float *p, vf v, int64_t width) {
    if (width == LANES) memcpy(p, &v, sizeof(v));
    else for (int64_t k = 0; k < width; k++) p[k] = v[k];
}

static inline float sum_lanes(vf v) {
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += v[k];
    return s;
}

/* 2^x, for the decays exp(delta * A) = 2^(delta * A * log2 e): a degree-6 polynomial on [-1/2, 1/2] times 2^k built
 * from bits; x is clamped to [-126, 126]. The polynomial's own relative error is 2e-9 and unbiased, so that the
 * products of thousands of decays along a sequence stay as exact as with the C library's exp (degree 5, 8e-8 with a
 * bias, let the spatial scan drift to 1.7e-6). */
static inline vf exp2v(vf x) {
    x = clamp(x, -126.0f, 126.0f);
    const vf k = round_nearest(x), f = x - k;
    vf p = splat(0.00015346792923744308f);
    p = p * f + 0.001339993963158214f;
    p = p * f + 0.009618485314755551f;
    p = p * f + 0.05550328750774607f;
    p = p * f + 0.2402264692421865f;
    p = p * f + 0.6931472057535173f;
    p = p * f + 1.0000000005496552f;
    vi scale = (__builtin_convertvector(k, vi) + 127) << 23;
    return p * (vf)scale;
}

static inline vf sigmoid(vf x) {
    return 1.0f / (1.0f + exp2v(x * -1.4426950408889634f));
}

/* log(1 + e^x) = max(x, 0) + log1p(t), t = e^-|x| in (0, 1], with log1p(t) = 2 atanh(s), s = t / (2 + t) <= 1/3:
 * the odd series to s^15 is within 2e-8 relatively, also where softplus is tiny. */
static inline vf softplus(vf x) {
    const vi negative = x < splat(0.0f);
    const vf t = exp2v(blend(negative, x, -x) * 1.4426950408889634f);
    const vf s = t / (2.0f + t), s2 = s * s;
    vf p = splat(1.0f / 15.0f);
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return blend(negative, splat(0.0f), x) + 2.0f * s * p;
}

static inline int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

/* Tiles of batch element b covering channels [d0, d1): call with t.d = d0, advance with next_tile. */
static inline Tile first_tile(const ScanInputs *in, int64_t b, int64_t d0, int64_t d1) {
    const int64_t dim_g = in->dim / in->groups;
    Tile t = {b, d0, min64(min64(LANES, d1 - d0), (d0 / dim_g + 1) * dim_g - d0)};
    return t;
}

static inline Tile next_tile(const ScanInputs *in, Tile t, int64_t d1) {
    return first_tile(in, t.b, t.d + t.width, d1);
}

/* Offset of (b, group of channel d) in B, C and their gradients. */
static inline int64_t bc_offset(const ScanInputs *in, Tile t) {
    return (t.b * in->groups + t.d / (in->dim / in->groups)) * in->length * in->d_state;
}

/* The position that step l of the recurrence reads and writes. */
static inline int64_t at(const ScanInputs *in, int64_t l) {
    return in->reverse ? in->length - 1 - l : l;
}

/* The raw step size delta + bias at step l for the tile. */
static inline vf raw_delta(const ScanInputs *in, Tile t, int64_t l) {
    vf dt = load(in->delta + t.b * in->dt_sb + at(in, l) * in->dt_sl + t.d, t.width);
    return in->delta_bias ? dt + load(in->delta_bias + t.d, t.width) : dt;
}

/* silu(z) and its derivative at step l for the tile, or 1 and 0 without z. */
static inline void gate(const ScanInputs *in, Tile t, int64_t l, vf *silu, vf *dsilu) {
    if (!in->z) {
        *silu = splat(1.0f);
        *dsilu = splat(0.0f);
        return;
    }
    vf z = load(in->z + t.b * in->z_sb + at(in, l) * in->z_sl + t.d, t.width);
    vf s = sigmoid(z);
    *silu = z * s;
    *dsilu = s * (1.0f + z * (1.0f - s));
}

/* One step of the recurrence for the N states of a tile: x = exp(dt A) x + dt u B; returns acc + sum_n C x. With
 * `keep` (a constant at each call site, so the branch compiles away), also writes the states and decays. */
static inline __attribute__((always_inline)) vf state_step(int64_t N, const vf *a2, vf dt, vf dtu, const float *Bl,
                                                           const float *Cl, vf acc, vf *x, vf *xs, vf *dA,
                                                           const int keep) {
    for (int64_t n = 0; n < N; n++) {
        const vf decay = exp2v(dt * a2[n]);
        const vf xn = decay * x[n] + dtu * Bl[n];
        x[n] = xn;
        acc += xn * Cl[n];
        if (keep) {
            xs[n] = xn;
            dA[n] = decay;
        }
    }
    return acc;
}

/* Runs the recurrence for positions [l0, l1) of a tile from state x (N vectors, updated in place) and writes the
 * pre-gate output sum_n C x + D u to y (one vector per position); with xs != NULL also every state, decay and step
 * size (xs, dA: (l1 - l0) x N vectors; dts: l1 - l0 vectors). */
static void tile_forward(const ScanInputs *in, Tile t, int64_t l0, int64_t l1, vf *x, vf *y, vf *xs, vf *dA,
                         vf *dts) {
    const int64_t N = in->d_state;
    const float *Bp = in->B + bc_offset(in, t), *Cp = in->C + bc_offset(in, t);
    vf a2[MAX_STATE];
    for (int64_t n = 0; n < N; n++) a2[n] = load(in->A2 + n * in->dim + t.d, t.width);
    const vf dskip = in->D ? load(in->D + t.d, t.width) : splat(0.0f);
    for (int64_t l = l0; l < l1; l++) {
        const vf raw = raw_delta(in, t, l), dt = in->delta_softplus ? softplus(raw) : raw;
        const vf u = load(in->u + t.b * in->u_sb + at(in, l) * in->u_sl + t.d, t.width);
        const float *Bl = Bp + at(in, l) * N, *Cl = Cp + at(in, l) * N;
        if (xs) {
            dts[l - l0] = dt;
            const int64_t i = (l - l0) * N;
            y[l - l0] = state_step(N, a2, dt, dt * u, Bl, Cl, dskip * u, x, xs + i, dA + i, 1);
        } else {
            y[l - l0] = state_step(N, a2, dt, dt * u, Bl, Cl, dskip * u, x, NULL, NULL, 0);
        }
    }
}

/* Forward pass over batch elements [b0, b1) and channels [d0, d1).
 * out: gated output, (b, l, d) at out[b * out_sb + l * out_sl + d].
 * states: NULL, or the (batch, n_chunks - 1, N, dim) chunk states, for the backward pass.
 * last: NULL, or the (batch, N, dim) final states.
 * Returns 0, or -1 when out of memory. */
EXPORT int scan_forward(const ScanInputs *in, int64_t b0, int64_t b1, int64_t d0, int64_t d1,
                        float *out, int64_t out_sb, int64_t out_sl, float *states, float *last) {
    const int64_t N = in->d_state, L = in->length, T = in->chunk;
    const int64_t n_chunks = (L + T - 1) / T;
    vf *y = (vf *)aligned_alloc(sizeof(vf), sizeof(vf) * T);
    if (!y) return -1;
    vf x[MAX_STATE];
    for (int64_t b = b0; b < b1; b++) {
        for (Tile t = first_tile(in, b, d0, d1); t.d < d1; t = next_tile(in, t, d1)) {
            for (int64_t n = 0; n < N; n++) x[n] = splat(0.0f);
            for (int64_t c = 0; c < n_chunks; c++) {
                const int64_t l0 = c * T, l1 = min64(l0 + T, L);
                tile_forward(in, t, l0, l1, x, y, NULL, NULL, NULL);
                for (int64_t l = l0; l < l1; l++) {
                    vf silu, dsilu;
                    gate(in, t, l, &silu, &dsilu);
                    store(out + b * out_sb + at(in, l) * out_sl + t.d, y[l - l0] * silu, t.width);
                }
                float *keep = c + 1 < n_chunks ? (states ? states + (b * (n_chunks - 1) + c) * N * in->dim : NULL)
                                               : (last ? last + b * N * in->dim : NULL);
                if (keep)
                    for (int64_t n = 0; n < N; n++) store(keep + n * in->dim + t.d, x[n], t.width);
            }
        }
    }
    free(y);
    return 0;
}

/* Sums the lanes of the chunk's partial gradients of B and C (positions [l0, l1)) into the thread's grad_B, grad_C
 * rows of (b, group at bc) and zeroes them. */
static void flush_bc(const ScanInputs *in, const ScanGrads *gr, int64_t bc, int64_t l0, int64_t l1, vf *gB, vf *gC) {
    const int64_t N = in->d_state;
    for (int64_t l = l0; l < l1; l++)
        for (int64_t n = 0; n < N; n++) {
            const int64_t i = (l - l0) * N + n;
            gr->grad_B[bc + at(in, l) * N + n] += sum_lanes(gB[i]);
            gr->grad_C[bc + at(in, l) * N + n] += sum_lanes(gC[i]);
            gB[i] = gC[i] = splat(0.0f);
        }
}

/* Backward pass over batch elements [b0, b1) and channels [d0, d1), chunk by chunk from the last and, within a chunk,
 * tile by tile: each tile's states and decays over the chunk are recomputed from the saved state before it, then the
 * adjoint h_t = g_y_t C_t + dA_{t+1} h_{t+1} runs back over the chunk; h is carried to the next chunk per tile. With
 * gr->out it also writes the gated output again (for a caller that skipped the forward pass with autograd). The
 * gradients of B and C (sums over channels) are gathered per lane over the tiles of a chunk and summed across lanes
 * once per chunk and group. Writes grad_u, grad_delta and grad_z of its tiles and adds to the thread's grad_A, grad_D,
 * grad_bias, grad_B and grad_C. Returns 0, or -1 when out of memory. */
EXPORT int scan_backward(const ScanInputs *in, const ScanGrads *gr, int64_t b0, int64_t b1, int64_t d0, int64_t d1,
                         const float *states) {
    const int64_t N = in->d_state, L = in->length, T = in->chunk, dim = in->dim;
    const int64_t n_chunks = (L + T - 1) / T;
    int64_t n_tiles = 0;
    for (Tile t = first_tile(in, 0, d0, d1); t.d < d1; t = next_tile(in, t, d1)) n_tiles++;
    /* per chunk: states, decays, outputs, step sizes, lane-wise gradients of B and C; per tile: carried adjoint,
     * gradients of A, D and the bias */
    const int64_t sizes[] = {T * N, T * N, T, T, T * N, T * N, n_tiles * N, n_tiles * N, n_tiles, n_tiles};
    vf *buffers[10];
    int failed = 0;
    for (int i = 0; i < 10; i++) failed |= !(buffers[i] = (vf *)aligned_alloc(sizeof(vf), sizeof(vf) * sizes[i]));
    vf *xs = buffers[0], *dA = buffers[1], *y = buffers[2], *dts = buffers[3], *gB = buffers[4], *gC = buffers[5];
    vf *h_all = buffers[6], *gA_all = buffers[7], *gD_all = buffers[8], *gbias_all = buffers[9];
    if (failed) {
        for (int i = 0; i < 10; i++) free(buffers[i]);
        return -1;
    }
    vf x0[MAX_STATE], x[MAX_STATE], a[MAX_STATE];
    for (int64_t i = 0; i < T * N; i++) gB[i] = gC[i] = splat(0.0f);
    for (int64_t b = b0; b < b1; b++) {
        int64_t j = 0;
        for (Tile t = first_tile(in, b, d0, d1); t.d < d1; t = next_tile(in, t, d1), j++) {
            gD_all[j] = gbias_all[j] = splat(0.0f);
            for (int64_t n = 0; n < N; n++) {
                gA_all[j * N + n] = splat(0.0f);
                /* h carries dA_{t+1} h_{t+1} into position t: the final state's gradient into the last position */
                h_all[j * N + n] = gr->grad_last ? load(gr->grad_last + (b * N + n) * dim + t.d, t.width)
                                                 : splat(0.0f);
            }
        }
        for (int64_t c = n_chunks - 1; c >= 0; c--) {
            const int64_t l0 = c * T, l1 = min64(l0 + T, L);
            int64_t bc = -1; /* the (b, group) rows gB / gC gather for */
            j = 0;
            for (Tile t = first_tile(in, b, d0, d1); t.d < d1; t = next_tile(in, t, d1), j++) {
                if (bc != bc_offset(in, t)) {
                    if (bc >= 0) flush_bc(in, gr, bc, l0, l1, gB, gC);
                    bc = bc_offset(in, t);
                }
                vf *h = h_all + j * N, *gA = gA_all + j * N;
                const vf dskip = in->D ? load(in->D + t.d, t.width) : splat(0.0f);
                for (int64_t n = 0; n < N; n++) {
                    a[n] = load(in->A + n * dim + t.d, t.width);
                    x[n] = x0[n] = c > 0 ? load(states + ((b * (n_chunks - 1) + c - 1) * N + n) * dim + t.d, t.width)
                                         : splat(0.0f);
                }
                tile_forward(in, t, l0, l1, x, y, xs, dA, dts);
                vf gD = gD_all[j], gbias = gbias_all[j];
                for (int64_t l = l1 - 1; l >= l0; l--) {
                    const int64_t i = (l - l0) * N;                           /* row of the chunk buffers */
                    const int64_t p = at(in, l);                              /* the position step l is at */
                    const int64_t row = (b * L + p) * dim + t.d;              /* in the (batch, length, dim) grads */
                    const vf dt = dts[l - l0];
                    const vf u = load(in->u + b * in->u_sb + p * in->u_sl + t.d, t.width);
                    const vf go = load(gr->grad_out + b * gr->go_sb + p * gr->go_sl + t.d, t.width);
                    vf silu, dsilu;
                    gate(in, t, l, &silu, &dsilu);
                    const vf gy = go * silu, dtu = dt * u;
                    if (gr->grad_z) store(gr->grad_z + row, go * dsilu * y[l - l0], t.width);
                    if (gr->out) store(gr->out + row, y[l - l0] * silu, t.width);
                    gD += gy * u;
                    const float *Bl = in->B + bc + p * N, *Cl = in->C + bc + p * N;
                    vf hB = splat(0.0f), gdt = splat(0.0f);
                    for (int64_t n = 0; n < N; n++) {
                        const vf xprev = l > l0 ? xs[i - N + n] : x0[n];
                        const vf hn = h[n] + gy * Cl[n];                     /* h_t */
                        const vf p = hn * dA[i + n] * xprev;                 /* d loss / d (dt A) */
                        hB += hn * Bl[n];
                        gdt += p * a[n];
                        gA[n] += p * dt;
                        gC[i + n] += gy * xs[i + n];
                        gB[i + n] += hn * dtu;
                        h[n] = hn * dA[i + n];                               /* carried to position t - 1 */
                    }
                    gdt += hB * u;
                    if (in->delta_softplus) gdt *= sigmoid(raw_delta(in, t, l)); /* through the softplus */
                    gbias += gdt;
                    store(gr->grad_delta + row, gdt, t.width);
                    store(gr->grad_u + row, hB * dt + gy * dskip, t.width);
                }
                gD_all[j] = gD;
                gbias_all[j] = gbias;
            }
            flush_bc(in, gr, bc, l0, l1, gB, gC);
        }
        j = 0;
        for (Tile t = first_tile(in, b, d0, d1); t.d < d1; t = next_tile(in, t, d1), j++) {
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < t.width; k++) gr->grad_A[n * dim + t.d + k] += gA_all[j * N + n][k];
            for (int64_t k = 0; k < t.width; k++) {
                gr->grad_D[t.d + k] += gD_all[j][k];
                gr->grad_bias[t.d + k] += gbias_all[j][k];
            }
        }
    }
    for (int i = 0; i < 10; i++) free(buffers[i]);
    return 0;
}
