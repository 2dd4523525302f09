"""The Mamba mixer: mamba_ssm-compatible parameters and the explicit step-by-step recurrence."""

import math

import pytest
import torch
import torch.nn.functional as F

from stabledub_core.models.mamba import Mamba


def _mamba_ssm_table(d_model, d_state=16, d_conv=4, expand=2):
    """Expected (name -> shape) of mamba_ssm.modules.mamba_simple.Mamba(d_model, ...) with default bias flags,
    written from its source: in_proj (no bias), conv1d (depthwise, bias), x_proj (no bias), dt_proj (bias),
    A_log, D, out_proj (no bias)."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def _vim_v2_extra(d_model, d_state=16, d_conv=4, expand=2):
    """The backward-direction parameters of Vim's bimamba v2 (same shapes as the forward ones)."""
    table = _mamba_ssm_table(d_model, d_state, d_conv, expand)
    return {"conv1d_b.weight": table["conv1d.weight"], "conv1d_b.bias": table["conv1d.bias"],
            "x_proj_b.weight": table["x_proj.weight"], "dt_proj_b.weight": table["dt_proj.weight"],
            "dt_proj_b.bias": table["dt_proj.bias"], "A_b_log": table["A_log"], "D_b": table["D"]}


def _shapes(module):
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


@pytest.mark.parametrize("d_model,d_state", [(64, 16), (100, 8)])
def test_unidirectional_parameters_equal_mamba_ssm(d_model, d_state):
    assert _shapes(Mamba(d_model, d_state=d_state, bidirectional=False)) == _mamba_ssm_table(d_model, d_state)


def test_bidirectional_parameters_equal_vim_v2():
    expected = {**_mamba_ssm_table(48), **_vim_v2_extra(48)}
    assert _shapes(Mamba(48)) == expected


def test_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64, d_state=16, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4)
    for suffix in ("", "_b"):
        a_log = getattr(m, "A_log" if not suffix else "A_b_log")
        assert a_log.dtype == torch.float32 and a_log._no_weight_decay
        torch.testing.assert_close(a_log, torch.log(torch.arange(1, 17.0)).expand(128, 16))
        d = getattr(m, "D" + suffix)
        assert d.dtype == torch.float32 and d._no_weight_decay and torch.equal(d, torch.ones(128))
        dt_proj = getattr(m, "dt_proj" + suffix)
        std = m.dt_rank**-0.5
        assert dt_proj.weight.abs().max() <= std
        assert dt_proj.bias._no_reinit
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    const = Mamba(32, dt_init="constant", dt_scale=2.0, bidirectional=False)
    assert torch.allclose(const.dt_proj.weight, torch.full_like(const.dt_proj.weight, 2.0 * const.dt_rank**-0.5))
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(32, dt_init="xavier")


def _direction_recurrence(xz, conv_w, conv_b, x_proj_w, dt_w, dt_b, a_log, d, dt_rank, d_state):
    """One direction, token by token: causal sliding-window conv, then h_t = exp(dt A) h_{t-1} + dt B_t x_t,
    y_t = C_t . h_t + D x_t, gated by silu(z_t). xz: (B, L, 2 * d_inner). Returns (B, L, d_inner)."""
    batch, length, _ = xz.shape
    x_all, z_all = xz.chunk(2, dim=-1)
    d_conv = conv_w.shape[-1]
    a = -torch.exp(a_log)  # (d_inner, N)
    window = torch.zeros(batch, x_all.shape[-1], d_conv)  # last d_conv inputs, oldest first
    h = torch.zeros(batch, x_all.shape[-1], d_state)
    ys = []
    for t in range(length):
        window = torch.cat([window[:, :, 1:], x_all[:, t, :, None]], dim=-1)
        x = F.silu((window * conv_w[:, 0]).sum(-1) + conv_b)  # (B, d_inner)
        proj = x @ x_proj_w.T
        dt_low, b, c = proj[:, :dt_rank], proj[:, dt_rank:dt_rank + d_state], proj[:, dt_rank + d_state:]
        dt = F.softplus(dt_low @ dt_w.T + dt_b)  # (B, d_inner)
        h = torch.exp(dt[..., None] * a) * h + dt[..., None] * b[:, None, :] * x[..., None]
        y = (h * c[:, None, :]).sum(-1) + d * x
        ys.append(y * F.silu(z_all[:, t]))
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("bidirectional,divide_out", [(False, True), (True, True), (True, False)])
def test_mixer_equals_step_by_step_recurrence(bidirectional, divide_out):
    torch.manual_seed(1)
    m = Mamba(24, d_state=6, d_conv=3, bidirectional=bidirectional, divide_out=divide_out).double()
    with torch.no_grad():  # non-trivial values everywhere, including conv biases and D
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 11, 24, dtype=torch.float64)
    torch.set_default_dtype(torch.float64)
    try:
        xz = x @ m.in_proj.weight.T
        common = dict(dt_rank=m.dt_rank, d_state=m.d_state)
        y = _direction_recurrence(xz, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
                                  m.dt_proj.bias, m.A_log, m.D, **common)
        if bidirectional:
            y_b = _direction_recurrence(xz.flip(1), m.conv1d_b.weight, m.conv1d_b.bias, m.x_proj_b.weight,
                                        m.dt_proj_b.weight, m.dt_proj_b.bias, m.A_b_log, m.D_b, **common)
            y = y + y_b.flip(1)
            if divide_out:
                y = y / 2
        expected = y @ m.out_proj.weight.T
    finally:
        torch.set_default_dtype(torch.float32)
    # the scan runs in fp32 (as mamba_ssm's kernels do), hence fp32 tolerances
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


def test_backward_branch_sees_the_future():
    torch.manual_seed(2)
    x = torch.randn(1, 9, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change only the last token
    for bidirectional, first_changes in ((False, False), (True, True)):
        m = Mamba(16, d_state=4, bidirectional=bidirectional)
        changed = not torch.allclose(m(x)[:, 0], m(x2)[:, 0])
        assert changed == first_changes


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(batch, length, 16\)"):
        Mamba(16)(torch.zeros(2, 16))


@pytest.mark.parametrize("block_tokens", [16384, 14])  # one block; blocks of 2 sequences of 7 (and a last of 1)
def test_recomputing_the_mixer_gives_the_same_gradients(monkeypatch, block_tokens):
    import stabledub_core.models.mamba as mamba_module

    monkeypatch.setattr(mamba_module, "RECOMPUTE_TOKENS", block_tokens)
    torch.manual_seed(3)
    stored = Mamba(16, d_state=4, recompute_inner=False)
    recomputed = Mamba(16, d_state=4, recompute_inner=True)
    recomputed.load_state_dict(stored.state_dict())
    x = torch.randn(5, 7, 16)
    grads = []
    for m in (stored, recomputed):
        x_in = x.clone().requires_grad_()
        m(x_in).square().sum().backward()
        grads.append([x_in.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
