"""The causal depthwise convolution (ops/causal_conv.py) against its reference and its dispatch."""

import sys

import pytest
import torch

import stabledub_core.ops.causal_conv as conv_module
from stabledub_core.ops import causal_conv1d, causal_conv1d_ref


@pytest.mark.parametrize("shape", [(2, 6, 9), (3, 5, 16), (1, 4, 2), (2, 3, 1)])  # L > K, L = 16, L < K, L = 1
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_backward_match_the_reference(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(shape[1], 4, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True) if bias else None
    inputs = [t for t in (x, weight, b) if t is not None]
    grad = torch.randn(shape)
    ours = causal_conv1d(x, weight, b)
    theirs = causal_conv1d_ref(x, weight, b)
    torch.testing.assert_close(ours, theirs)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(g_ours, g_theirs)


def test_it_is_causal():
    x = torch.zeros(1, 3, 10)
    x[..., 6] = 1.0
    out = causal_conv1d(x, torch.ones(3, 4))
    assert out[..., :6].abs().sum() == 0 and (out[..., 6:10] == 1).all()


def test_gradcheck_double():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv_module._CausalConv1d.apply, (x, weight, bias))


def test_only_the_needed_gradients_are_computed():
    x = torch.randn(2, 3, 7)
    weight = torch.randn(3, 4, requires_grad=True)
    causal_conv1d(x, weight, torch.zeros(3)).sum().backward()
    torch.testing.assert_close(weight.grad, torch.stack([x[..., :7 - s].sum((0, 2)) for s in (3, 2, 1, 0)], 1))


def test_bad_shapes_get_a_clear_error():
    with pytest.raises(ValueError, match=r"weight \(dim, kernel\)"):
        causal_conv1d(torch.zeros(2, 3, 5), torch.zeros(3, 1, 4))


@pytest.fixture
def fresh_loader():
    conv_module.load_kernel.cache_clear()
    yield
    conv_module.load_kernel.cache_clear()


@pytest.mark.parametrize("error", [ImportError("no causal_conv1d"), OSError("libcudart missing"),
                                   RuntimeError("driver too old")])
def test_a_missing_kernel_means_pytorch(fresh_loader, monkeypatch, error):
    def failing():
        raise error

    monkeypatch.setattr(conv_module, "_import_kernel", failing)
    assert conv_module.load_kernel() is None


def test_a_missing_package_via_the_import_system(fresh_loader, monkeypatch):
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    assert conv_module.load_kernel() is None


def test_other_import_errors_propagate(fresh_loader, monkeypatch):
    def broken():
        raise ValueError("bug inside causal_conv1d")

    monkeypatch.setattr(conv_module, "_import_kernel", broken)
    with pytest.raises(ValueError, match="bug inside"):
        conv_module.load_kernel()


def test_cpu_tensors_never_call_the_kernel(fresh_loader, monkeypatch):
    calls = []
    monkeypatch.setattr(conv_module, "_import_kernel", lambda: lambda *a: calls.append(a))
    causal_conv1d(torch.randn(1, 2, 5), torch.randn(2, 4))
    assert not calls
