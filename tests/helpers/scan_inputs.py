"""Selective-scan test inputs and the relative error used by the ops and models tests."""

import torch

FWD_TOL = 1e-5
BWD_TOL = 1e-4


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (the absolute error when b is all zeros)."""
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    return err / scale if scale > 0 else err


def make_inputs(batch=2, dim=8, length=37, d_state=4, groups=None, dtype=torch.float32, seed=0):
    """Random scan inputs with a negative A and O(1) step sizes; returns a dict of leaf tensors."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, d_state, generator=gen) * 2 + 0.1).to(dtype),
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(dim),
        z=randn(batch, dim, length),
        delta_bias=randn(dim, scale=0.3),
    )
