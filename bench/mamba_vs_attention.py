"""Memory and time of one spatial + temporal Mamba transformer vs the same transformer with self-attention.

The block is the U-Net's ``MambaTransformer2D`` (GroupNorm, proj_in, spatial mixer, audio cross-attention,
GEGLU feed-forward, temporal mixer, proj_out) at width 320 on 16 frames of 64x64 latents (the sd15 preset's first
level at 512 px). The attention case is the same module with both mixers swapped for diffusers ``Attention``
self-attention (8 heads of 40, SDPA through ``AttnProcessor2_0``); everything else is shared, so the difference is
the mixers only. Each case runs forward + backward (a training step without the optimiser). As in training, the
block's feed-forward is recomputed in the backward pass (``recompute_feed_forward``, the default) in both variants;
``mamba_ff_stored`` / ``attention_ff_stored`` keep its activations instead, and give ``memory_ratio_ff_stored`` /
``time_ratio_ff_stored`` (that feed-forward then dominates both variants' memory).

How memory is measured: every case runs in a fresh Python subprocess, capped with ``RLIMIT_AS`` so an oversized case
fails with an out-of-memory error instead of taking the machine down (the cap is reported). Two figures per case:

* ``allocated_peak_bytes`` (headline ``memory_ratio``): the peak of the bytes malloc has handed out and not taken
  back (glibc's ``mallinfo2``), sampled after every aten op of one extra step, over the value before the step. This
  is the CPU counterpart of ``torch.cuda.max_memory_allocated``, the figure papers report: what the step's tensors
  hold at the worst moment.
* ``peak_extra_bytes`` (``memory_ratio_rss``): peak resident set size (``ru_maxrss``) over the RSS after the block
  and its inputs exist and one tiny step has run (so one-time imports are not counted). It adds the freed blocks
  glibc keeps resident: its dynamic mmap threshold sends the recomputed blocks' mid-size temporaries (5-20 MB) to
  the heap, where freed memory stays mapped. That slack is 250-450 MB here and varies by about 100 MB between
  identical runs, so this ratio moves by several hundredths from run to run.

Attention baselines: ``attention`` is PyTorch's default SDPA, which on CPU picks its flash-attention kernel and never
materialises the (L x L) scores; it is the strongest baseline and the one behind the headline ``memory_ratio`` /
``time_ratio``. ``attention_math`` forces SDPA's math path (scores of shape (B*F*heads, L, L) materialised, as
non-fused attention implementations do); at 64x64 latents it does not fit the memory cap, which is reported as
such. ``no_mixer`` replaces both mixers with nothing (zeros added to the residual): what is left is shared by every
variant, so ``memory_ratio_floor`` (no_mixer over attention) is the lowest memory ratio any mixer could reach in this
block. ``mamba_pytorch_scan`` is the Mamba block with the compiled CPU scan kernel turned off
(``STABLEDUB_CPU_KERNEL=0``): what runs where no C compiler is found (its time ratio is from the separate runs).

How time is measured: the headline ``time_ratio`` comes from one more subprocess that builds the Mamba and the
attention block and alternates their steps (``--timing-repeats`` each, after one warm-up step each), so that both see
the same spells of this shared machine, whose speed drifts by 10-20 % from minute to minute; it is the ratio of the
medians. Each case's own subprocess also times its ``--repeats`` steps after ``--warmup`` steps (``median_seconds``);
``time_ratio_separate`` is the ratio of those, taken minutes apart.

Usage:
    python bench/mamba_vs_attention.py [--frames 16] [--size 64] [--width 320] [--repeats 1] [--warmup 0]
        [--timing-repeats 3]

The committed results come from the defaults at full size (about 12 minutes on 2 cores); ``load_average_1min``
records how busy the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "mamba_vs_attention.json"
CASES = ("mamba", "attention", "attention_math", "no_mixer", "mamba_ff_stored", "attention_ff_stored",
         "mamba_pytorch_scan")
TIMED_SIDE_BY_SIDE = ("mamba", "attention")
CASE_ENV = {"mamba_pytorch_scan": {"STABLEDUB_CPU_KERNEL": "0"}}  # extra environment of a case's subprocess


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallocInfo:
    """Bytes glibc's malloc has handed out and not taken back (``mallinfo2``: heap in use + mmapped chunks), or
    unavailable (None) on other C libraries."""

    def __init__(self):
        import ctypes

        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                                              "keepcost")]

        try:
            self._call = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):  # not glibc, or glibc < 2.33
            self._call = None
            return
        self._call.restype = Info

    @property
    def available(self) -> bool:
        return self._call is not None

    def in_use(self) -> int:
        info = self._call()
        return info.uordblks + info.hblkhd


def _allocated_peak(step, malloc: _MallocInfo) -> int:
    """Peak of the bytes in use by malloc during ``step()``, over its value before, sampled after every aten op.

    This is the CPU counterpart of ``torch.cuda.max_memory_allocated``: what the tensors (and anything else) hold at
    the worst moment, without the freed blocks the allocator keeps resident (which RSS counts).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    start = malloc.in_use()
    peak = start

    class Sampler(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal peak
            out = func(*args, **(kwargs or {}))
            peak = max(peak, malloc.in_use())
            return out

    with Sampler():
        step()
    return peak - start


def _no_mixer():
    """The ``no_mixer`` case's stand-in for both mixers: adds nothing to the residual and keeps nothing for backward.

    That case measures the parts of the block every variant shares (norms, cross-attention, feed-forward, 1x1
    projections): the lowest memory ratio against attention that any mixer could reach.
    """
    import torch

    class NoMixer(torch.nn.Module):
        def forward(self, hidden_states):
            return torch.zeros_like(hidden_states)

    return NoMixer()


def _build_block(case: str, width: int, heads: int, cross_dim: int):
    """The U-Net transformer with Mamba mixers, or with both mixers swapped for self-attention (or for nothing)."""
    from diffusers.models.attention_processor import Attention

    from stabledub_core.models.mamba_transformer_2d import MambaSettings, MambaTransformer2D

    block = MambaTransformer2D(width, heads, cross_dim, 32, MambaSettings())
    if case.endswith("_ff_stored"):  # the feed-forward keeps its activations instead of recomputing them
        block.transformer_blocks[0].recompute_feed_forward = False
    if case == "no_mixer":
        block.transformer_blocks[0].mamba = _no_mixer()
        block.temporal.mamba = _no_mixer()
    if case.startswith("attention"):
        def self_attention():
            return Attention(query_dim=width, heads=heads, dim_head=width // heads, bias=False, out_bias=True)

        block.transformer_blocks[0].mamba = self_attention()  # spatial: h*w tokens of a frame
        block.temporal.mamba = self_attention()  # temporal: F frames at a position
    return block


def _inputs(args):
    """The step's inputs: 16 frames of latents (B*F, C, h, w) with B = 1, and their audio tokens (B*F, T, C_cross)."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(args.frames, args.width, args.size, args.size, requires_grad=True)
    audio = torch.randn(args.frames, args.tokens, args.cross_dim)
    return x, audio


def _train_step(block, x, audio, frames: int) -> float:
    """One forward + backward; returns its seconds and clears the gradients."""
    start = time.perf_counter()
    block(x, audio, frames).square().mean().backward()
    seconds = time.perf_counter() - start
    block.zero_grad(set_to_none=True)
    x.grad = None
    return seconds


def run_timing(args) -> dict:
    """Runs in a subprocess: the side-by-side cases' steps alternated, after one warm-up step each."""
    import torch

    blocks = {}
    for case in TIMED_SIDE_BY_SIDE:
        torch.manual_seed(0)
        blocks[case] = _build_block(case, args.width, args.heads, args.cross_dim)
    x, audio = _inputs(args)
    times = {case: [] for case in blocks}
    for repeat in range(1 + args.timing_repeats):
        for case, block in blocks.items():
            seconds = _train_step(block, x, audio, args.frames)
            if repeat > 0:
                times[case].append(seconds)
    return {"step_seconds": times, "median_seconds": {case: statistics.median(t) for case, t in times.items()}}


def run_case(args) -> dict:
    """Runs in the subprocess: one case, prints its figures as JSON."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = _build_block(args.case, args.width, args.heads, args.cross_dim)
    x, audio = _inputs(args)

    def backend():  # a fresh context manager per use
        return sdpa_kernel([SDPBackend.MATH]) if args.case == "attention_math" else contextlib.nullcontext()

    # One tiny step first, so that lazy imports (torch.utils.checkpoint pulls in torch._dynamo) are not counted as
    # the step's memory.
    tiny = torch.randn(2, args.width, 8, 8, requires_grad=True)
    with backend():
        block(tiny, audio[:2], 2).square().mean().backward()
    block.zero_grad(set_to_none=True)
    baseline = _rss_bytes()
    with backend():
        times = [_train_step(block, x, audio, args.frames) for _ in range(args.warmup + args.repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    times = times[args.warmup:]

    def step():
        with backend():
            _train_step(block, x, audio, args.frames)

    malloc = _MallocInfo()
    allocated = _allocated_peak(step, malloc) if malloc.available else None  # one more step, after the RSS peak
    return {"case": args.case, "params": sum(p.numel() for p in block.parameters()),
            "peak_extra_bytes": peak - baseline, "baseline_bytes": baseline,
            "allocated_peak_bytes": allocated,
            "step_seconds": times, "median_seconds": statistics.median(times)}


def _spawn(mode: list[str], args, env: dict | None = None) -> dict:
    """Runs one case (``["--case", name]``) or the side-by-side timing (``["--timing"]``) in a fresh subprocess; a
    failure (e.g. out of memory under the cap) is returned as an error."""
    cmd = [sys.executable, __file__, *mode, "--frames", str(args.frames), "--size", str(args.size),
           "--width", str(args.width), "--heads", str(args.heads), "--tokens", str(args.tokens),
           "--cross-dim", str(args.cross_dim), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--timing-repeats", str(args.timing_repeats), "--mem-cap-gb", str(args.mem_cap_gb)]
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:]
        return {"error": f"{' '.join(mode)} failed under the {args.mem_cap_gb} GB cap: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(numerator: dict, denominator: dict, key: str) -> float | None:
    """numerator[key] / denominator[key], or None where a case failed or lacks the figure."""
    if "error" in numerator or "error" in denominator or None in (numerator.get(key), denominator.get(key)):
        return None
    return numerator[key] / denominator[key]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="latent height = width")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=10, help="audio tokens per frame")
    parser.add_argument("--cross-dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=1, help="timed steps in each case's own subprocess")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps before those")
    parser.add_argument("--timing-repeats", type=int, default=3, help="alternated steps of each side-by-side case")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0, help="address-space cap of each subprocess")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case
    parser.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)  # internal: side-by-side timing
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.case or args.timing:
        cap = int(args.mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(run_case(args) if args.case else run_timing(args)))
        return

    sys.path.insert(0, str(REPO))
    results = {case: {"case": case, **_spawn(["--case", case], args, CASE_ENV.get(case))} for case in CASES}
    timing = _spawn(["--timing"], args)
    mamba, attention, math = results["mamba"], results["attention"], results["attention_math"]
    floor = results["no_mixer"]
    for name, result in (("mamba", mamba), ("attention", attention), ("timing", timing)):
        if "error" in result:
            raise RuntimeError(f"{name}: {result['error']}")
    import torch

    from stabledub_core.ops.selective_scan import select_backend

    mem, rss, sec = "allocated_peak_bytes", "peak_extra_bytes", "median_seconds"
    report = {
        "memory_ratio": _ratio(mamba, attention, mem),
        "time_ratio": timing["median_seconds"]["mamba"] / timing["median_seconds"]["attention"],
        "time_ratio_separate": _ratio(mamba, attention, sec),
        "memory_ratio_rss": _ratio(mamba, attention, rss),
        "memory_ratio_vs_math_attention": _ratio(mamba, math, mem),
        "time_ratio_vs_math_attention": _ratio(mamba, math, sec),
        # A mixer that costs nothing: the shared rest of the block over attention's whole block.
        "memory_ratio_floor": _ratio(floor, attention, mem),
        # Both variants with the feed-forward's activations stored (recompute_feed_forward=False).
        "memory_ratio_ff_stored": _ratio(results["mamba_ff_stored"], results["attention_ff_stored"], mem),
        "time_ratio_ff_stored": _ratio(results["mamba_ff_stored"], results["attention_ff_stored"], sec),
        # Where the CPU scan kernel is not built (no C compiler): the pure-PyTorch scan.
        "memory_ratio_pytorch_scan": _ratio(results["mamba_pytorch_scan"], attention, mem),
        "time_ratio_pytorch_scan": _ratio(results["mamba_pytorch_scan"], attention, sec),
        "side_by_side_timing": timing,
        "setting": {"frames": args.frames, "latent_size": args.size, "width": args.width, "heads": args.heads,
                    "audio_tokens": args.tokens, "cross_attention_dim": args.cross_dim, "repeats": args.repeats,
                    "warmup": args.warmup,
                    "step": "forward + backward of one transformer (spatial + temporal mixers)"},
        "cases": results,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "selective_scan": select_backend(torch.device("cpu")).value,
                        "attention_kernels": {"attention": "torch SDPA default (CPU flash attention)",
                                              "attention_math": "torch SDPA math path (L x L scores)"},
                        "load_average_1min": os.getloadavg()[0],
                        "memory_cap_gb": args.mem_cap_gb},
    }
    print(f"{'case':<20} {'params':>9} {'allocated (MB)':>15} {'RSS extra (MB)':>15} {'median step (s)':>16}")
    for case, r in results.items():
        if "error" in r:
            print(f"{case:<20} {r['error']}")
            continue
        allocated = "n/a" if r[mem] is None else f"{r[mem] / 2**20:.0f}"
        print(f"{case:<20} {r['params']:>9} {allocated:>15} {r[rss] / 2**20:>15.0f} {r[sec]:>16.2f}")
    for label, key in (("memory ratio (allocated)", "memory_ratio"), ("memory ratio (RSS)", "memory_ratio_rss"),
                       ("time ratio (side by side)", "time_ratio"),
                       ("time ratio (separate runs)", "time_ratio_separate"),
                       ("memory ratio of a zero-cost mixer", "memory_ratio_floor"),
                       ("memory ratio, feed-forward stored", "memory_ratio_ff_stored"),
                       ("time ratio, feed-forward stored", "time_ratio_ff_stored"),
                       ("memory ratio, pure-PyTorch scan", "memory_ratio_pytorch_scan"),
                       ("time ratio, pure-PyTorch scan", "time_ratio_pytorch_scan")):
        value = report[key]
        print(f"{label:<36} {'n/a' if value is None else f'{value:.3f}'}")
    steps = ", ".join(f"{case} {' '.join(f'{t:.1f}' for t in times)} s" for case, times in
                      timing["step_seconds"].items())
    print(f"side-by-side steps (alternated): {steps}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
