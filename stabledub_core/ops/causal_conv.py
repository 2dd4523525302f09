"""Causal depthwise 1-d convolution (Mamba's short convolution before the scan).

For every batch element ``b`` and channel ``d``, with kernel size ``K``::

    out[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l - (K - 1) + k]      (x = 0 before position 0)

Two implementations share the signature of Dao AI Lab's ``causal_conv1d_fn(x, weight, bias)`` (the package mamba_ssm
uses on CUDA):

* ``causal_conv1d``: the public entry point. It runs the ``causal_conv1d`` package's CUDA kernel when that package
  imports and the tensors are on CUDA, else :class:`_CausalConv1d` below.
* ``_CausalConv1d``: pure PyTorch, any device. The forward pass is ``F.conv1d`` (oneDNN on CPU); the backward pass is
  written out as ``K`` shifted multiply-adds for the input gradient and ``K`` per-channel dot products for the weight
  gradient. PyTorch's own depthwise ``convolution_backward`` takes a slow path on CPU: 3-5x longer than this at the
  mixer's shapes (sequences of 16 frames especially), and it was 16 % of a Mamba block's training step.
* ``causal_conv1d_ref``: ``F.conv1d`` (padded, cut to L outputs) under plain autograd, kept for tests and benchmarks.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .kernels import try_import

_KERNEL_MODULE = "causal_conv1d"


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: ``F.conv1d`` padded on both sides and cut to the first L outputs, under plain autograd.

    Args:
        x: (B, D, L) input.
        weight: (D, K) one kernel per channel.
        bias: (D,) or None.

    Returns:
        (B, D, L).
    """
    kernel = weight.shape[1]
    return F.conv1d(x, weight.unsqueeze(1), bias, padding=kernel - 1, groups=weight.shape[0])[..., :x.shape[-1]]


class _CausalConv1d(torch.autograd.Function):
    """Causal depthwise convolution with a backward pass of shifted multiply-adds (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return causal_conv1d_ref(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        kernel, length = weight.shape[1], x.shape[-1]
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.zeros_like(x) if need_x else None  # (B, D, L)
        grad_w = torch.empty_like(weight) if need_w else None  # (D, K)
        for k in range(kernel):
            shift = kernel - 1 - k  # tap k reads x[l - shift]
            if shift >= length:  # the tap only ever reads the zero padding
                if need_w:
                    grad_w[:, k] = 0
                continue
            g = grad_out[..., shift:]  # (B, D, L - shift): outputs that read x[..., :L - shift] through tap k
            if need_x:
                grad_x[..., :length - shift].addcmul_(g, weight[:, k, None])
            if need_w:
                grad_w[:, k] = (g * x[..., :length - shift]).sum(dim=(0, 2))
        grad_b = grad_out.sum(dim=(0, 2)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def _import_kernel() -> Callable:
    """Imports the ``causal_conv1d`` package's ``causal_conv1d_fn`` (raises whatever the import raises)."""
    return importlib.import_module(_KERNEL_MODULE).causal_conv1d_fn


@functools.lru_cache(maxsize=1)
def load_kernel() -> Optional[Callable]:
    """The ``causal_conv1d`` package's CUDA ``causal_conv1d_fn``, or None when it is not usable here.

    Tried once per process; ImportError/OSError/RuntimeError mean "not available" (logged), anything else propagates.
    """
    return try_import(_import_kernel, "causal-conv1d kernel", "the PyTorch causal convolution")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution with ``causal_conv1d_fn``'s signature, on the fastest available implementation.

    Args:
        x: (B, D, L) input.
        weight: (D, K) one kernel per channel (an ``nn.Conv1d``'s ``(D, 1, K)`` weight without its middle axis).
        bias: (D,) or None.

    Returns:
        (B, D, L): position l sees positions l - K + 1 .. l.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d expects x (batch, dim, length) and weight (dim, kernel), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if x.is_cuda:
        kernel = load_kernel()
        if kernel is not None:
            return kernel(x, weight, bias)
    return _CausalConv1d.apply(x, weight, bias)
