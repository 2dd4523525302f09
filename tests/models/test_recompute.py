"""Blockwise recomputation (models/recompute.py) against plain autograd."""

import pytest
import torch
from torch import nn

from stabledub_core.models.mamba_transformer_2d import MambaSettings, SpatialMambaTransformerBlock
from stabledub_core.models.recompute import recompute_in_blocks


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))


def _grads(out: torch.Tensor, inputs) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out.square().sum() + out.sum(), inputs, allow_unused=True))


@pytest.mark.parametrize("rows", [1, 3, 5, 100])  # 5 rows: blocks of 3 + 2, one block, one row per block
def test_gradients_equal_plain_autograd(rows):
    model = _mlp()
    x = torch.randn(5, 4, 6, requires_grad=True)
    params = list(model.parameters())
    plain = _grads(model(x), [x, *params])
    out = recompute_in_blocks(model, x, rows, params)
    torch.testing.assert_close(out, model(x))
    for ours, theirs in zip(_grads(out, [x, *params]), plain):
        torch.testing.assert_close(ours, theirs)


def test_parameters_get_gradients_when_the_input_needs_none():
    model = _mlp()
    x = torch.randn(5, 6)
    out = recompute_in_blocks(model, x, 2, list(model.parameters()))
    assert out.requires_grad
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_frozen_parameters_get_none_and_the_rest_still_flow():
    model = _mlp()
    model[1].weight.requires_grad_(False)
    x = torch.randn(5, 6, requires_grad=True)
    recompute_in_blocks(model, x, 2, list(model.parameters())).sum().backward()
    assert model[1].weight.grad is None
    assert model[3].weight.grad is not None and x.grad is not None


def test_without_autograd_it_is_one_plain_call():
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return t * 2

    with torch.no_grad():
        recompute_in_blocks(fn, torch.ones(7, 2, requires_grad=True), 2, [])
    assert calls == [7]
    with pytest.raises(ValueError, match="rows per block"):
        recompute_in_blocks(fn, torch.ones(7, 2), 0, [])


def test_only_the_input_is_kept_for_backward():
    model = _mlp()
    x = torch.randn(5, 6, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.shape) or t, lambda t: t):
        recompute_in_blocks(model, x, 2, list(model.parameters()))
    # the input and the parameters (which exist anyway): no activation of the MLP
    assert sorted(kept) == sorted([x.shape] + [p.shape for p in model.parameters()])


def test_autocast_is_reentered_in_the_backward_pass():
    model = _mlp()
    x = torch.randn(5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = recompute_in_blocks(model, x, 2, list(model.parameters()))
        reference = model(x)
    assert out.dtype == torch.bfloat16
    ours = torch.autograd.grad(out.float().sum(), x)[0]
    theirs = torch.autograd.grad(reference.float().sum(), x)[0]
    torch.testing.assert_close(ours, theirs)  # bf16 recompute gives bf16's gradient, not fp32's


def test_recomputed_feed_forward_gives_the_same_block_gradients(monkeypatch):
    import stabledub_core.models.mamba_transformer_2d as blocks_module

    monkeypatch.setattr(blocks_module, "FEED_FORWARD_TOKENS", 5)  # 24 tokens: blocks of 5 and a last of 4
    torch.manual_seed(1)
    blocks = [SpatialMambaTransformerBlock(32, 4, 16, MambaSettings(d_state=4), recompute_feed_forward=flag)
              for flag in (False, True)]
    blocks[1].load_state_dict(blocks[0].state_dict())
    x = torch.randn(2, 12, 32)
    audio = torch.randn(2, 3, 16)
    grads = []
    for block in blocks:
        x_in = x.clone().requires_grad_()
        block(x_in, audio, 3, 4).square().sum().backward()
        grads.append([x_in.grad] + [p.grad for p in block.parameters()])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)
