"""Fused CPU selective scan: one pass per (batch, channel) row with the N-dim state in a register-sized row (numba).

The pure-PyTorch chunked scan (``selective_scan.selective_scan_chunked``) is built from whole-tensor ops, so every
step of the recurrence is a pass over (T, b, D, N) tiles in memory: on a CPU most of its time goes to moving those
tiles, not to arithmetic. Here each (b, d) row is scanned position by position with its state ``x`` (N values) in a
small local row; nothing of size (B, D, L, N), or a tile of it, is ever written. The backward pass recomputes a row's
states into an (L + 1, N) scratch buffer (256 KiB for L = 4096) and runs the adjoint recurrence in reverse, so the
memory is that of the inputs and gradients.

The kernels do only the recurrence (with ``exp(delta * A)`` computed inline by a polynomial, so the loops over the
state vectorise). What is elementwise over (B, D, L) stays in PyTorch, which vectorises it well: the step sizes
``softplus(delta + bias)`` and their slope, the gate ``silu(z)`` and its gradient, and the skip term ``D``.

Work is split into contiguous channel ranges, one per thread of a small pool (the kernels release the GIL); each
range keeps its own partial sums of the B and C gradients (summed over the channels of a group), added at the end,
so results do not depend on thread timing. Same signature, shapes and maths as ``selective_scan_ref``; computes in
fp32 (fp64 for fp64 inputs, with the decays still at fp32 accuracy).

numba is imported lazily; :func:`fused_scan_available` says whether it imports. Kernels are compiled on first use
(seconds; cached on disk afterwards).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Fewest channels a worker thread gets (smaller ranges cost more in hand-off than they save).
MIN_RANGE_CHANNELS = 64
# 2^f ~ 1 + c1 f + ... + c6 f^6 on |f| <= 1/2 (Taylor-like minimax coefficients of exp2).
EXP2_COEFFICIENTS = (0.693147182, 0.240226507, 5.55040874e-2, 9.61812911e-3, 1.33335581e-3, 1.54035304e-4)


class _Kernels(NamedTuple):
    forward: object
    backward: object
    exp_array: object


@functools.lru_cache(maxsize=1)
def _kernels() -> _Kernels:
    """Compile (or load from numba's cache) the kernels."""
    from numba import njit

    log2e, lowest, half, one = np.float32(math.log2(math.e)), np.float32(-126.0), np.float32(0.5), np.float32(1.0)
    c1, c2, c3, c4, c5, c6 = (np.float32(c) for c in EXP2_COEFFICIENTS)

    @njit(cache=True, fastmath=True, inline="always")
    def decay_exp(x):
        """exp(x) for x <= 0 in fp32 without a library call, so that loops over the state vectorise.

        exp(x) = 2^k * 2^f with k = round(x log2 e) and |f| <= 1/2; 2^f by a degree-6 polynomial, 2^k by writing
        the exponent bits. Relative error < 3e-7 for |x| <= 1, < 1.2e-6 for |x| <= 20, < 5e-6 down to -87 (from
        rounding x log2 e in fp32); results below 2^-126 are flushed to about 2^-126.
        """
        y = max(x * log2e, lowest)
        k = np.floor(y + half)
        f = y - k
        p = one + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
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

    return _Kernels(forward, backward, exp_array)


@functools.lru_cache(maxsize=1)
def fused_scan_available() -> bool:
    """True when numba imports (the fused CPU kernels can be compiled)."""
    try:
        _kernels()
    except ImportError as err:
        logger.warning("numba is not installed (%s): the CPU selective scan falls back to the slower pure-PyTorch "
                       "chunked scan; pip install numba for the fused kernel", err)
        return False
    return True


def decay_exp_array(x: np.ndarray) -> np.ndarray:
    """The kernels' fp32 ``exp`` applied to a 1-d float32 array of values <= 0 (for tests)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _kernels().exp_array(x, out)
    return out


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="stabledub-scan")


def _ranges(dim: int) -> list[tuple[int, int]]:
    """Contiguous channel ranges, one per intra-op thread (at least ``MIN_RANGE_CHANNELS`` channels each)."""
    parts = max(1, min(torch.get_num_threads(), dim // MIN_RANGE_CHANNELS))
    bounds = np.linspace(0, dim, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]


def _map(function, ranges: list[tuple[int, int]]) -> None:
    """Call ``function(index, d0, d1)`` for every range, in parallel when there are several."""
    if len(ranges) == 1:
        function(0, *ranges[0])
        return
    futures = [_pool(len(ranges)).submit(function, i, d0, d1) for i, (d0, d1) in enumerate(ranges)]
    for future in futures:
        future.result()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _bc_rows(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(B, N, L) or (B, G, N, L) -> contiguous (B, G, L, N) numpy."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.detach().to(dtype).transpose(-1, -2).contiguous().numpy()


def _step_sizes(delta, delta_bias, softplus: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw = delta + bias, dt = softplus(raw) or raw), both (B, D, L) in ``dtype``."""
    raw = delta.detach().to(dtype)
    if delta_bias is not None:
        raw = raw + delta_bias.detach().to(dtype)[:, None]
    return raw, (F.softplus(raw) if softplus else raw)


class _FusedSelectiveScan(torch.autograd.Function):
    """The fused kernels as an autograd function (inputs are kept; states are recomputed in backward)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        kernels = _kernels()
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, dim, length = u.shape
        uc = u.detach().to(dtype).contiguous()
        _, dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)
        y = torch.empty((batch, dim, length), dtype=dtype)
        last = torch.empty((batch, dim, A.shape[1]), dtype=dtype)
        args = (uc.numpy(), _np(dt), _np(A.detach().to(dtype)), _bc_rows(B, dtype), _bc_rows(C, dtype))
        _map(lambda i, d0, d1: kernels.forward(*args, d0, d1, y.numpy(), last.numpy()), _ranges(dim))
        if D is not None:
            y.addcmul_(uc, D.detach().to(dtype)[:, None])
        if z is not None:
            y.mul_(F.silu(z.detach().to(dtype)))
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = bool(delta_softplus)
        return y.to(u.dtype), last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        kernels = _kernels()
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, dim, length = u.shape
        groups, d_state = (1 if B.dim() == 3 else B.shape[1]), A.shape[1]
        uc = u.detach().to(dtype).contiguous()
        raw, dt = _step_sizes(delta, delta_bias, ctx.delta_softplus, dtype)
        g_pre = grad_out.to(dtype)  # gradient of y + D u (before the gate)
        if z is not None:
            zc = z.detach().to(dtype)
            g_pre = g_pre * F.silu(zc)
        g_pre = g_pre.contiguous()
        ranges = _ranges(dim)
        g_u, g_dt, y = (torch.empty((batch, dim, length), dtype=dtype) for _ in range(3))
        g_A = torch.empty((dim, d_state), dtype=dtype)
        g_Bp = torch.zeros((len(ranges), batch, groups, length, d_state), dtype=dtype)
        g_Cp = torch.zeros_like(g_Bp)
        glast = _np(grad_last.to(dtype)) if grad_last is not None else np.zeros((1, 1, 1), g_A.numpy().dtype)
        args = (uc.numpy(), _np(dt), _np(A.detach().to(dtype)), _bc_rows(B, dtype), _bc_rows(C, dtype),
                g_pre.numpy(), glast, grad_last is not None)
        outs = (g_u.numpy(), g_dt.numpy(), g_A.numpy(), g_Bp.numpy(), g_Cp.numpy(), y.numpy())
        _map(lambda i, d0, d1: kernels.backward(*args, d0, d1, i, *outs), ranges)

        g_D = g_z = g_bias = None
        if D is not None:
            Dc = D.detach().to(dtype)
            g_u.addcmul_(g_pre, Dc[:, None])
            g_D = (g_pre * uc).sum((0, 2)).to(D.dtype)
            y.addcmul_(uc, Dc[:, None])
        if z is not None:
            sig = torch.sigmoid(zc)
            g_z = (grad_out.to(dtype) * y * sig * (1 + zc * (1 - sig))).to(z.dtype)
        if ctx.delta_softplus:
            g_dt.mul_(torch.sigmoid(raw))
        if delta_bias is not None:
            g_bias = g_dt.sum((0, 2)).to(delta_bias.dtype)

        def bc_grad(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            grad = partial.sum(0).transpose(-1, -2)  # (B, G, N, L)
            return (grad.squeeze(1) if like.dim() == 3 else grad).to(like.dtype).contiguous()

        return (g_u.to(u.dtype), g_dt.to(delta.dtype), g_A.to(A.dtype), bc_grad(g_Bp, B), bc_grad(g_Cp, C),
                g_D, g_z, g_bias, None)


def selective_scan_fused_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """Fused CPU selective scan (numba); ``selective_scan_fn``'s signature and results.

    Args:
        u: (B, D, L) input, on the CPU.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix.
        B: (B, N, L) or (B, G, N, L) input matrix; channel d uses group d // (D / G).
        C: (B, N, L) or (B, G, N, L) output matrix, same layout as B.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional: the output is multiplied by silu(z).
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N) (fp32, or fp64 for fp64 inputs).

    Returns:
        (B, D, L) output in u's dtype, and the last state when asked.

    Raises:
        SelectiveScanInputError: on inconsistent shapes or non-floating dtypes, or tensors not on the CPU.
    """
    from .selective_scan import SelectiveScanInputError, _check_inputs

    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if any(t is not None and t.device.type != "cpu" for t in (u, delta, A, B, C, D, z, delta_bias)):
        raise SelectiveScanInputError("the fused CPU selective scan needs CPU tensors")
    out, last = _FusedSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
