"""Causal depthwise 1-d convolution (Mamba's short convolution before the scan).

For every batch element ``b`` and channel ``d``, with kernel size ``K``::

    out[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l - (K - 1) + k]      (x = 0 before position 0)

and, with ``reverse=True`` (the convolution of the flipped sequence, flipped back: the backward branch of a
bidirectional Mamba), ``out[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l + (K - 1) - k]`` (x = 0 after the
last position).

Two implementations share the signature of Dao AI Lab's ``causal_conv1d_fn(x, weight, bias)`` (the package mamba_ssm
uses on CUDA):

* ``causal_conv1d``: the public entry point. It runs the ``causal_conv1d`` package's CUDA kernel when that package
  imports and the tensors are on CUDA, else :class:`_CausalConv1d` below.
* ``_CausalConv1d``: pure PyTorch, any device. The forward pass is ``F.conv1d`` (oneDNN on CPU), or, for an input
  whose channels are innermost in memory (a transposed (B, L, D) tensor, as Mamba's input projection gives), ``K``
  shifted multiply-adds in that layout: ``F.conv1d`` would copy such an input to (B, D, L) and its output would be
  copied back by the scan, which wants channels innermost too. The backward pass is written out as ``K`` shifted
  multiply-adds for the input gradient and ``K`` per-channel dot products for the weight gradient. PyTorch's own depthwise ``convolution_backward`` takes a slow path on CPU: 3-5x longer than this at the
  mixer's shapes (sequences of 16 frames especially), and it was 16 % of a Mamba block's training step.
* ``causal_conv1d_ref``: ``F.conv1d`` (padded, cut to L outputs) under plain autograd, kept for tests and benchmarks.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from stabledub_core.errors import CausalConvInputError
from stabledub_core.ops.kernels import try_import

_KERNEL_MODULE = "causal_conv1d"


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      reverse: bool = False) -> torch.Tensor:
    """Reference: ``F.conv1d`` padded on both sides and cut to the first L outputs, under plain autograd.

    Args:
        x: (B, D, L) input.
        weight: (D, K) one kernel per channel.
        bias: (D,) or None.
        reverse: anti-causal (see the module docstring): the flipped kernel, cut to the last L outputs.

    Returns:
        (B, D, L).
    """
    kernel, length = weight.shape[1], x.shape[-1]
    if reverse:
        out = F.conv1d(x, weight.flip(-1).unsqueeze(1), bias, padding=kernel - 1, groups=weight.shape[0])
        return out[..., kernel - 1:]
    return F.conv1d(x, weight.unsqueeze(1), bias, padding=kernel - 1, groups=weight.shape[0])[..., :length]


def _taps(kernel: int, length: int, reverse: bool):
    """For each tap k that reads inside the sequence: (k, outputs that read through it, the inputs they read)."""
    for k in range(kernel):
        shift = kernel - 1 - k  # tap k reads x[l - shift] (x[l + shift] in reverse)
        if shift >= length:  # the tap only ever reads the zero padding
            continue
        if reverse:
            yield k, slice(None, length - shift), slice(shift, None)
        else:
            yield k, slice(shift, None), slice(None, length - shift)


def _shifted_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """The convolution as K shifted multiply-adds; the output keeps x's memory layout."""
    out = torch.empty_like(x)  # x's strides
    out.copy_(bias[:, None].expand_as(x)) if bias is not None else out.zero_()
    for k, written, read in _taps(weight.shape[1], x.shape[-1], reverse):
        out[..., written].addcmul_(x[..., read], weight[:, k, None])
    return out


class _CausalConv1d(torch.autograd.Function):
    """Causal depthwise convolution with a backward pass of shifted multiply-adds (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reverse: bool):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.reverse = bias is not None, reverse
        if x.stride(1) == 1 and x.shape[1] > 1:  # channels innermost: stay in that layout (module docstring)
            return _shifted_conv(x, weight, bias, reverse)
        return causal_conv1d_ref(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        kernel, length = weight.shape[1], x.shape[-1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.zeros_like(x) if need_x else None  # (B, D, L)
        grad_w = torch.zeros_like(weight) if need_w else None  # (D, K); taps reading only padding stay 0
        for k, written, read in _taps(kernel, length, ctx.reverse):
            g = grad_out[..., written]  # (B, D, L - shift): the outputs that read x[..., read] through tap k
            if need_x:
                grad_x[..., read].addcmul_(g, weight[:, k, None])
            if need_w:
                grad_w[:, k] = (g * x[..., read]).sum(dim=(0, 2))
        grad_b = grad_out.sum(dim=(0, 2)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def _import_kernel() -> Callable:
    """Imports the ``causal_conv1d`` package's ``causal_conv1d_fn`` (raises whatever the import raises)."""
    return importlib.import_module(_KERNEL_MODULE).causal_conv1d_fn


@functools.lru_cache(maxsize=1)
def load_kernel() -> Optional[Callable]:
    """The ``causal_conv1d`` package's CUDA ``causal_conv1d_fn``, or None when it is not usable here.

    Tried once per process; ImportError/OSError/RuntimeError mean "not available" (logged), anything else propagates.
    """
    return try_import(_import_kernel, "causal-conv1d kernel", "the PyTorch causal convolution")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  reverse: bool = False) -> torch.Tensor:
    """Causal depthwise convolution with ``causal_conv1d_fn``'s signature, on the fastest available implementation.

    Args:
        x: (B, D, L) input.
        weight: (D, K) one kernel per channel (an ``nn.Conv1d``'s ``(D, 1, K)`` weight without its middle axis).
        bias: (D,) or None.
        reverse: anti-causal, for a sequence read right to left (an addition to ``causal_conv1d_fn``'s signature):
            equal to flipping x along L, convolving and flipping back.

    Returns:
        (B, D, L): position l sees positions l - K + 1 .. l (l .. l + K - 1 with ``reverse``).
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise CausalConvInputError(f"causal_conv1d expects x (batch, dim, length) and weight (dim, kernel), got "
                                   f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if x.is_cuda:
        kernel = load_kernel()
        if kernel is not None:
            return kernel(x.flip(-1), weight, bias).flip(-1) if reverse else kernel(x, weight, bias)
    return _CausalConv1d.apply(x, weight, bias, bool(reverse))
