"""Benchmark the pure-PyTorch chunked selective scan against the step-by-step oracle (and the compiled CPU kernel,
and mamba-ssm's CUDA kernel).

Run from the repository root: ``python bench/scan.py`` (about 3-5 minutes on 2 shared cores). Prints a table and
writes bench/results/scan.json.

What is measured, for the two shapes the StableDub UNet scans (spatial: batch*frames sequences of h*w tokens;
temporal: batch*h*w sequences of 16 frames):

* Forward time, no autograd, median of several runs with the two implementations interleaved in one process
  ("side by side"). The oracle materialises (B, D, L, N) tensors and loops in Python over L, which does not fit the
  full shapes next to the other processes on this machine, so the comparison runs at a reduced batch
  (``oracle_batch``); the chunked scan is also timed alone at the full shape.
* The floor: the one unavoidable (B, D, L, N) op, exp(delta * A), timed as torch.exp over the same (B, D, L, N)
  elements (chunk by chunk into a reused buffer, so it fits in memory). "floor gap" = our time / floor time.
* Forward+backward peak memory, at the oracle's batch and, for the spatial shape, L = 512: the oracle's backward
  costs O(L^2) (autograd turns each of its L per-position slices of a (B, D, L, N) tensor into a zero-filled
  full-size gradient), which makes L = 4096 take many minutes (L = 1024: 3 minutes here). The chunked scan is also
  measured alone at the full shape and compared with the size of one (B, D, L, N) fp32 tensor. CPU tensors have no
  allocator statistics, so each case runs in a fresh subprocess: a tiny forward+backward warms up the code paths,
  the inputs are built, the kernel's peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``), forward and
  backward run, and the peak is read back (VmHWM in /proc/self/status). Peak minus the resident size just before
  the call is the memory the scan needed. glibc is told to serve every allocation above 64 KiB with mmap
  (MALLOC_MMAP_THRESHOLD_), so freed blocks are returned to the OS and cannot hide allocations.
* Accuracy: max|ours - oracle| / max|oracle| of the forward output at the oracle's shape.
* Where a C compiler builds it, the compiled CPU kernel (``stabledub_core/ops/selective_scan_cpu.py``, what
  ``selective_scan`` runs on CPUs) is a third contender in every comparison above ("kernel"), timed side by side with
  the pure-PyTorch scan at the full shapes too. The headline figures stay those of the pure-PyTorch scan, the fallback
  on every device; the kernel's are reported under "cpu_kernel".
* On a CUDA machine with mamba-ssm installed, the chunked scan and mamba-ssm's kernel are also timed on the GPU at
  the full shapes; otherwise this is skipped with a note.

The inputs follow Mamba's initialisation: A = -(1..N) per channel (S4D-real), delta = softplus(x + dt_bias) with
softplus(dt_bias) log-uniform in [1e-3, 1e-1] and x ~ N(0, 0.5^2), u/B/C/z ~ N(0, 1), D = 1.

By default the benchmark uses one intra-op thread for every contender: this machine's 2 cores are shared with other
jobs, and thread barriers in the oracle's thousands of small ops make multi-threaded timings mostly noise. Pass
``--threads 2`` to use both cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stabledub_core.ops.selective_scan import (  # noqa: E402
    DEFAULT_CHUNK_ELEMENTS, load_mamba_scan, selective_scan_chunked, selective_scan_ref)
from stabledub_core.ops.selective_scan_cpu import load_kernel, selective_scan_cpu  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scan.json"


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    dim: int
    length: int
    d_state: int
    oracle_batch: int   # the batch the oracle's forward runs at (it does not fit the full shape)
    memory_length: int  # the length of the forward+backward memory comparison (see the module docstring)
    runs: int           # timed runs per contender (median)

    def with_batch(self, batch: int, length: Optional[int] = None) -> "Shape":
        return dataclasses.replace(self, batch=batch, length=length or self.length)


SHAPES = {
    # batch*frames = 16 sequences of 64x64 latent tokens, d_inner 640
    "spatial": Shape(batch=16, dim=640, length=4096, d_state=16, oracle_batch=1, memory_length=512, runs=3),
    # 4096 token positions, each a sequence of 16 frames
    "temporal": Shape(batch=4096, dim=640, length=16, d_state=16, oracle_batch=256, memory_length=16, runs=3),
}

IMPLEMENTATIONS: dict[str, Callable] = {"ours": selective_scan_chunked, "oracle": selective_scan_ref,
                                        "kernel": selective_scan_cpu}


def contenders() -> list[str]:
    """The implementations timed here: the compiled CPU kernel only where it builds."""
    return [name for name in IMPLEMENTATIONS if name != "kernel" or load_kernel() is not None]


def make_inputs(shape: Shape, device="cpu", requires_grad=False, seed=0) -> dict:
    """Mamba-initialised scan inputs (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    b, d, length, n = shape.batch, shape.dim, shape.length, shape.d_state
    dt = torch.exp(torch.rand(d, generator=gen) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    inputs = dict(
        u=torch.randn(b, d, length, generator=gen),
        delta=torch.randn(b, d, length, generator=gen) * 0.5,
        A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        B=torch.randn(b, n, length, generator=gen),
        C=torch.randn(b, n, length, generator=gen),
        D=torch.ones(d),
        z=torch.randn(b, d, length, generator=gen),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
    )
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in inputs.items()}


def run_scan(fn: Callable, inputs: dict) -> torch.Tensor:
    return fn(**inputs, delta_softplus=True)


def time_call(fn: Callable, sync: Callable = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def floor_time(shape: Shape, runs: int) -> float:
    """Median time of torch.exp over B*D*L*N elements, in the chunks the scan uses, into a reused buffer."""
    steps = max(1, min(shape.length, DEFAULT_CHUNK_ELEMENTS // (shape.batch * shape.dim * shape.d_state)))
    arg = -torch.rand(steps, shape.batch, shape.dim, shape.d_state)
    out = torch.empty_like(arg)
    full, rest = divmod(shape.length, steps)

    def exp_all():
        for _ in range(full):
            torch.exp(arg, out=out)
        if rest:
            torch.exp(arg[:rest], out=out[:rest])

    return statistics.median(time_call(exp_all) for _ in range(runs))


def compare_forward(shape: Shape) -> dict:
    """Oracle vs ours (and the kernel), forward, interleaved, at the oracle's batch."""
    small = shape.with_batch(shape.oracle_batch)
    inputs = make_inputs(small)
    names = contenders()
    times = {name: [] for name in names}
    with torch.no_grad():
        outs = {name: run_scan(IMPLEMENTATIONS[name], inputs) for name in names}  # warm-up + accuracy
        for _ in range(shape.runs):
            for name in names:
                times[name].append(time_call(lambda: run_scan(IMPLEMENTATIONS[name], inputs)))
    medians = {name: statistics.median(t) for name, t in times.items()}
    floor = floor_time(small, shape.runs)
    result = dict(shape=dataclasses.asdict(small), times_s=times, median_s=medians, floor_s=floor)
    for name in names:
        if name != "oracle":
            prefix = "" if name == "ours" else f"{name}_"
            result[prefix + "speedup_vs_ref"] = medians["oracle"] / medians[name]
            result[prefix + "max_rel_error"] = _rel_error(outs[name], outs["oracle"])
            result[prefix + "floor_gap"] = medians[name] / floor
    return result


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def full_shape_forward(shape: Shape) -> dict:
    """Ours (and the kernel, interleaved) at the full shape, and the floor."""
    inputs = make_inputs(shape)
    names = [name for name in contenders() if name != "oracle"]
    times = {name: [] for name in names}
    with torch.no_grad():  # no warm-up run: at this size it would only add time
        for _ in range(shape.runs):
            for name in names:
                times[name].append(time_call(lambda: run_scan(IMPLEMENTATIONS[name], inputs)))
    del inputs
    gc.collect()
    floor = floor_time(shape, shape.runs)
    median = statistics.median(times["ours"])
    result = dict(shape=dataclasses.asdict(shape), times_s=times["ours"], median_s=median, floor_s=floor,
                  floor_gap=median / floor)
    if "kernel" in times:
        kernel = statistics.median(times["kernel"])
        result.update(kernel_times_s=times["kernel"], kernel_median_s=kernel, kernel_floor_gap=kernel / floor,
                      kernel_speedup_vs_ours=median / kernel)
    return result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(impl: str, shape: Shape, threads: int) -> None:
    """Subprocess body: prints the peak extra resident memory of one forward+backward, in bytes."""
    torch.set_num_threads(threads)
    # Warm up on a tiny input first, so that lazily loaded library code and one-off workspaces are not counted.
    tiny = dataclasses.replace(shape, batch=1, length=min(shape.length, 32))
    out = run_scan(IMPLEMENTATIONS[impl], make_inputs(tiny, requires_grad=True))
    out.backward(torch.randn_like(out))  # a dense gradient, like below (a first one costs ~36 MiB once)
    inputs = make_inputs(shape, requires_grad=True)
    grad_out = torch.randn(shape.batch, shape.dim, shape.length)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = run_scan(IMPLEMENTATIONS[impl], inputs)
    torch.autograd.backward(out, grad_out)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps(dict(peak_bytes=(peak - before) * 1024, fwd_bwd_s=seconds)))


def measure_memory(impl: str, shape: Shape, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, json.dumps(dataclasses.asdict(shape)),
           "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cuda_comparison(shape: Shape) -> dict:
    """Ours vs mamba-ssm's kernel on the GPU at the full shape; a note when that is not possible."""
    if not torch.cuda.is_available():
        return dict(skipped="no CUDA device")
    kernel = load_mamba_scan()
    inputs = make_inputs(shape, device="cuda")
    contenders = {"ours": selective_scan_chunked}
    if kernel is not None:
        contenders["mamba_ssm"] = kernel
    times = {name: [] for name in contenders}
    with torch.no_grad():
        for fn in contenders.values():
            run_scan(fn, inputs)
        for _ in range(5):
            for name, fn in contenders.items():
                times[name].append(time_call(lambda: run_scan(fn, inputs), torch.cuda.synchronize))
    result = dict(device=torch.cuda.get_device_name(), median_s={k: statistics.median(v) for k, v in times.items()})
    if kernel is None:
        result["note"] = "mamba_ssm not importable: only the PyTorch scan was timed"
    return result


def machine(threads: int) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=threads, torch=torch.__version__,
                cpu_capability=torch.backends.cpu.get_cpu_capability(), python=platform.python_version(),
                load_average_at_start=os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every contender (default 1)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SHAPE_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args.child[0], Shape(**json.loads(args.child[1])), args.threads)
        return

    torch.set_num_threads(args.threads)
    results = dict(machine=machine(args.threads), chunk_elements=DEFAULT_CHUNK_ELEMENTS, shapes={})
    started = time.perf_counter()
    for name in args.shapes:
        shape = SHAPES[name]
        small = shape.with_batch(shape.oracle_batch, shape.memory_length)
        entry = dict(oracle_shape_forward=compare_forward(shape), full_shape_forward=full_shape_forward(shape))
        memory = {impl: measure_memory(impl, small, args.threads) for impl in contenders()}
        memory["shape"] = dataclasses.asdict(small)
        memory["ratio"] = memory["ours"]["peak_bytes"] / memory["oracle"]["peak_bytes"]
        memory["ours_full_shape"] = measure_memory("ours", shape, args.threads)
        # For scale: the size of one fp32 (B, D, L, N) tensor at the full shape (the oracle keeps several).
        memory["ours_full_shape"]["bdln_fp32_bytes"] = 4 * shape.batch * shape.dim * shape.length * shape.d_state
        if "kernel" in memory:
            memory["kernel_ratio"] = memory["kernel"]["peak_bytes"] / memory["oracle"]["peak_bytes"]
            memory["kernel_full_shape"] = measure_memory("kernel", shape, args.threads)
        entry["fwd_bwd_memory"] = memory
        entry["cuda"] = cuda_comparison(shape)
        results["shapes"][name] = entry
        print(f"[{name} done after {time.perf_counter() - started:.0f} s]", flush=True)

    per_shape = results["shapes"].values()
    results["speedup_vs_ref"] = min(e["oracle_shape_forward"]["speedup_vs_ref"] for e in per_shape)
    results["fwd_bwd_memory_ratio_vs_ref"] = max(e["fwd_bwd_memory"]["ratio"] for e in per_shape)
    results["max_rel_error"] = max(e["oracle_shape_forward"]["max_rel_error"] for e in per_shape)
    results["floor_gap"] = max(e["full_shape_forward"]["floor_gap"] for e in per_shape)
    if "kernel" in contenders():
        results["cpu_kernel"] = dict(
            speedup_vs_ref=min(e["oracle_shape_forward"]["kernel_speedup_vs_ref"] for e in per_shape),
            speedup_vs_pytorch_scan=min(e["full_shape_forward"]["kernel_speedup_vs_ours"] for e in per_shape),
            fwd_bwd_memory_ratio_vs_ref=max(e["fwd_bwd_memory"]["kernel_ratio"] for e in per_shape),
            max_rel_error=max(e["oracle_shape_forward"]["kernel_max_rel_error"] for e in per_shape),
            floor_gap=max(e["full_shape_forward"]["kernel_floor_gap"] for e in per_shape))
    results["summary_note"] = ("speedup: worst shape, oracle/ours forward medians at the oracle's batch; memory "
                               "ratio: worst shape, ours/oracle forward+backward peak at the memory shape; "
                               "floor gap: worst shape, ours / exp over (B, D, L, N) at the full shape")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - started
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


def _shape_str(shape: dict) -> str:
    return str((shape["batch"], shape["dim"], shape["length"], shape["d_state"]))


def print_table(results: dict) -> None:
    mib = 1 / 2 ** 20
    print(f"\nselective scan forward, {results['machine']['cpu']}, {results['machine']['threads']} thread(s), "
          f"median s")
    header = (f"{'shape':<9} {'(B, D, L, N)':<22} {'oracle':>8} {'ours':>8} {'speedup':>8} {'rel.err':>8} "
              f"{'floor':>8} {'gap':>5}")
    print(header + "\n" + "-" * len(header))
    for name, entry in results["shapes"].items():
        cmp, full = entry["oracle_shape_forward"], entry["full_shape_forward"]
        print(f"{name:<9} {_shape_str(cmp['shape']):<22} {cmp['median_s']['oracle']:>8.3f} "
              f"{cmp['median_s']['ours']:>8.3f} {cmp['speedup_vs_ref']:>7.1f}x {cmp['max_rel_error']:>8.1e} "
              f"{cmp['floor_s']:>8.3f} {cmp['floor_gap']:>5.1f}")
        print(f"{name:<9} {_shape_str(full['shape']):<22} {'-':>8} {full['median_s']:>8.3f} {'':>8} {'':>8} "
              f"{full['floor_s']:>8.3f} {full['floor_gap']:>5.1f}")
        if "kernel_median_s" in full:
            print(f"{'  kernel':<9} {_shape_str(cmp['shape']):<22} {cmp['median_s']['oracle']:>8.3f} "
                  f"{cmp['median_s']['kernel']:>8.3f} {cmp['kernel_speedup_vs_ref']:>7.1f}x "
                  f"{cmp['kernel_max_rel_error']:>8.1e} {cmp['floor_s']:>8.3f} {cmp['kernel_floor_gap']:>5.1f}")
            print(f"{'  kernel':<9} {_shape_str(full['shape']):<22} {'-':>8} {full['kernel_median_s']:>8.3f} "
                  f"{full['kernel_speedup_vs_ours']:>7.1f}x {'(vs ours)':>8} {full['floor_s']:>8.3f} "
                  f"{full['kernel_floor_gap']:>5.1f}")
    print("\nforward+backward peak memory (MiB)")
    header = f"{'shape':<9} {'(B, D, L, N)':<22} {'oracle':>8} {'ours':>8} {'ratio':>6}   one (B,D,L,N) fp32"
    print(header + "\n" + "-" * len(header))
    for name, entry in results["shapes"].items():
        mem = entry["fwd_bwd_memory"]
        full = mem["ours_full_shape"]
        print(f"{name:<9} {_shape_str(mem['shape']):<22} {mem['oracle']['peak_bytes'] * mib:>8.0f} "
              f"{mem['ours']['peak_bytes'] * mib:>8.0f} {mem['ratio']:>6.2f}")
        print(f"{name:<9} {_shape_str(entry['full_shape_forward']['shape']):<22} {'-':>8} "
              f"{full['peak_bytes'] * mib:>8.0f} {'':>6}   {full['bdln_fp32_bytes'] * mib:.0f}")
        if "kernel" in mem:
            print(f"{'  kernel':<9} {_shape_str(mem['shape']):<22} {mem['oracle']['peak_bytes'] * mib:>8.0f} "
                  f"{mem['kernel']['peak_bytes'] * mib:>8.0f} {mem['kernel_ratio']:>6.2f}")
            print(f"{'  kernel':<9} {_shape_str(entry['full_shape_forward']['shape']):<22} {'-':>8} "
                  f"{mem['kernel_full_shape']['peak_bytes'] * mib:>8.0f}")
    for name, entry in results["shapes"].items():
        cuda = entry["cuda"]
        print(f"cuda {name}: {cuda.get('skipped') or cuda}")

if __name__ == "__main__":
    main()
