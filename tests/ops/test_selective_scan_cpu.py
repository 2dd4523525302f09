"""The compiled CPU selective scan: parity with the step-by-step oracle, threading, layouts, building and fallback.

Runs wherever a C compiler is found (then the kernel must build); skipped only on machines without one.
"""

import importlib
import logging
import subprocess

import pytest
import torch

from stabledub_core.ops import selective_scan, selective_scan_ref

from helpers.scan_inputs import BWD_TOL, FWD_TOL, make_inputs, rel_error

cpu_module = importlib.import_module("stabledub_core.ops.selective_scan_cpu")
scan_module = importlib.import_module("stabledub_core.ops.selective_scan")

pytestmark = pytest.mark.skipif(cpu_module._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture(scope="module")
def kernel():
    lib = cpu_module.load_kernel()
    assert lib is not None, "a C compiler is present but the CPU scan kernel did not build or load (see the log)"
    return lib


def _run_both(inputs, optional, softplus, chunk, grad_last=True):
    """Runs the kernel and the oracle on copies of ``inputs``; returns (outputs, gradients) of each."""
    results = []
    for fn in (lambda *a, **k: cpu_module.selective_scan_cpu(*a, **k, chunk_size=chunk), selective_scan_ref):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        args = [leaves[k] for k in ("u", "delta", "A", "B", "C")]
        kwargs = {k: leaves[k] for k in optional}
        out, last = fn(*args, **kwargs, delta_softplus=softplus, return_last_state=True)
        gen = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=gen)).sum()
        if grad_last:
            loss = loss + (last * torch.randn(last.shape, generator=gen)).sum()
        loss.backward()
        used = ["u", "delta", "A", "B", "C", *optional]
        results.append(((out, last), {k: leaves[k].grad for k in used}))
    return results


CASES = [
    # (batch, dim, length, d_state, groups), chunk, optional inputs, softplus
    ((2, 16, 37, 4, None), 5, ("D", "z", "delta_bias"), True),    # several chunks, whole tiles
    ((3, 13, 70, 16, None), 64, ("D", "z", "delta_bias"), True),  # a short tile at the end of the channels
    ((2, 24, 23, 5, 3), 7, ("z",), False),                         # groups of 8 channels, no softplus
    ((1, 12, 16, 3, 3), 4, ("D",), True),                          # groups of 4: every tile is short
    ((2, 8, 1, 4, None), 64, ("D", "z", "delta_bias"), True),     # a single position
    ((4, 9, 130, 64, None), 32, ("delta_bias",), True),           # the largest state the kernel holds
]


@pytest.mark.parametrize("shape,chunk,optional,softplus", CASES, ids=[str(c[0]) for c in CASES])
def test_matches_oracle(kernel, shape, chunk, optional, softplus):
    batch, dim, length, d_state, groups = shape
    inputs = make_inputs(batch, dim, length, d_state, groups)
    (ours, grads), (ref, ref_grads) = _run_both(inputs, optional, softplus, chunk)
    assert ours[0].shape == ref[0].shape and ours[1].shape == ref[1].shape
    assert rel_error(ours[0], ref[0]) <= FWD_TOL
    assert rel_error(ours[1], ref[1]) <= FWD_TOL
    for name in grads:
        assert grads[name].shape == ref_grads[name].shape, name
        assert rel_error(grads[name], ref_grads[name]) <= BWD_TOL, name


@pytest.mark.parametrize("backend", ["kernel", "flipped"])
def test_reverse_is_the_flipped_scan(kernel, monkeypatch, backend):
    """reverse=True equals scanning the flipped inputs and flipping the output back, on the kernel (natively) and on
    the pure-PyTorch scan (through flipped copies); gradients too."""
    if backend == "flipped":
        monkeypatch.setattr(scan_module, "select_backend", lambda *args: scan_module.ScanBackend.PYTORCH)
    inputs = make_inputs(2, 16, 45, 8, seed=5)
    results = []
    for reverse in (True, False):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        flip = (lambda t: t) if reverse else (lambda t: t.flip(-1))
        args = [leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"]]
        args = [flip(a) if a.dim() == 3 else a for a in args]
        out, last = selective_scan(*args, D=leaves["D"], z=flip(leaves["z"]), delta_bias=leaves["delta_bias"],
                                   delta_softplus=True, return_last_state=True, reverse=reverse)
        out = flip(out)
        (out.square().sum() + last.sum()).backward()
        results.append((out, last, {k: v.grad for k, v in leaves.items()}))
    (out_r, last_r, grads_r), (out_f, last_f, grads_f) = results
    assert rel_error(out_r, out_f) <= FWD_TOL and rel_error(last_r, last_f) <= FWD_TOL
    for name in grads_r:
        assert rel_error(grads_r[name], grads_f[name]) <= BWD_TOL, name


def test_without_last_state_gradient(kernel):
    inputs = make_inputs(2, 16, 50, 8)
    (ours, grads), (_, ref_grads) = _run_both(inputs, ("D", "z", "delta_bias"), True, 8, grad_last=False)
    for name in grads:
        assert rel_error(grads[name], ref_grads[name]) <= BWD_TOL, name


def test_softplus_of_large_steps(kernel):
    """The kernel's softplus is accurate far out on both sides (tiny steps and steps equal to their input)."""
    inputs = make_inputs(2, 8, 40, 4)
    inputs["delta"] = torch.linspace(-30, 30, 2 * 8 * 40).reshape(2, 8, 40)
    (ours, grads), (ref, ref_grads) = _run_both(inputs, ("D",), True, 16)
    assert rel_error(ours[0], ref[0]) <= FWD_TOL
    assert rel_error(grads["delta"], ref_grads["delta"]) <= BWD_TOL


def test_thread_counts_agree(kernel):
    """The work split and the per-thread gradient accumulators give the same result on 1, 2 and 3 threads."""
    inputs = make_inputs(3, 40, 45, 8, seed=3)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run_both(inputs, ("D", "z", "delta_bias"), True, 8)[0])
    finally:
        torch.set_num_threads(previous)
    (out1, grads1) = results[0]
    for out, grads in results[1:]:
        assert rel_error(out[0], out1[0]) <= 1e-6
        for name in grads:
            assert rel_error(grads[name], grads1[name]) <= 1e-5, name


@pytest.mark.parametrize("batch,dim,groups,workers", [(1, 640, 1, 2), (16, 640, 1, 2), (3, 13, 1, 4), (2, 24, 3, 5),
                                                       (1, 8, 1, 8), (5, 20, 2, 3)])
def test_work_split_covers_every_tile_once(batch, dim, groups, workers):
    runs = cpu_module._work_split(batch, dim, groups, workers)
    assert 1 <= len(runs) <= workers
    covered = torch.zeros(batch, dim, dtype=torch.int64)
    dim_g = dim // groups
    for boxes in runs:
        for b0, b1, d0, d1 in boxes:
            assert d0 < d1 and b0 < b1
            assert d0 % dim_g % cpu_module.LANES == 0  # tiles start on the kernel's grid
            covered[b0:b1, d0:d1] += 1
    assert bool((covered == 1).all())


def test_layouts_and_dtypes(kernel):
    """(B, D, L)-contiguous inputs and channels-innermost views give the same output; bf16 comes back as bf16."""
    inputs = make_inputs(2, 16, 33, 4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    kwargs = {k: inputs[k] for k in ("D", "z", "delta_bias")}
    dense = cpu_module.selective_scan_cpu(*args, **kwargs, delta_softplus=True)
    views = {k: inputs[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("u", "delta", "z")}
    strided = cpu_module.selective_scan_cpu(views["u"], views["delta"], *args[2:], D=kwargs["D"], z=views["z"],
                                            delta_bias=kwargs["delta_bias"], delta_softplus=True)
    assert torch.equal(dense, strided)
    ref = selective_scan_ref(*args, **kwargs, delta_softplus=True)
    half = cpu_module.selective_scan_cpu(*(a.bfloat16() for a in args), **{k: v.bfloat16() for k, v in kwargs.items()},
                                         delta_softplus=True)
    assert half.dtype == torch.bfloat16
    assert rel_error(half.float(), ref) <= 5e-2


def test_dispatch(kernel):
    """CPU fp32 inputs take the kernel, fp64 inputs (gradcheck) and states over 64 the PyTorch scan."""
    cpu = torch.device("cpu")
    assert scan_module.select_backend(cpu) is scan_module.ScanBackend.CPU_KERNEL
    assert scan_module.select_backend(cpu, torch.float64) is scan_module.ScanBackend.PYTORCH
    assert scan_module.select_backend(cpu, torch.float32, 65) is scan_module.ScanBackend.PYTORCH
    inputs = make_inputs(2, 8, 20, 4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    out = selective_scan(*args, D=inputs["D"], delta_softplus=True)
    assert torch.equal(out, cpu_module.selective_scan_cpu(*args, D=inputs["D"], delta_softplus=True))
    with pytest.raises(scan_module.SelectiveScanInputError, match="delta must have u's shape"):
        selective_scan(args[0], args[1][:, :, :5], *args[2:])


def test_cache_is_reused_and_writes_are_atomic(kernel, tmp_path, monkeypatch):
    first = cpu_module.build_library(tmp_path)
    stamp = first.stat().st_mtime_ns
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(cpu_module.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    assert cpu_module.build_library(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert all("-o" not in cmd for cmd in calls)  # only `cc --version` ran: nothing was compiled again
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


def test_compiler_failure_is_reported_and_falls_back(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken-cc 1.0; exit 0; fi\n"
                      "echo 'error: no vector support' >&2; exit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    cache = tmp_path / "cache"
    with pytest.raises(cpu_module.KernelBuildError, match="no vector support"):
        cpu_module.build_library(cache)
    assert list(cache.iterdir()) == []  # no half-written library left behind

    monkeypatch.setenv(cpu_module.CACHE_ENV, str(cache))
    cpu_module.load_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_module.__name__):
            assert cpu_module.load_kernel() is None
        assert "no vector support" in caplog.text
        assert scan_module.select_backend(torch.device("cpu")) is scan_module.ScanBackend.PYTORCH
        inputs = make_inputs(2, 8, 20, 4)
        args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
        assert rel_error(selective_scan(*args), selective_scan_ref(*args)) <= FWD_TOL
        with pytest.raises(RuntimeError, match="not available"):
            cpu_module.selective_scan_cpu(*args)
    finally:
        cpu_module.load_kernel.cache_clear()


def test_compiler_refusing_march_native_builds_the_baseline(kernel, tmp_path, monkeypatch):
    """A compiler that does not know -march=native (Apple's Clang on Arm, say) gets the portable build instead."""
    wrapper = tmp_path / "cc"
    wrapper.write_text('#!/bin/sh\nfor arg in "$@"; do if [ "$arg" = -march=native ]; then '
                       'echo "unsupported option -march=native" >&2; exit 1; fi; done\n'
                       f'exec {cpu_module._compiler()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    lib = cpu_module._load_library(cpu_module.build_library(tmp_path / "cache"))
    monkeypatch.setattr(cpu_module, "load_kernel", lambda: lib)
    inputs = make_inputs(2, 16, 30, 4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    out = cpu_module.selective_scan_cpu(*args, D=inputs["D"], z=inputs["z"], delta_softplus=True)
    assert rel_error(out, selective_scan_ref(*args, D=inputs["D"], z=inputs["z"], delta_softplus=True)) <= FWD_TOL


def test_no_compiler_and_switch_off(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_module, "_compiler", lambda: None)
    with pytest.raises(FileNotFoundError, match="no C compiler"):
        cpu_module.build_library(tmp_path)
    monkeypatch.setenv(cpu_module.DISABLE_ENV, "0")
    cpu_module.load_kernel.cache_clear()
    try:
        assert cpu_module.load_kernel() is None
    finally:
        cpu_module.load_kernel.cache_clear()


def test_mixer_gradients_match_pure_pytorch_scan(kernel, monkeypatch):
    """The whole bidirectional Mamba mixer gives the same output and gradients on either CPU scan."""
    from stabledub_core.models.mamba import Mamba

    torch.manual_seed(0)
    mixer = Mamba(d_model=16, d_state=8)
    x = torch.randn(3, 40, 16)
    results = []
    for backend in (scan_module.ScanBackend.CPU_KERNEL, scan_module.ScanBackend.PYTORCH):
        monkeypatch.setattr(scan_module, "select_backend", lambda *args, backend=backend: backend)
        mixer.zero_grad()
        leaf = x.clone().requires_grad_()
        out = mixer(leaf)
        out.square().sum().backward()
        results.append((out.detach(), leaf.grad, [p.grad.clone() for p in mixer.parameters()]))
    (out_k, gx_k, gp_k), (out_p, gx_p, gp_p) = results
    assert rel_error(out_k, out_p) <= FWD_TOL
    assert rel_error(gx_k, gx_p) <= BWD_TOL
    for a, b in zip(gp_k, gp_p):
        assert rel_error(a, b) <= BWD_TOL
