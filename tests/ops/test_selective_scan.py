"""Parity of the chunked selective scan with the step-by-step oracle, gradients, and the backend dispatch.

Relative error is max|a - b| / max|b| with b the oracle's value (fp32 forward <= 1e-5, backward <= 1e-4).
"""

import importlib
import sys

import pytest
import torch

from helpers.scan_inputs import BWD_TOL, FWD_TOL, make_inputs, rel_error
from stabledub_core.ops import selective_scan, selective_scan_chunked, selective_scan_ref

# The package re-exports the function under the module's name, so fetch the module itself.
scan_module = importlib.import_module("stabledub_core.ops.selective_scan")

CASES = [
    # shape = (batch, dim, length, d_state, groups or None for 3-d B/C); chunk None = automatic tiling
    dict(shape=(2, 8, 37, 4, None), chunk=5, optional=("D", "z", "delta_bias"), softplus=True),
    dict(shape=(2, 8, 37, 4, None), chunk=None, optional=(), softplus=False),
    dict(shape=(1, 12, 16, 3, 3), chunk=16, optional=("D",), softplus=True),
    dict(shape=(3, 8, 23, 5, 2), chunk=7, optional=("z",), softplus=False),
    dict(shape=(2, 6, 1, 4, None), chunk=3, optional=("D", "z", "delta_bias"), softplus=True),
    dict(shape=(2, 4, 50, 2, 4), chunk=1, optional=("delta_bias", "z"), softplus=True),
]


def _split(inputs, optional):
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    kwargs = {k: inputs[k] for k in optional}
    return args, kwargs


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['shape']}-chunk{c['chunk']}-{'+'.join(c['optional'])}")
def test_forward_and_backward_match_oracle(case):
    batch, dim, length, d_state, groups = case["shape"]
    inputs = make_inputs(batch, dim, length, d_state, groups)
    args, kwargs = _split(inputs, case["optional"])
    for t in list(args) + list(kwargs.values()):
        t.requires_grad_(True)
    leaves = list(args) + list(kwargs.values())
    originals = [t.detach().clone() for t in leaves]

    out, last = selective_scan_chunked(*args, **kwargs, delta_softplus=case["softplus"], return_last_state=True,
                                       chunk_size=case["chunk"])
    out_ref, last_ref = selective_scan_ref(*args, **kwargs, delta_softplus=case["softplus"], return_last_state=True)
    assert out.shape == (batch, dim, length) and last.shape == (batch, dim, d_state)
    assert rel_error(out, out_ref) <= FWD_TOL
    assert rel_error(last, last_ref) <= FWD_TOL

    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=gen)
    g_last = torch.randn(last.shape, generator=gen)
    grads = torch.autograd.grad((out * g_out).sum() + (last * g_last).sum(), leaves)
    grads_ref = torch.autograd.grad((out_ref * g_out).sum() + (last_ref * g_last).sum(), leaves)
    names = ["u", "delta", "A", "B", "C"] + list(kwargs)
    assert all(torch.equal(t, o) for t, o in zip(leaves, originals)), "the scan modified an input"
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_error(g, g_ref) <= BWD_TOL, f"gradient of {name}: rel. error {rel_error(g, g_ref):.2e}"


@pytest.mark.parametrize("groups", [None, 2])
def test_channels_last_inputs_give_the_same_result(groups):
    # Mamba hands the scan transposed (B, L, D) projections (channels innermost in memory) and gets such gradients.
    inputs = make_inputs(batch=3, dim=8, length=19, groups=groups)
    args, kwargs = _split(inputs, ("D", "z", "delta_bias"))
    dense = selective_scan_chunked(*args, **kwargs, delta_softplus=True, chunk_size=6)

    def channels_last(t):
        return t.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strides (L * D, 1, D)

    u, delta = (channels_last(t).requires_grad_() for t in args[:2])
    z = channels_last(kwargs["z"]).requires_grad_()
    strided = selective_scan_chunked(u, delta, *args[2:], D=kwargs["D"], z=z, delta_bias=kwargs["delta_bias"],
                                     delta_softplus=True, chunk_size=6)
    assert u.stride(1) == 1 and torch.equal(strided, dense)
    grad = channels_last(torch.randn_like(dense))
    strided.backward(grad)
    leaves = [t.detach().clone().requires_grad_() for t in args[:2]] + [kwargs["z"].detach().clone().requires_grad_()]
    selective_scan_chunked(*leaves[:2], *args[2:], D=kwargs["D"], z=leaves[2], delta_bias=kwargs["delta_bias"],
                           delta_softplus=True, chunk_size=6).backward(grad.contiguous())
    for ours, theirs in zip((u, delta, z), leaves):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_batch_blocks_with_automatic_chunks(monkeypatch):
    """A tiny chunk budget forces blocks of one batch element and several chunks per sequence."""
    monkeypatch.setattr(scan_module, "DEFAULT_CHUNK_ELEMENTS", 64)
    plan = scan_module._ChunkPlan.create(batch=3, dim=8, d_state=4, length=37)
    assert (plan.chunk, plan.batch_block) == (16, 1)
    inputs = make_inputs(batch=3, groups=2)
    args, kwargs = _split(inputs, ("D", "z", "delta_bias"))
    leaves = [t.requires_grad_(True) for t in args + list(kwargs.values())]
    out, last = selective_scan_chunked(*args, **kwargs, delta_softplus=True, return_last_state=True)
    out_ref, last_ref = selective_scan_ref(*args, **kwargs, delta_softplus=True, return_last_state=True)
    assert rel_error(out, out_ref) <= FWD_TOL and rel_error(last, last_ref) <= FWD_TOL
    grads = torch.autograd.grad(out.sum() + last.sum(), leaves)
    grads_ref = torch.autograd.grad(out_ref.sum() + last_ref.sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        assert rel_error(g, g_ref) <= BWD_TOL


def test_thread_count_is_restored():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args, _ = _split(make_inputs(), ())
        selective_scan_chunked(*args, chunk_size=8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_output_gradient_only_and_no_grad():
    inputs = make_inputs()
    args, kwargs = _split(inputs, ("D", "z"))
    with torch.no_grad():
        out = selective_scan_chunked(*args, **kwargs, chunk_size=4)
    assert rel_error(out, selective_scan_ref(*args, **kwargs)) <= FWD_TOL

    u = inputs["u"].clone().requires_grad_(True)
    out = selective_scan_chunked(u, *args[1:], chunk_size=4)
    (g_u,) = torch.autograd.grad(out.sum(), u)
    u_ref = inputs["u"].clone().requires_grad_(True)
    (g_u_ref,) = torch.autograd.grad(selective_scan_ref(u_ref, *args[1:]).sum(), u_ref)
    assert rel_error(g_u, g_u_ref) <= BWD_TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_fp32(dtype):
    inputs = make_inputs(dtype=dtype, groups=2)
    args, kwargs = _split(inputs, ("D", "z", "delta_bias"))
    for t in args + list(kwargs.values()):
        t.requires_grad_(True)
    out, last = selective_scan_chunked(*args, **kwargs, delta_softplus=True, return_last_state=True, chunk_size=8)
    out_ref, last_ref = selective_scan_ref(*args, **kwargs, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    # Both compute in fp32 and round the output once to the input dtype.
    assert rel_error(out, out_ref) <= 1e-2
    assert rel_error(last, last_ref) <= FWD_TOL
    grads = torch.autograd.grad(out.float().sum(), args)
    assert [g.dtype for g in grads] == [t.dtype for t in args]


def test_gradcheck_double():
    inputs = make_inputs(batch=1, dim=4, length=6, d_state=2, groups=2, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[k].requires_grad_(True) for k in names]

    def fn(*tensors):
        kwargs = dict(zip(names[5:], tensors[5:]))
        return selective_scan_chunked(*tensors[:5], **kwargs, delta_softplus=True, return_last_state=True,
                                      chunk_size=4)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(A=torch.zeros(5, 4)), "A must be"),
    (dict(B=torch.zeros(2, 3, 4, 37)), "B must be"),
    (dict(C=torch.zeros(2, 2, 4, 37)), "same number of groups"),
    (dict(D=torch.zeros(3)), "D must be"),
    (dict(z=torch.zeros(2, 8, 36)), "z must have"),
    (dict(u=torch.zeros(2, 8, 0), delta=torch.zeros(2, 8, 0)), "non-empty"),
])
def test_bad_shapes_raise_clear_errors(bad, message):
    inputs = make_inputs()
    inputs.update(bad)
    args, kwargs = _split(inputs, [k for k in ("D", "z") if k in bad])
    with pytest.raises(ValueError, match=message):
        selective_scan_chunked(*args, **kwargs)


def test_bad_chunk_size():
    args, _ = _split(make_inputs(), ())
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(*args, chunk_size=0)


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_loader():
    """Clears the once-per-process import cache before and after a test."""
    scan_module.load_mamba_scan.cache_clear()
    yield
    scan_module.load_mamba_scan.cache_clear()


@pytest.mark.parametrize("error", [ImportError("no module named mamba_ssm"), OSError("libcudart.so.12 missing"),
                                   RuntimeError("CUDA driver too old")])
def test_missing_mamba_picks_pytorch(fresh_loader, monkeypatch, error):
    def failing_import():
        raise error

    monkeypatch.setattr(scan_module, "_import_mamba_scan", failing_import)
    assert scan_module.load_mamba_scan() is None
    assert scan_module.select_backend(torch.device("cuda")) is scan_module.ScanBackend.PYTORCH
    assert scan_module.select_backend(torch.device("cpu")) is not scan_module.ScanBackend.MAMBA_CUDA


def test_missing_package_via_import_system(fresh_loader, monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm...` raise ImportError
    assert scan_module.load_mamba_scan() is None


def test_other_import_errors_propagate(fresh_loader, monkeypatch):
    def broken_import():
        raise ValueError("bug inside mamba_ssm")

    monkeypatch.setattr(scan_module, "_import_mamba_scan", broken_import)
    with pytest.raises(ValueError, match="bug inside mamba_ssm"):
        scan_module.select_backend(torch.device("cuda"))


def test_import_is_tried_once(fresh_loader, monkeypatch):
    calls = []

    def counting_import():
        calls.append(1)
        raise ImportError("absent")

    monkeypatch.setattr(scan_module, "_import_mamba_scan", counting_import)
    for _ in range(3):
        scan_module.select_backend(torch.device("cuda"))
    assert len(calls) == 1


def test_cuda_tensors_use_kernel_and_cpu_tensors_do_not(fresh_loader, monkeypatch):
    calls = []

    def fake_kernel(*args, **kwargs):
        calls.append(kwargs)
        return "kernel result"

    monkeypatch.setattr(scan_module, "_import_mamba_scan", lambda: fake_kernel)
    assert scan_module.select_backend(torch.device("cuda", 0)) is scan_module.ScanBackend.MAMBA_CUDA

    inputs = make_inputs()
    args, kwargs = _split(inputs, ("D", "z"))
    out = selective_scan(*args, **kwargs, delta_softplus=True)  # CPU tensors: a CPU implementation
    assert not calls
    assert rel_error(out, selective_scan_ref(*args, **kwargs, delta_softplus=True)) <= FWD_TOL

    monkeypatch.setattr(scan_module, "select_backend", lambda *args: scan_module.ScanBackend.MAMBA_CUDA)
    assert selective_scan(*args, **kwargs, delta_softplus=True, return_last_state=True) == "kernel result"
    (call,) = calls
    assert call["D"] is kwargs["D"] and call["z"] is kwargs["z"] and call["delta_bias"] is None
    assert call["delta_softplus"] is True and call["return_last_state"] is True
