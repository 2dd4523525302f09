"""The causal depthwise convolution (ops/causal_conv.py) against its reference and its dispatch."""

import sys

import pytest
import torch

import stabledub_core.ops.causal_conv as conv_module
from stabledub_core.ops import causal_conv1d, causal_conv1d_ref


@pytest.mark.parametrize("shape", [(2, 6, 9), (3, 5, 16), (1, 4, 2), (2, 3, 1)])  # L > K, L = 16, L < K, L = 1
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_and_backward_match_the_reference(shape, bias, reverse):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(shape[1], 4, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True) if bias else None
    inputs = [t for t in (x, weight, b) if t is not None]
    grad = torch.randn(shape)
    ours = causal_conv1d(x, weight, b, reverse=reverse)
    theirs = causal_conv1d_ref(x, weight, b, reverse)
    torch.testing.assert_close(ours, theirs)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(g_ours, g_theirs)


def test_it_is_causal():
    x = torch.zeros(1, 3, 10)
    x[..., 6] = 1.0
    out = causal_conv1d(x, torch.ones(3, 4))
    assert out[..., :6].abs().sum() == 0 and (out[..., 6:10] == 1).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_channels_innermost_input_keeps_its_layout(reverse):
    """A transposed (B, L, D) input takes the shifted multiply-add path, returns that layout, and matches F.conv1d."""
    torch.manual_seed(3)
    x = torch.randn(2, 9, 6).transpose(1, 2).requires_grad_()  # (B, D=6, L=9), channels innermost
    weight = torch.randn(6, 4, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    grad = torch.randn(2, 6, 9)
    ours = causal_conv1d(x, weight, bias, reverse=reverse)
    assert ours.stride(1) == 1
    theirs = causal_conv1d_ref(x.contiguous(), weight, bias, reverse)
    torch.testing.assert_close(ours, theirs)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, (x, weight, bias), grad),
                                torch.autograd.grad(theirs, (x, weight, bias), grad)):
        torch.testing.assert_close(g_ours, g_theirs)


def test_reverse_is_the_flipped_convolution():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 11)
    weight, bias = torch.randn(5, 4), torch.randn(5)
    flipped = causal_conv1d_ref(x.flip(-1), weight, bias).flip(-1)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, reverse=True), flipped)
    torch.testing.assert_close(causal_conv1d_ref(x, weight, bias, reverse=True), flipped)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_double(reverse):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: conv_module._CausalConv1d.apply(*t, reverse), (x, weight, bias))


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
