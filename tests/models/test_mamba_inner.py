"""The Mamba mixer's fused backward pass (models/mamba_inner.py) gives the generic recomputation's gradients."""

import importlib

import pytest
import torch

from stabledub_core.models import mamba as mamba_module
from stabledub_core.models.mamba import Mamba

from helpers.scan_inputs import rel_error

cpu_module = importlib.import_module("stabledub_core.ops.selective_scan_cpu")
inner_module = importlib.import_module("stabledub_core.models.mamba_inner")

pytestmark = pytest.mark.skipif(cpu_module._compiler() is None, reason="no C compiler: the fused path never runs")


def _step(mixer, x, fused, freeze=()):
    """Output and gradients (input, then every parameter by name) of one forward + backward."""
    mixer.fused_backward = fused
    mixer.zero_grad(set_to_none=True)
    for name, param in mixer.named_parameters():
        param.requires_grad_(name not in freeze)
    leaf = x.detach().clone().requires_grad_(x.requires_grad)
    out = mixer(leaf)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = {name: p.grad for name, p in mixer.named_parameters() if p.grad is not None}
    return out.detach(), leaf.grad, grads


@pytest.mark.parametrize("options,length,freeze,input_grad", [
    (dict(), 150, (), True),                                         # several chunks of 64, several blocks
    (dict(bidirectional=False), 40, (), True),
    (dict(divide_out=False, bias=True), 70, ("A_log", "in_proj.bias"), True),
    (dict(), 20, (), False),                                         # only the parameters need gradients
])
def test_fused_equals_generic(monkeypatch, options, length, freeze, input_grad):
    assert cpu_module.load_kernel() is not None
    monkeypatch.setattr(mamba_module, "RECOMPUTE_TOKENS", 2 * length)  # 2 sequences a block: several blocks
    calls = []
    real = inner_module.scan_gradients
    monkeypatch.setattr(inner_module, "scan_gradients", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    mixer = Mamba(d_model=16, d_state=8, **options)
    with torch.no_grad():  # non-trivial values in the zero/one-initialised parameters
        for param in mixer.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    x = torch.randn(5, length, 16).requires_grad_(input_grad)
    out_f, gx_f, grads_f = _step(mixer, x, fused=True, freeze=freeze)
    assert calls, "the fused backward pass did not run"
    out_g, gx_g, grads_g = _step(mixer, x, fused=False, freeze=freeze)
    assert rel_error(out_f, out_g) <= 1e-5
    if input_grad:
        assert rel_error(gx_f, gx_g) <= 1e-4
    else:
        assert gx_f is None and gx_g is None
    assert grads_f.keys() == grads_g.keys() and not set(freeze) & grads_f.keys()
    for name in grads_f:
        assert rel_error(grads_f[name], grads_g[name]) <= 1e-4, name


def test_inference_and_other_backends_do_not_use_it(monkeypatch):
    monkeypatch.setattr(inner_module, "_MambaInnerRecompute", None)  # any use would fail
    mixer = Mamba(d_model=16, d_state=8)
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        mixer(x)
    monkeypatch.setattr(inner_module, "select_backend", lambda *args: inner_module.ScanBackend.PYTORCH)
    mixer(x.requires_grad_()).sum().backward()
