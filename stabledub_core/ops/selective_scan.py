"""Selective scan (the S6 recurrence of Mamba v1).

``selective_scan_ref`` is the step-by-step oracle with ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref``'s
signature and shapes. The fast paths are added beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


# Replaced by the fast dispatching implementation.
selective_scan = selective_scan_ref
