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
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Fewest channels a worker thread gets (smaller ranges cost more in hand-off than they save).
MIN_RANGE_CHANNELS = 64


class _Kernels(NamedTuple):
    forward: object
    backward: object
    exp_array: object


@functools.lru_cache(maxsize=1)
def _kernels() -> _Kernels:
    """The numba kernels (imports numba; compiled on first use, then loaded from numba's disk cache)."""
    from . import _scan_kernels

    return _Kernels(_scan_kernels.forward, _scan_kernels.backward, _scan_kernels.exp_array)


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
