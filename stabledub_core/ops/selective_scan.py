"""Selective scan (the S6 recurrence of Mamba v1).

For every batch element ``b``, channel ``d`` and state index ``n`` the scan runs, over positions ``l``::

    delta_l = softplus(delta_l + delta_bias)            (bias / softplus optional)
    x_l     = exp(delta_l * A[n]) * x_{l-1} + delta_l * u_l * B_l[n]
    y_l     = sum_n C_l[n] * x_l[n] + D * u_l           (D optional)
    out_l   = y_l * silu(z_l)                           (z optional)

These implementations share ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``'s signature and shapes:

* ``selective_scan``: the public entry point. It dispatches to mamba-ssm's CUDA kernel when mamba-ssm imports and the
  tensors are on CUDA, to the compiled CPU kernel (``selective_scan_cpu``) for CPU tensors where a C compiler built it,
  else to the pure-PyTorch chunked scan below.
* ``selective_scan_chunked``: pure PyTorch, any device. The (batch, position) plane is cut into tiles of a batch
  block x ``T`` positions, so a few preallocated (T, b, D, N) buffers (about 4 MiB each) replace the (B, D, L, N)
  tensors. Per tile, the decays exp(delta * A) are computed in one op (this exp is the unavoidable cost: the floor),
  the inputs delta * u * B in another, and the recurrence runs as one fused multiply-add per position on contiguous
  rows of the buffer; each decay is <= 1 (for A < 0), so nothing overflows and the result is as exact as the
  step-by-step loop. It is a ``torch.autograd.Function`` that keeps only the state at each chunk boundary (B, D, N
  per chunk, at most 1/16 of a (B, D, L, N) tensor): the backward pass recomputes each tile's states from its
  boundary state and runs the adjoint recurrence in reverse, tile by tile.
* ``selective_scan_ref``: the step-by-step oracle with materialised (B, D, L, N) tensors, kept for tests/benchmarks.

Internally the chunked scan uses a "scan layout" with positions first and the channels split into the groups of
B/C: (L, B, G, D/G) for per-channel tensors and (L, B, G, N) for B/C, so that a position's slice is contiguous. A 3-d
B/C of shape (B, N, L) is the same as one group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from stabledub_core.errors import SelectiveScanInputError
from stabledub_core.ops import selective_scan_cpu
from stabledub_core.ops.kernels import try_import

# Elements of one (T, B, D, N) chunk buffer when the chunk size is chosen automatically (4 MiB in fp32): small
# enough for the cache-friendly loop and a low memory peak, large enough that per-chunk overheads stay negligible.
DEFAULT_CHUNK_ELEMENTS = 1 << 20
# Smallest automatic chunk: bounds the chunk-boundary states kept for backward to 1/16 of a (B, D, L, N) tensor (long
# sequences with a large B * D * N are then split into batch blocks instead).
MIN_AUTO_CHUNK = 16

# The step loops run one small op per position. Below this many elements per position an op is too small to gain from
# intra-op threads, and each parallel region costs a thread barrier (milliseconds when the cores are shared), so the
# loops run on one thread.
LOOP_PARALLEL_MIN_ELEMENTS = 1 << 20

_MAMBA_SCAN_MODULE = "mamba_ssm.ops.selective_scan_interface"


class ScanBackend(enum.Enum):
    """Which implementation ``selective_scan`` runs."""

    MAMBA_CUDA = "mamba_ssm CUDA kernel"
    CPU_KERNEL = "compiled CPU kernel"
    PYTORCH = "pure PyTorch chunked scan"


# --------------------------------------------------------------------------------------------------------------------
# Reference oracle
# --------------------------------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Reference selective scan: a Python loop over L with materialised (B, D, L, N) tensors.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix (negative).
        B: (B, N, L) or (B, G, N, L) input-dependent input matrix.
        C: (B, N, L) or (B, G, N, L) input-dependent output matrix.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional: the output is multiplied by silu(z).
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N).

    Returns:
        (B, D, L) output in u's dtype, and the last state when asked.
    """
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    A = A.float()
    B, C = B.float(), C.float()
    if B.dim() == 4:  # (B, G, N, L) -> (B, D, N, L)
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # (B, D, L, N)
    if B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((batch, dim, A.shape[1]))
    ys = []
    for i in range(length):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        ys.append(y)
    out = torch.stack(ys, dim=2)  # (B, D, L)
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# Input checks and layout helpers
# --------------------------------------------------------------------------------------------------------------------


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> int:
    """Validates shapes/dtypes and returns the number of groups G of B/C (1 for the 3-d layout)."""
    if u.dim() != 3:
        raise SelectiveScanInputError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if min(batch, dim, length) == 0:
        raise SelectiveScanInputError(f"u must have a non-empty batch, dim and length, got shape {tuple(u.shape)}")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise SelectiveScanInputError(f"{name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise SelectiveScanInputError(f"A must be (dim={dim}, d_state), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise SelectiveScanInputError("complex A is not supported by the selective scan: pass a real (dim, d_state) A")
    d_state = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and t.shape == (batch, d_state, length):
            g = 1
        elif t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (d_state, length) and dim % t.shape[1] == 0:
            g = t.shape[1]
        else:
            raise SelectiveScanInputError(
                f"{name} must be (batch={batch}, d_state={d_state}, length={length}) or (batch, groups, d_state, "
                f"length) with groups dividing dim={dim}; got shape {tuple(t.shape)}")
        if groups is not None and g != groups:
            raise SelectiveScanInputError(f"B and C must have the same number of groups, got {groups} and {g}")
        groups = g
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise SelectiveScanInputError(f"{name} must be (dim={dim},), got shape {tuple(t.shape)}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            raise SelectiveScanInputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return groups


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs; fp64 stays fp64 (gradcheck)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _channels_to_scan(x: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, D, L) -> a new contiguous (L, B, G, D/G) tensor in ``dtype``."""
    batch, dim, length = x.shape
    if x.stride(1) == 1:
        # Channels innermost in memory (a transposed (B, L, D) tensor, as Mamba's projections give): the permuted
        # copy gathers whole rows, 4-9x faster than going through a (B * D, L) reshape, which would copy twice.
        x = x.to(dtype).permute(2, 0, 1).clone(memory_format=torch.contiguous_format)
    else:
        # Positions innermost: a 2-d transpose copies faster than the equivalent 3-d permute at the large shapes.
        x = x.to(dtype).reshape(batch * dim, length).t().clone(memory_format=torch.contiguous_format)
    # Always a new tensor: callers modify it in place.
    return x.reshape(length, batch, groups, dim // groups)


def _channels_from_scan(x: torch.Tensor) -> torch.Tensor:
    """(L, B, G, D/G) -> a (B, D, L) view, channels innermost in memory (no copy).

    Mamba reads the scan's output (and the gradients it returns) through transposes back to (B, L, D), so a copy to
    the (B, D, L)-contiguous layout here would only be undone by another copy downstream.
    """
    length, batch, groups, dim_g = x.shape
    return x.reshape(length, batch, groups * dim_g).permute(1, 2, 0)


def _bc_to_scan(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> contiguous (L, B, G, N) in ``dtype``."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.to(dtype).permute(3, 0, 1, 2).contiguous()


def _bc_from_scan(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(L, B, G, N) -> ``like``'s layout (B, N, L) or (B, G, N, L) and dtype."""
    x = x.permute(1, 2, 3, 0)  # (B, G, N, L)
    if like.dim() == 3:
        x = x.squeeze(1)
    return x.to(like.dtype).contiguous()


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    """d silu(z) / dz."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


@dataclasses.dataclass(frozen=True)
class _ChunkPlan:
    """How the (batch, position) plane is tiled: batch blocks of ``batch_block`` x chunks of ``chunk`` positions.

    Each tile needs (chunk, batch_block, D, N) working buffers; the backward pass keeps one (B, D, N) state per chunk
    boundary, i.e. 1/chunk of a (B, D, L, N) tensor.
    """

    chunk: int
    batch_block: int

    @classmethod
    def create(cls, batch: int, dim: int, d_state: int, length: int, chunk: Optional[int] = None) -> "_ChunkPlan":
        # Tile budget: DEFAULT_CHUNK_ELEMENTS, but no more than 1/16 of the (B, D, L, N) elements for small problems.
        budget = min(DEFAULT_CHUNK_ELEMENTS, batch * dim * d_state * length // 16)
        if chunk is None:
            chunk = min(length, max(MIN_AUTO_CHUNK, budget // (batch * dim * d_state)))
        batch_block = min(batch, max(1, budget // (chunk * dim * d_state)))
        return cls(chunk=chunk, batch_block=batch_block)

    def batch_slices(self, batch: int) -> list[slice]:
        return [slice(b0, min(b0 + self.batch_block, batch)) for b0 in range(0, batch, self.batch_block)]

    def chunk_slices(self, length: int) -> list[slice]:
        return [slice(l0, min(l0 + self.chunk, length)) for l0 in range(0, length, self.chunk)]

    def new_buffer(self, like: torch.Tensor, dim: int, d_state: int) -> torch.Tensor:
        """A flat buffer for the largest tile; ``_tile`` views it as any smaller tile."""
        return like.new_empty(self.chunk * self.batch_block * dim * d_state)


def _tile(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous (T, b, G, Dg, N) view of the start of a flat buffer (partial tiles stay contiguous too)."""
    return buffer[:math.prod(shape)].view(shape)


# --------------------------------------------------------------------------------------------------------------------
# Chunked pure-PyTorch scan
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _loop_threads(step: torch.Tensor):
    """Runs the enclosed CPU step loop on one intra-op thread when each ``step`` tensor is too small to parallelise.

    The previous thread count is restored on exit.
    """
    previous = torch.get_num_threads()
    if step.device.type != "cpu" or step.numel() >= LOOP_PARALLEL_MIN_ELEMENTS or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _chunk_forward(dt, dtu, A_log2, Bc, x0, dA, xs):
    """Runs the recurrence over one chunk of T positions, in place in the given buffers.

    Args:
        dt: (T, B, G, Dg) step sizes (after bias / softplus).
        dtu: (T, B, G, Dg) ``dt * u``.
        A_log2: (G, Dg, N) state matrix times log2(e) (exp2 is cheaper than exp on CPU).
        Bc: (T, B, G, N) input matrix.
        x0: (B, G, Dg, N) state before the chunk, None for zeros.
        dA: (T, B, G, Dg, N) buffer, filled with the decays exp(dt * A).
        xs: (T, B, G, Dg, N) buffer, filled with the states x_t.
    """
    torch.mul(dt.unsqueeze(-1), A_log2, out=dA)
    dA.exp2_()  # exp(dt * A), one step at a time: <= 1 for negative A, nothing is exponentiated cumulatively
    torch.mul(dtu.unsqueeze(-1), Bc.unsqueeze(-2), out=xs)  # delta * u * B
    rows, decays = xs.unbind(0), dA.unbind(0)  # one call instead of three indexing ops per step
    with _loop_threads(rows[0]):
        if x0 is not None:
            rows[0].addcmul_(decays[0], x0)
        for t in range(1, len(rows)):
            rows[t].addcmul_(decays[t], rows[t - 1])


def _contract_state(xs: torch.Tensor, Cc: torch.Tensor) -> torch.Tensor:
    """sum_n xs[..., n] * Cc[..., n]: (T, B, G, Dg, N), (T, B, G, N) -> (T, B, G, Dg)."""
    return torch.einsum("tbgdn,tbgn->tbgd", xs, Cc)


def _contract_channels(weights: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """sum_d weights[..., d] * states[..., d, :]: (T, B, G, Dg), (T, B, G, Dg, N) -> (T, B, G, N)."""
    return torch.matmul(weights.unsqueeze(-2), states).squeeze(-2)


def _prepare_delta(delta, delta_bias, delta_softplus, groups, dtype):
    """Returns (raw delta + bias, effective delta) in scan layout (L, B, G, Dg)."""
    dt_raw = _channels_to_scan(delta, groups, dtype)
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias.to(dtype).reshape(groups, -1)
    dt = F.softplus(dt_raw) if delta_softplus else dt_raw
    return dt_raw, dt


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Memory-lean selective scan: keeps only chunk-boundary states, recomputes chunks in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        groups = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        dtype = _compute_dtype(u)
        batch, dim, length = u.shape
        dim_g, d_state = dim // groups, A.shape[1]
        plan = _ChunkPlan.create(batch, dim, d_state, length, chunk_size)
        chunks = plan.chunk_slices(length)
        keep_starts = any(ctx.needs_input_grad) and len(chunks) > 1

        us = _channels_to_scan(u, groups, dtype)  # (L, B, G, Dg)
        _, dt = _prepare_delta(delta, delta_bias, delta_softplus, groups, dtype)  # (L, B, G, Dg)
        A_log2 = A.to(dtype).reshape(groups, dim_g, d_state) * math.log2(math.e)  # (G, Dg, N)
        Bs, Cs = _bc_to_scan(B, dtype), _bc_to_scan(C, dtype)  # (L, B, G, N)

        dA_buf = plan.new_buffer(us, dim, d_state)
        xs_bufs = (plan.new_buffer(us, dim, d_state), plan.new_buffer(us, dim, d_state))  # alternate: keeps x0 intact
        # State at the start of every chunk but the first (which starts from zeros), for the backward pass.
        starts = us.new_empty((len(chunks) - 1, batch, groups, dim_g, d_state)) if keep_starts else None
        last_state = us.new_empty((batch, groups, dim_g, d_state))
        y = torch.empty_like(us)  # (L, B, G, Dg)
        for bs in plan.batch_slices(batch):
            nb = bs.stop - bs.start
            x = None
            for index, sl in enumerate(chunks):
                n = sl.stop - sl.start
                if x is not None and starts is not None:
                    starts[index - 1, bs] = x
                tile_shape = (n, nb, groups, dim_g, d_state)
                xs, dA = _tile(xs_bufs[index % 2], tile_shape), _tile(dA_buf, tile_shape)
                _chunk_forward(dt[sl, bs], dt[sl, bs] * us[sl, bs], A_log2, Bs[sl, bs], x, dA, xs)
                x = xs[n - 1]
                y[sl, bs] = _contract_state(xs, Cs[sl, bs])
            last_state[bs] = x
        del dA_buf, xs_bufs

        if D is not None:
            y.addcmul_(us, D.to(dtype).reshape(groups, dim_g))
        out = _channels_from_scan(y)  # (B, D, L)
        if z is not None:
            out = out * F.silu(z.to(dtype))

        ctx.plan = plan
        ctx.groups = groups
        ctx.delta_softplus = delta_softplus
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        return out.to(u.dtype), last_state.reshape(batch, dim, d_state)

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        groups, plan = ctx.groups, ctx.plan
        dtype = _compute_dtype(u)
        batch, dim, length = u.shape
        dim_g, d_state = dim // groups, A.shape[1]
        want_z = z is not None and ctx.needs_input_grad[6]

        # Per-channel tensors in scan layout (L, B, G, Dg); each is freed as soon as it is no longer needed.
        us = _channels_to_scan(u, groups, dtype)
        dt_raw, dt = _prepare_delta(delta, delta_bias, ctx.delta_softplus, groups, dtype)
        softplus_grad = dt_raw.sigmoid_() if ctx.delta_softplus else None  # d softplus(x) / dx, over dt_raw
        del dt_raw
        g_y = _channels_to_scan(grad_out, groups, dtype)  # becomes the gradient of the pre-gate output
        g_z = None
        if z is not None:
            zs = _channels_to_scan(z, groups, dtype)
            if want_z:
                g_z = g_y * _silu_grad(zs)  # times the pre-gate output, added tile by tile below
            g_y.mul_(F.silu(zs))
            del zs
        A_g = A.to(dtype).reshape(groups, dim_g, d_state)  # (G, Dg, N)
        A_log2 = A_g * math.log2(math.e)
        Bs, Cs = _bc_to_scan(B, dtype), _bc_to_scan(C, dtype)  # (L, B, G, N)
        D_g = D.to(dtype).reshape(groups, dim_g) if D is not None else None
        if grad_last is not None:
            grad_last = grad_last.to(dtype).reshape(batch, groups, dim_g, d_state)

        g_dt = torch.empty_like(us)  # gradient w.r.t. the effective delta
        g_u = torch.empty_like(us)
        g_B, g_C = torch.empty_like(Bs), torch.empty_like(Cs)
        g_A = torch.zeros_like(A_g)

        dA_buf, xs_buf, h_buf = (plan.new_buffer(us, dim, d_state) for _ in range(3))
        chunks = plan.chunk_slices(length)
        for bs in plan.batch_slices(batch):
            nb = bs.stop - bs.start
            # carry: the adjoint flowing into the chunk's last position from the positions after it.
            carry = grad_last[bs] if grad_last is not None else None
            for index in reversed(range(len(chunks))):
                tile = (chunks[index], bs)
                n = tile[0].stop - tile[0].start
                dA, xs, h = (_tile(buf, (n, nb, groups, dim_g, d_state)) for buf in (dA_buf, xs_buf, h_buf))
                x0 = starts[index - 1, bs] if index > 0 else None
                dtu = dt[tile] * us[tile]  # (T, b, G, Dg)
                _chunk_forward(dt[tile], dtu, A_log2, Bs[tile], x0, dA, xs)
                if g_z is not None:  # gradient of the gate: g_out * silu'(z) * (y + D u)
                    pre_gate = _contract_state(xs, Cs[tile])
                    if D_g is not None:
                        pre_gate.addcmul_(us[tile], D_g)
                    g_z[tile] *= pre_gate

                # Adjoint recurrence h_t = g_y_t * C_t + exp(dt_{t+1} A) h_{t+1}.
                torch.mul(g_y[tile].unsqueeze(-1), Cs[tile].unsqueeze(-2), out=h)  # (T, b, G, Dg, N)
                if carry is not None:
                    h[n - 1] += carry
                rows, decays = h.unbind(0), dA.unbind(0)
                with _loop_threads(rows[0]):
                    for t in range(n - 2, -1, -1):
                        rows[t].addcmul_(decays[t + 1], rows[t + 1])
                carry = dA[0] * h[0]

                g_C[tile] = _contract_channels(g_y[tile], xs)
                g_B[tile] = _contract_channels(dtu, h)
                hB = _contract_state(h, Bs[tile])  # (T, b, G, Dg): sum_n h * B
                # Gradient of the decays times the decays: h_t * x_{t-1} * exp(dt_t A), written over dA.
                p = dA.mul_(h)
                p[1:].mul_(xs[:-1])
                if x0 is not None:
                    p[0].mul_(x0)
                else:
                    p[0].zero_()
                g_dt[tile] = torch.linalg.vecdot(p, A_g) + hB * us[tile]
                g_A += p.mul_(dt[tile].unsqueeze(-1)).sum((0, 1))
                g_u[tile] = hB * dt[tile]
        del dA_buf, xs_buf, h_buf, dt

        g_D = None
        if D_g is not None:
            g_u.addcmul_(g_y, D_g)
            if ctx.needs_input_grad[5]:
                g_D = (g_y * us).sum((0, 1)).reshape(dim).to(D.dtype)
        del g_y, us
        if softplus_grad is not None:
            g_dt.mul_(softplus_grad)
            del softplus_grad
        g_bias = None
        if delta_bias is not None and ctx.needs_input_grad[7]:
            g_bias = g_dt.sum((0, 1)).reshape(dim).to(delta_bias.dtype)
        g_u = _channels_from_scan(g_u).to(u.dtype)
        g_dt = _channels_from_scan(g_dt).to(delta.dtype)
        g_z = _channels_from_scan(g_z).to(z.dtype) if g_z is not None else None
        return (g_u, g_dt, g_A.reshape(dim, d_state).to(A.dtype), _bc_from_scan(g_B, B), _bc_from_scan(g_C, C),
                g_D, g_z, g_bias, None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, *, chunk_size: Optional[int] = None):
    """Pure-PyTorch selective scan, chunked over the sequence, with a recomputing backward pass.

    Computes in fp32 (fp64 for fp64 inputs) and returns u's dtype. Peak memory is a few (T, b, D, N) tile buffers
    plus (B, D, L)-sized tensors; nothing of size (B, D, L, N) is kept for the backward pass. On CPU the per-position
    loop runs with one intra-op thread when a position's slice is small (``LOOP_PARALLEL_MIN_ELEMENTS``): the thread
    count is set for the loop and restored right after.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix.
        B: (B, N, L) or (B, G, N, L) input matrix; channel d uses group d // (D / G).
        C: (B, N, L) or (B, G, N, L) output matrix, same layout as B.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional: the output is multiplied by silu(z).
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N) (fp32, or fp64 for fp64 inputs).
        chunk_size: positions per chunk T; by default chosen so that a (T, B, D, N) buffer has about
            ``DEFAULT_CHUNK_ELEMENTS`` elements, with at least ``MIN_AUTO_CHUNK`` positions (then the batch is
            processed in blocks).

    Returns:
        (B, D, L) output in u's dtype (channels innermost in memory: a transposed view, as Mamba consumes it;
        call ``.contiguous()`` if you need the other layout), and the last state when asked.

    Raises:
        SelectiveScanInputError: on inconsistent shapes or non-floating dtypes.
    """
    if chunk_size is not None and chunk_size < 1:
        raise SelectiveScanInputError(f"chunk_size must be a positive integer, got {chunk_size}")
    out, last_state = _ChunkedSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                                  chunk_size)
    return (out, last_state) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------------------------


def _import_mamba_scan() -> Callable:
    """Imports mamba-ssm's ``selective_scan_fn`` (raises whatever the import raises)."""
    return importlib.import_module(_MAMBA_SCAN_MODULE).selective_scan_fn


@functools.lru_cache(maxsize=1)
def load_mamba_scan() -> Optional[Callable]:
    """mamba-ssm's CUDA ``selective_scan_fn``, or None when mamba-ssm is not usable here.

    The import is tried once per process. ImportError/OSError/RuntimeError (not installed, missing CUDA libraries,
    binary mismatch) mean "not available" and are logged; any other exception propagates.
    """
    return try_import(_import_mamba_scan, "mamba-ssm selective scan", "the pure PyTorch scan")


def select_backend(device: torch.device, dtype: torch.dtype = torch.float32, d_state: int = 16) -> ScanBackend:
    """The implementation ``selective_scan`` uses for tensors on ``device`` of ``dtype`` with ``d_state`` states.

    The CPU kernel computes in fp32: fp64 inputs (gradcheck) take the pure PyTorch scan.
    """
    device = torch.device(device)
    if device.type == "cuda" and load_mamba_scan() is not None:
        return ScanBackend.MAMBA_CUDA
    if selective_scan_cpu.supports(device, dtype, d_state) and selective_scan_cpu.load_kernel() is not None:
        return ScanBackend.CPU_KERNEL
    return ScanBackend.PYTORCH


def _flipped(run: Callable) -> Callable:
    """A backend without a reverse mode, run in reverse: on inputs flipped along L, its output flipped back."""

    def run_reversed(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        def flip(t):
            return None if t is None else t.flip(-1)

        result = run(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus,
                     return_last_state)
        return (flip(result[0]), result[1]) if return_last_state else flip(result)

    return run_reversed


def _run_mamba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    return load_mamba_scan()(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                             return_last_state=return_last_state)


def _cpu_kernel_runner(reverse: bool) -> Callable:
    def run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        return selective_scan_cpu.selective_scan_cpu(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                                     delta_softplus=delta_softplus,
                                                     return_last_state=return_last_state, reverse=reverse)

    return run


def _run_pytorch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    return selective_scan_chunked(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                  return_last_state=return_last_state)


# (backend, reverse) -> runner; the CPU kernel scans in reverse natively, the others through flipped copies.
_BACKENDS: dict[tuple[ScanBackend, bool], Callable] = {
    (ScanBackend.MAMBA_CUDA, False): _run_mamba, (ScanBackend.MAMBA_CUDA, True): _flipped(_run_mamba),
    (ScanBackend.CPU_KERNEL, False): _cpu_kernel_runner(False), (ScanBackend.CPU_KERNEL, True): _cpu_kernel_runner(True),
    (ScanBackend.PYTORCH, False): _run_pytorch, (ScanBackend.PYTORCH, True): _flipped(_run_pytorch),
}


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, reverse: bool = False):
    """Selective scan with ``mamba_ssm``'s ``selective_scan_fn`` signature, on the fastest available backend.

    Uses mamba-ssm's CUDA kernel for CUDA tensors when mamba-ssm imports, the compiled CPU kernel for CPU tensors
    where it builds (fp32/fp16/bf16, d_state <= 64), else ``selective_scan_chunked``. ``reverse`` (an addition to
    that signature) scans from the last position to the first, as the backward branch of a bidirectional Mamba does.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix.
        B: (B, N, L) or (B, G, N, L) input matrix.
        C: (B, N, L) or (B, G, N, L) output matrix.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional.
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N).
        reverse: scan right to left: the result equals flipping u, delta, B, C and z along L, scanning, and flipping
            the output back (the CPU kernel does it without the copies).

    Returns:
        (B, D, L) output in u's dtype, and the last state when asked.
    """
    backend = _BACKENDS[select_backend(u.device, u.dtype, A.shape[-1]), bool(reverse)]
    return backend(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
