"""numba kernels of the fused CPU selective scan (see ``selective_scan_cpu.py``, which imports this lazily).

Module-level functions, so that numba caches their machine code on disk (``cache=True``): only the first run on a
machine compiles them.
"""

import math

import numpy as np
from numba import njit

# 2^f ~ 1 + c1 f + ... + c6 f^6 on |f| <= 1/2 (Taylor-like minimax coefficients of exp2).
EXP2_COEFFICIENTS = (0.693147182, 0.240226507, 5.55040874e-2, 9.61812911e-3, 1.33335581e-3, 1.54035304e-4)

LOG2E, LOWEST, HALF, ONE = np.float32(math.log2(math.e)), np.float32(-126.0), np.float32(0.5), np.float32(1.0)
C1, C2, C3, C4, C5, C6 = (np.float32(c) for c in EXP2_COEFFICIENTS)


@njit(cache=True, fastmath=True, inline="always")
def decay_exp(x):
    """exp(x) for x <= 0 in fp32 without a library call, so that loops over the state vectorise.

    exp(x) = 2^k * 2^f with k = round(x log2 e) and |f| <= 1/2; 2^f by a degree-6 polynomial, 2^k by writing
    the exponent bits. Relative error < 3e-7 for |x| <= 1, < 1.2e-6 for |x| <= 20, < 5e-6 down to -87 (from
    rounding x log2 e in fp32); results below 2^-126 are flushed to about 2^-126.
    """
    y = max(x * LOG2E, LOWEST)
    k = np.floor(y + HALF)
    f = y - k
    p = ONE + f * (C1 + f * (C2 + f * (C3 + f * (C4 + f * (C5 + f * C6)))))
    return p * np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)

# The loops over the state (n) are kept separate and simple, on local rows, so that LLVM vectorises them;
# accumulators start from an fp32 zero so that fp32 kernels stay in fp32 (they widen for fp64 inputs).
@njit(cache=True, fastmath=True, inline="always")
def advance(step, dtu, a, b_t, c_t, x_prev, x_t, decay):
    """One position: decay = exp(step * a), x_t = decay * x_prev + dtu * b_t; returns sum(x_t * c_t)."""
    n_state = a.shape[0]
    for n in range(n_state):
        decay[n] = decay_exp(step * a[n])
    for n in range(n_state):
        x_t[n] = decay[n] * x_prev[n] + dtu * b_t[n]
    acc = np.float32(0.0)
    for n in range(n_state):
        acc += x_t[n] * c_t[n]
    return acc

@njit(nogil=True, cache=True, fastmath=True)
def forward(u, dt, A, Bt, Ct, d0, d1, y, last):
    # u, dt, y: (B, D, L); A: (D, N); Bt, Ct: (B, G, L, N); last: (B, D, N). Channels [d0, d1).
    batch, dim, length = u.shape
    n_state = A.shape[1]
    dim_g = dim // Bt.shape[1]
    x = np.empty(n_state, u.dtype)
    a = np.empty(n_state, u.dtype)
    decay = np.empty(n_state, u.dtype)
    for d in range(d0, d1):
        g = d // dim_g
        a[:] = A[d]
        for b in range(batch):
            x[:] = 0.0
            for t in range(length):
                step = dt[b, d, t]
                y[b, d, t] = advance(step, step * u[b, d, t], a, Bt[b, g, t], Ct[b, g, t], x, x, decay)
            last[b, d, :] = x

@njit(nogil=True, cache=True, fastmath=True)
def backward(u, dt, A, Bt, Ct, gy, glast, has_glast, d0, d1, part, g_u, g_dt, g_A, g_Bp, g_Cp, y):
    # gy: (B, D, L) gradient of the scan output y (before D and the gate); g_u, g_dt: (B, D, L) written;
    # g_A: (D, N) written for [d0, d1); g_Bp, g_Cp: (parts, B, G, L, N) partial sums of this range's `part`;
    # y: (B, D, L) the recomputed scan output, written (the gate's gradient needs it).
    batch, dim, length = u.shape
    n_state = A.shape[1]
    dim_g = dim // Bt.shape[1]
    xs = np.empty((length + 1, n_state), u.dtype)  # xs[t + 1] = state after position t; xs[0] = 0
    decay = np.empty((length, n_state), u.dtype)
    a = np.empty(n_state, u.dtype)
    h = np.empty(n_state, u.dtype)  # adjoint of the state after the current position
    ga = np.empty(n_state, u.dtype)  # gradient of the decay exponents dt * A, this position
    g_a = np.empty(n_state, u.dtype)
    for d in range(d0, d1):
        g = d // dim_g
        a[:] = A[d]
        g_a[:] = 0.0
        for b in range(batch):
            xs[0, :] = 0.0
            for t in range(length):  # recompute the states
                step = dt[b, d, t]
                y[b, d, t] = advance(step, step * u[b, d, t], a, Bt[b, g, t], Ct[b, g, t], xs[t], xs[t + 1],
                                     decay[t])
            if has_glast:
                h[:] = glast[b, d, :]
            else:
                h[:] = 0.0
            for t in range(length - 1, -1, -1):  # adjoint recurrence, last position first
                step = dt[b, d, t]
                ut = u[b, d, t]
                dtu = step * ut
                g_out = gy[b, d, t]
                decay_t, b_t, c_t, x_prev, x_t = decay[t], Bt[b, g, t], Ct[b, g, t], xs[t], xs[t + 1]
                g_c, g_b = g_Cp[part, b, g, t], g_Bp[part, b, g, t]
                for n in range(n_state):
                    h[n] += g_out * c_t[n]
                    g_c[n] += g_out * x_t[n]
                    g_b[n] += h[n] * dtu
                    ga[n] = h[n] * x_prev[n] * decay_t[n]
                    g_a[n] += ga[n] * step
                hb = np.float32(0.0)
                gaa = np.float32(0.0)
                for n in range(n_state):
                    hb += h[n] * b_t[n]
                    gaa += ga[n] * a[n]
                for n in range(n_state):
                    h[n] *= decay_t[n]
                g_u[b, d, t] = hb * step
                g_dt[b, d, t] = hb * ut + gaa
        g_A[d, :] = g_a

@njit(cache=True, fastmath=True)
def exp_array(x, out):
    for i in range(x.shape[0]):
        out[i] = decay_exp(x[i])
