"""The Mamba mixer's training step with a hand-written backward pass, for the compiled CPU scan.

The generic recomputation (:func:`~stabledub_core.models.recompute.recompute_in_blocks`) runs the mixer three times
per training step: once without autograd, once more with autograd in the backward pass to rebuild the graph, and
then that graph's backward, in which the scan recomputes its states once again. The scan's forward pass is the
costliest part of the mixer on a CPU, and the rebuilt graph needs it only for ``out_proj``'s weight gradient.

This module does what mamba_ssm's ``mamba_inner_fn`` does on CUDA: the forward pass (no autograd, block by block)
keeps the scan's chunk states (1/64 of a (B, d_inner, L, N) tensor, nothing for sequences of 64 tokens or fewer)
besides the mixer's input; the backward pass rebuilds only the layers before the scan with autograd, gets
``out_proj``'s input gradient directly (``grad_out @ W_out``), runs the scan's backward kernel from the saved states
(which also gives back the scan's output, for ``out_proj``'s weight gradient), and backpropagates the scan's input
gradients through the rebuilt layers. So the scan runs forward twice per step instead of three times, and
``out_proj`` is not run again.

Used by :class:`~stabledub_core.models.mamba.Mamba` when it trains with ``recompute_inner`` and ``selective_scan``
runs the compiled CPU kernel (:func:`fused_backward_applies`); elsewhere the generic recomputation runs.
"""

from __future__ import annotations

import torch

from stabledub_core.ops.selective_scan import ScanBackend, select_backend
from stabledub_core.ops.selective_scan_cpu import chunk_states_shape, scan_gradients, scan_with_states
from stabledub_core.models.recompute import autocast_state


def fused_backward_applies(hidden_states: torch.Tensor, d_state: int) -> bool:
    """Whether the selective scan runs the compiled CPU kernel for these inputs (the only scan with
    ``scan_with_states`` / ``scan_gradients``)."""
    return select_backend(hidden_states.device, hidden_states.dtype, d_state) is ScanBackend.CPU_KERNEL


class _MambaInnerRecompute(torch.autograd.Function):
    """``mixer(x)`` block by block, with the backward pass described in the module docstring."""

    @staticmethod
    def forward(ctx, mixer, rows: int, hidden_states: torch.Tensor, *params: torch.Tensor):
        ctx.mixer, ctx.rows = mixer, rows
        ctx.autocast = autocast_state(hidden_states.device.type)
        directions = mixer.directions()
        batch, length, _ = hidden_states.shape
        # Per direction, the scan's chunk states of every sequence, in one buffer allocated up front: as many small
        # tensors between each block's freed temporaries they would keep much more heap resident than they hold.
        shape = chunk_states_shape(batch, mixer.d_inner, length, mixer.d_state)
        states = [hidden_states.new_empty(shape, dtype=torch.float32) for _ in directions]
        out = None
        for start in range(0, batch, rows):
            x, z = mixer.in_projections(hidden_states[start:start + rows])
            outputs = []
            for direction, kept in zip(directions, states):
                y, _ = scan_with_states(*mixer.scan_inputs(x, z, direction), delta_softplus=True,
                                        reverse=direction.reverse, states=kept[start:start + rows])
                outputs.append(y)
            block = mixer.out_proj(mixer.combine(outputs).transpose(1, 2))  # (rows, L, D)
            if out is None:
                out = block.new_empty((hidden_states.shape[0], *block.shape[1:]))
            out[start:start + rows] = block
        ctx.states = states
        # The parameters are the module's own (the backward pass looks out_proj's up among them), so they stay on ctx
        # rather than among the saved tensors, which activation checkpointing hands back as other objects.
        ctx.params = params
        ctx.save_for_backward(hidden_states)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (hidden_states,), params = ctx.saved_tensors, ctx.params
        mixer, directions = ctx.mixer, ctx.mixer.directions()
        need_x = ctx.needs_input_grad[2]
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[3:]) if need]
        grad_x = torch.empty_like(hidden_states) if need_x else None
        totals = {id(p): torch.zeros_like(p) for p in wanted}
        out_weight, out_bias = mixer.out_proj.weight, mixer.out_proj.bias
        # d combine / d output of each direction: 1/2 when the two directions are averaged
        scale = 0.5 if len(directions) == 2 and mixer.divide_out else 1.0
        for start in range(0, hidden_states.shape[0], ctx.rows):
            stop = start + ctx.rows
            block = hidden_states[start:stop].detach().requires_grad_(need_x)
            g = grad_out[start:stop]  # (rows, L, D)
            with torch.enable_grad(), torch.autocast(hidden_states.device.type, **ctx.autocast):
                x, z = mixer.in_projections(block)
                inputs = [mixer.scan_inputs(x, z, direction) for direction in directions]
            g_y = (torch.matmul(g.to(out_weight.dtype), out_weight) * scale).transpose(1, 2)  # (rows, d_inner, L)
            outputs, graph_outputs, graph_grads = [], [], []
            for direction, scan_args, kept in zip(directions, inputs, ctx.states):
                grads, y = scan_gradients(*(t.detach() for t in scan_args), True, kept[start:stop], g_y,
                                          reverse=direction.reverse)
                outputs.append(y)
                for tensor, grad in zip(scan_args, grads):
                    if tensor.requires_grad:
                        graph_outputs.append(tensor)
                        graph_grads.append(grad)
            y = mixer.combine(outputs)  # (rows, d_inner, L): out_proj's input, given back by the backward kernel
            if id(out_weight) in totals:
                totals[id(out_weight)] += g.flatten(0, 1).t().to(y.dtype) @ y.transpose(1, 2).flatten(0, 1)
            if out_bias is not None and id(out_bias) in totals:
                totals[id(out_bias)] += g.sum((0, 1)).to(out_bias.dtype)
            sources = ([block] if need_x else []) + wanted
            grads = torch.autograd.grad(graph_outputs, sources, graph_grads, allow_unused=True)
            if need_x:
                grad_x[start:stop] = grads[0]
                grads = grads[1:]
            for param, grad in zip(wanted, grads):
                if grad is not None:
                    totals[id(param)] += grad
        del ctx.states, ctx.params
        grad_params = iter([totals[id(p)] for p in wanted])
        return (None, None, grad_x, *(next(grad_params) if need else None for need in ctx.needs_input_grad[3:]))


def mamba_inner_recompute(mixer, hidden_states: torch.Tensor, rows: int) -> torch.Tensor:
    """``mixer`` (a :class:`~stabledub_core.models.mamba.Mamba`) on (B, L, D) tokens, ``rows`` sequences at a time,
    with the fused backward pass; only for training (something needs a gradient) on the compiled CPU scan."""
    params = [p for p in mixer.parameters() if p.requires_grad]
    return _MambaInnerRecompute.apply(mixer, rows, hidden_states, *params)
