"""Parity of the fused CPU selective scan (numba) with the step-by-step oracle, its exp, and its dispatch.

Tolerances and cases are those of the chunked scan's tests (fp32 forward <= 1e-5, backward <= 1e-4).
"""

import importlib
import math

import numpy as np
import pytest
import torch

from stabledub_core.ops import selective_scan, selective_scan_fused_cpu, selective_scan_ref
from stabledub_core.ops.selective_scan import SelectiveScanInputError
from test_selective_scan import BWD_TOL, CASES, FWD_TOL, _split, make_inputs, rel_error

scan_module = importlib.import_module("stabledub_core.ops.selective_scan")
cpu_module = importlib.import_module("stabledub_core.ops.selective_scan_cpu")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['shape']}-{'+'.join(c['optional'])}")
@pytest.mark.parametrize("threads", [1, 3])
def test_forward_and_backward_match_oracle(case, threads, monkeypatch):
    monkeypatch.setattr(cpu_module, "MIN_RANGE_CHANNELS", 1)  # several channel ranges even for a few channels
    batch, dim, length, d_state, groups = case["shape"]
    args, kwargs = _split(make_inputs(batch, dim, length, d_state, groups), case["optional"])
    leaves = [t.requires_grad_(True) for t in list(args) + list(kwargs.values())]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # one channel range per thread, each with partial B/C gradients
    try:
        out, last = selective_scan_fused_cpu(*args, **kwargs, delta_softplus=case["softplus"], return_last_state=True)
        out_ref, last_ref = selective_scan_ref(*args, **kwargs, delta_softplus=case["softplus"],
                                               return_last_state=True)
        assert out.shape == (batch, dim, length) and last.shape == (batch, dim, d_state)
        assert rel_error(out, out_ref) <= FWD_TOL and rel_error(last, last_ref) <= FWD_TOL
        gen = torch.Generator().manual_seed(1)
        g_out, g_last = torch.randn(out.shape, generator=gen), torch.randn(last.shape, generator=gen)
        grads = torch.autograd.grad((out * g_out).sum() + (last * g_last).sum(), leaves)
        grads_ref = torch.autograd.grad((out_ref * g_out).sum() + (last_ref * g_last).sum(), leaves)
    finally:
        torch.set_num_threads(previous)
    for name, g, g_ref in zip(["u", "delta", "A", "B", "C"] + list(kwargs), grads, grads_ref):
        assert g.shape == g_ref.shape and rel_error(g, g_ref) <= BWD_TOL, name


def test_output_gradient_only_strong_decays_and_no_grad():
    inputs = make_inputs(2, 8, 300, 4)
    inputs["delta"] = inputs["delta"] * 8 + 2  # steps up to ~10: decays down to exp(-20) and below
    args, kwargs = _split(inputs, ("D", "z", "delta_bias"))
    leaves = [t.requires_grad_(True) for t in list(args) + list(kwargs.values())]
    out = selective_scan_fused_cpu(*args, **kwargs, delta_softplus=True)
    out_ref = selective_scan_ref(*args, **kwargs, delta_softplus=True)
    assert rel_error(out, out_ref) <= FWD_TOL
    grads = torch.autograd.grad(out.square().sum(), leaves)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), leaves)
    assert all(rel_error(g, r) <= BWD_TOL for g, r in zip(grads, grads_ref))
    with torch.no_grad():
        assert not selective_scan_fused_cpu(*args, **kwargs, delta_softplus=True).requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_fp32(dtype):
    args, kwargs = _split(make_inputs(2, 8, 20, 4, dtype=dtype), ("D", "z", "delta_bias"))
    out = selective_scan_fused_cpu(*args, **kwargs, delta_softplus=True)
    ref = selective_scan_ref(*[a.float() for a in args], **{k: v.float() for k, v in kwargs.items()},
                             delta_softplus=True)
    assert out.dtype == dtype and rel_error(out.float(), ref) < 1e-2


def test_gradcheck_double():
    args, kwargs = _split(make_inputs(1, 3, 6, 2, groups=None, dtype=torch.float64), ("D", "z", "delta_bias"))
    leaves = [t.requires_grad_(True) for t in list(args) + list(kwargs.values())]
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    assert torch.autograd.gradcheck(
        lambda *t: selective_scan_fused_cpu(*t[:5], **dict(zip(names[5:], t[5:])), delta_softplus=True), leaves)


def test_decay_exp_accuracy():
    x = -np.concatenate([np.linspace(0, 1, 10001), np.geomspace(1, 87, 10001)]).astype(np.float32)
    out = cpu_module.decay_exp_array(x)
    exact = np.exp(x.astype(np.float64))
    error = np.abs(out - exact) / exact
    # x log2(e) is rounded to fp32: the error grows with |x| (decays that small barely touch the state)
    assert error[x >= -1].max() < 3e-7 and error[x >= -20].max() < 1.2e-6 and error.max() < 5e-6


def test_errors_and_dispatch(monkeypatch):
    args, kwargs = _split(make_inputs(1, 4, 5, 2), ())
    with pytest.raises(SelectiveScanInputError, match="CPU tensors"):
        selective_scan_fused_cpu(*[a.to("meta") for a in args])
    assert scan_module.select_backend(torch.device("cpu")) is scan_module.ScanBackend.FUSED_CPU
    assert torch.equal(selective_scan(*args), selective_scan_fused_cpu(*args))
    monkeypatch.setattr(scan_module, "fused_scan_available", lambda: False)  # numba missing: the chunked scan
    assert scan_module.select_backend(torch.device("cpu")) is scan_module.ScanBackend.PYTORCH
    assert rel_error(selective_scan(*args), selective_scan_ref(*args)) <= FWD_TOL
    assert math.isfinite(selective_scan(*args).sum().item())
