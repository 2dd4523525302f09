"""Selective scan on CPUs with a small compiled C kernel (``csrc/selective_scan_cpu.c``), loaded through ctypes.

The pure-PyTorch chunked scan (``selective_scan_chunked``) runs the recurrence as one tensor op per position and pays
for every (T, B, D, N) intermediate in memory traffic. The C kernel keeps the state of a tile of 8 neighbouring
channels in registers while it walks along the sequence: per position it computes the 8 x N decays exp(delta * A)
with a vectorised polynomial, updates the state with multiply-adds and contracts it with C, and it never writes a
(B, D, L, N) tensor. The backward pass keeps the state every ``CHUNK`` positions (1/``CHUNK`` of a (B, D, L, N)
tensor; a (B, L/CHUNK, N, D) tensor); it recomputes a chunk's states and decays into a cache-sized buffer and runs the
adjoint recurrence back over it, like mamba-ssm's CUDA kernel does.

The kernel is built on first use with the system C compiler (``$CC``, else ``cc``; GCC and Clang) for the host CPU,
into a per-user cache (``$STABLEDUB_KERNEL_CACHE``, else ``~/.cache/stabledub/kernels``), keyed by a hash of the
source, the flags, the compiler and the CPU, and written atomically. Where there is no compiler the pure-PyTorch scan
runs instead (logged once); a compiler that fails is logged as a warning with its error. ``STABLEDUB_CPU_KERNEL=0``
turns the kernel off.

Work is split over ``torch.get_num_threads()`` threads (ctypes releases the GIL during the call), each with its own
accumulators for the gradients summed over batch or channels (A, D, B, C), which are added up afterwards.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

import torch

from stabledub_core.errors import SelectiveScanInputError

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.c"
LANES = 8  # channels per tile (one AVX2 vector of fp32)
MAX_STATE = 64  # largest d_state the kernel's stack buffers hold
CHUNK = 64  # positions between the states kept for the backward pass
FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast")
HOST_FLAGS = ("-march=native",)
DISABLE_ENV = "STABLEDUB_CPU_KERNEL"
CACHE_ENV = "STABLEDUB_KERNEL_CACHE"


class KernelBuildError(RuntimeError):
    """The C compiler was found but could not build the kernel."""


class _ScanInputs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("u", "delta", "z")] + \
        [(name, ctypes.c_int64) for name in ("u_sb", "u_sl", "dt_sb", "dt_sl", "z_sb", "z_sl")] + \
        [(name, ctypes.c_void_p) for name in ("B", "C", "A2", "A", "D", "delta_bias")] + \
        [(name, ctypes.c_int64) for name in ("batch", "dim", "length", "d_state", "groups", "chunk",
                                             "delta_softplus", "reverse")]


class _ScanGrads(ctypes.Structure):
    _fields_ = [("grad_out", ctypes.c_void_p), ("go_sb", ctypes.c_int64), ("go_sl", ctypes.c_int64)] + \
        [(name, ctypes.c_void_p) for name in ("grad_last", "grad_u", "grad_delta", "grad_z", "grad_A", "grad_D",
                                              "grad_bias", "grad_B", "grad_C", "out")]


# --------------------------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------------------------


def _compiler() -> Optional[str]:
    """The C compiler to use: ``$CC``, Python's own build compiler, or ``cc``, whichever is found first."""
    candidates = [os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags where the OS says, else its name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stabledub" / "kernels"


def build_library(cache_dir: Optional[Path] = None) -> Path:
    """Compiles the kernel for this CPU (once; later calls find it in the cache) and returns the library's path.

    Raises:
        FileNotFoundError: no C compiler was found.
        KernelBuildError: the compiler failed (its output is in the message).
    """
    compiler = _compiler()
    if compiler is None:
        raise FileNotFoundError("no C compiler found (set CC, or install gcc or clang)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join(part.encode() if isinstance(part, str) else part for part in (
        source, " ".join(FLAGS + HOST_FLAGS), version, platform.machine(), _cpu_signature()))).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else _cache_dir()
    target = cache_dir / f"selective_scan_cpu_{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=".building-", suffix=target.suffix)
    os.close(fd)
    try:
        # Tuned for this CPU where the compiler can (-march=native), else for the architecture's baseline.
        for host_flags in (HOST_FLAGS, ()):
            result = subprocess.run([compiler, *FLAGS, *host_flags, str(SOURCE), "-o", partial, "-lm"],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                break
        else:
            raise KernelBuildError(f"{compiler} failed to build {SOURCE.name} (exit {result.returncode}):\n"
                                   f"{result.stderr.strip()}")
        os.replace(partial, target)  # atomic: another process sees the whole library or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, grads in (("scan_forward", False), ("scan_backward", True)):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        head = [ctypes.POINTER(_ScanInputs)] + ([ctypes.POINTER(_ScanGrads)] if grads else [])
        # backward: chunk states; forward: out, its two strides, chunk states, final states
        tail = [ctypes.c_void_p] if grads else [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 2
        fn.argtypes = head + [ctypes.c_int64] * 4 + tail
    return lib


@functools.lru_cache(maxsize=1)
def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled kernel, or None where it is turned off or cannot be built here (the reason is logged once)."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("CPU selective-scan kernel turned off by %s; using the pure PyTorch scan", DISABLE_ENV)
        return None
    try:
        return _load_library(build_library())
    except FileNotFoundError as err:
        logger.info("CPU selective-scan kernel unavailable (%s); using the pure PyTorch scan", err)
    except (KernelBuildError, OSError, subprocess.SubprocessError) as err:
        logger.warning("CPU selective-scan kernel could not be built or loaded; using the pure PyTorch scan.\n%s", err)
    return None


def supports(device: torch.device, dtype: torch.dtype, d_state: int) -> bool:
    """Whether the kernel handles such inputs: CPU tensors in fp32/fp16/bf16 (it computes in fp32, so fp64 needs the
    PyTorch scan) with d_state <= ``MAX_STATE`` (its stack buffers)."""
    return torch.device(device).type == "cpu" and dtype != torch.float64 and d_state <= MAX_STATE


# --------------------------------------------------------------------------------------------------------------------
# Calling it
# --------------------------------------------------------------------------------------------------------------------


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, D, L) fp32 with channels innermost in memory (stride 1 along D): a view when it already is."""
    x = x.float()
    return x if x.stride(1) == 1 else x.transpose(1, 2).contiguous().transpose(1, 2)


def _bc_layout(x: torch.Tensor) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> contiguous fp32 (B, G, L, N)."""
    return (x.unsqueeze(1) if x.dim() == 3 else x).float().transpose(-1, -2).contiguous()


def _pointer(x: Optional[torch.Tensor]) -> Optional[int]:
    return x.data_ptr() if x is not None else None


def _work_split(batch: int, dim: int, groups: int, workers: int) -> list[list[tuple[int, int, int, int]]]:
    """Cuts the (batch x channel-tile) grid into ``workers`` contiguous runs of tiles, as (b0, b1, d0, d1) boxes.

    Tiles of ``LANES`` channels never straddle a group of B/C (the kernel also splits at group ends).
    """
    dim_g = dim // groups
    tiles_per_group = math.ceil(dim_g / LANES)
    edges = [min(g * dim_g + t * LANES, (g + 1) * dim_g) for g in range(groups) for t in range(tiles_per_group)]
    edges.append(dim)
    per_batch = len(edges) - 1
    total = batch * per_batch
    workers = max(1, min(workers, total))
    runs = []
    for w in range(workers):
        start, stop = total * w // workers, total * (w + 1) // workers
        boxes = []
        while start < stop:
            b, t = divmod(start, per_batch)
            if t == 0 and stop - start >= per_batch:  # whole batch elements
                nb = (stop - start) // per_batch
                boxes.append((b, b + nb, 0, dim))
                start += nb * per_batch
            else:
                t_end = min(per_batch, t + stop - start)
                boxes.append((b, b + 1, edges[t], edges[t_end]))
                start += t_end - t
        runs.append(boxes)
    return runs


def _check_status(statuses: list[int]) -> None:
    """The kernel returns -1 when it cannot allocate its small per-call buffers."""
    if any(status != 0 for status in statuses):
        raise MemoryError("the CPU selective-scan kernel could not allocate its working buffers")


def _run_parallel(jobs: list) -> None:
    """Runs the callables on as many threads, the first on this thread."""
    if len(jobs) == 1:
        jobs[0]()
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs) - 1) as pool:
        futures = [pool.submit(job) for job in jobs[1:]]
        jobs[0]()
        for future in futures:
            future.result()


class _Prepared:
    """The kernel's inputs in its layouts, and the ctypes struct that points at them (keeps the tensors alive)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, reverse):
        batch, dim, length = u.shape
        self.shape = (batch, dim, length, A.shape[1])
        self.chunk = chunk
        self.groups = 1 if B.dim() == 3 else B.shape[1]
        self.u, self.dt = _channels_last(u), _channels_last(delta)
        self.delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
        self.z = _channels_last(z) if z is not None else None
        self.B, self.C = _bc_layout(B), _bc_layout(C)
        A = A.float()
        self.A = A.t().contiguous()  # (N, D)
        self.A2 = (A * math.log2(math.e)).t().contiguous()
        self.D = D.float().contiguous() if D is not None else None
        self.struct = _ScanInputs(
            u=_pointer(self.u), delta=_pointer(self.dt), z=_pointer(self.z),
            u_sb=self.u.stride(0), u_sl=self.u.stride(2), dt_sb=self.dt.stride(0), dt_sl=self.dt.stride(2),
            z_sb=self.z.stride(0) if self.z is not None else 0, z_sl=self.z.stride(2) if self.z is not None else 0,
            B=_pointer(self.B), C=_pointer(self.C), A2=_pointer(self.A2), A=_pointer(self.A), D=_pointer(self.D),
            delta_bias=_pointer(self.delta_bias), batch=batch, dim=dim, length=length, d_state=A.shape[1],
            groups=self.groups, chunk=chunk, delta_softplus=int(delta_softplus), reverse=int(reverse))

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.shape[2] / self.chunk)


def _forward(prep: _Prepared, keep_states: bool, keep_last: bool, states: Optional[torch.Tensor] = None):
    """Runs the forward kernel (into ``states``, a contiguous fp32 tensor of :func:`chunk_states_shape`, if given).

    Returns:
        The gated output (B, L, D) fp32, the chunk states (B, n_chunks - 1, N, D) when ``keep_states``, and the final
        state (B, N, D) when ``keep_last``.
    """
    lib = load_kernel()
    batch, dim, length, d_state = prep.shape
    out = prep.u.new_empty((batch, length, dim), dtype=torch.float32)
    shape = chunk_states_shape(batch, dim, length, d_state, prep.chunk)
    if states is None and keep_states:
        states = prep.u.new_empty(shape, dtype=torch.float32)
    elif states is not None and (states.shape != shape or states.dtype != torch.float32 or not states.is_contiguous()):
        raise SelectiveScanInputError(f"states must be a contiguous fp32 tensor of shape {shape}, got "
                                      f"{tuple(states.shape)} {states.dtype}")
    last = prep.u.new_empty((batch, d_state, dim), dtype=torch.float32) if keep_last else None
    runs = _work_split(batch, dim, prep.groups, torch.get_num_threads())

    def job(boxes):
        return lambda: _check_status([lib.scan_forward(ctypes.byref(prep.struct), *box, out.data_ptr(), out.stride(0),
                                                       out.stride(1), _pointer(states), _pointer(last))
                                      for box in boxes])

    _run_parallel([job(boxes) for boxes in runs])
    return out, states, last


def _backward(prep: _Prepared, states: torch.Tensor, grad_out: torch.Tensor, grad_last: Optional[torch.Tensor],
              want_out: bool):
    """Runs the backward kernel from the chunk states.

    Returns:
        fp32 gradients of u, delta (before bias and softplus), z: (B, L, D); of A: (N, D); of D and delta_bias: (D,);
        of B and C: (B, G, L, N); and, when ``want_out``, the gated output (B, L, D) again.
    """
    lib = load_kernel()
    batch, dim, length, d_state = prep.shape
    grad_out = _channels_last(grad_out)
    grad_last = grad_last.float().transpose(1, 2).contiguous() if grad_last is not None else None  # (B, N, D)
    new = functools.partial(prep.u.new_empty, dtype=torch.float32)
    grad_u, grad_dt = new((batch, length, dim)), new((batch, length, dim))
    grad_z = new((batch, length, dim)) if prep.z is not None else None
    out = new((batch, length, dim)) if want_out else None
    runs = _work_split(batch, dim, prep.groups, torch.get_num_threads())
    workers = len(runs)
    grad_A = prep.u.new_zeros((workers, d_state, dim), dtype=torch.float32)
    grad_D, grad_bias = (prep.u.new_zeros((workers, dim), dtype=torch.float32) for _ in range(2))
    grad_B, grad_C = (prep.u.new_zeros((workers, *prep.B.shape), dtype=torch.float32) for _ in range(2))
    grads = [_ScanGrads(grad_out=grad_out.data_ptr(), go_sb=grad_out.stride(0), go_sl=grad_out.stride(2),
                        grad_last=_pointer(grad_last), grad_u=grad_u.data_ptr(), grad_delta=grad_dt.data_ptr(),
                        grad_z=_pointer(grad_z), grad_A=grad_A[w].data_ptr(), grad_D=grad_D[w].data_ptr(),
                        grad_bias=grad_bias[w].data_ptr(), grad_B=grad_B[w].data_ptr(), grad_C=grad_C[w].data_ptr(),
                        out=_pointer(out)) for w in range(workers)]

    def job(w):
        return lambda: _check_status([lib.scan_backward(ctypes.byref(prep.struct), ctypes.byref(grads[w]), *box,
                                                        _pointer(states)) for box in runs[w]])

    _run_parallel([job(w) for w in range(workers)])
    return (grad_u, grad_dt, grad_z, grad_A.sum(0), grad_D.sum(0), grad_bias.sum(0), grad_B.sum(0), grad_C.sum(0),
            out)


def _api_gradients(kernel_grads, u, delta, A, B, C, D, z, delta_bias) -> tuple:
    """The backward kernel's gradients in the layouts and dtypes of ``selective_scan_fn``'s inputs."""
    grad_u, grad_dt, grad_z, grad_A, grad_D, grad_bias, grad_B, grad_C = kernel_grads
    grad_B, grad_C = (g.transpose(-1, -2) for g in (grad_B, grad_C))  # (B, G, N, L)
    if B.dim() == 3:
        grad_B, grad_C = grad_B.squeeze(1), grad_C.squeeze(1)
    return (grad_u.transpose(1, 2).to(u.dtype), grad_dt.transpose(1, 2).to(delta.dtype), grad_A.t().to(A.dtype),
            grad_B.contiguous().to(B.dtype), grad_C.contiguous().to(C.dtype),
            grad_D.to(D.dtype) if D is not None else None,
            grad_z.transpose(1, 2).to(z.dtype) if z is not None else None,
            grad_bias.to(delta_bias.dtype) if delta_bias is not None else None)


class _CompiledSelectiveScan(torch.autograd.Function):
    """The selective scan on the C kernel; keeps the inputs and the chunk states for the backward pass."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk, reverse):
        prep = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, reverse)
        need_grad = any(ctx.needs_input_grad)
        out, states, last = _forward(prep, keep_states=need_grad, keep_last=return_last_state)
        ctx.delta_softplus, ctx.chunk, ctx.reverse = delta_softplus, chunk, reverse
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        last_state = last.transpose(1, 2) if last is not None else None  # (B, D, N)
        return out.transpose(1, 2).to(u.dtype), last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        prep = _Prepared(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.chunk, ctx.reverse)
        *kernel_grads, _ = _backward(prep, states, grad_out, grad_last, want_out=False)
        return (*_api_gradients(kernel_grads, u, delta, A, B, C, D, z, delta_bias), None, None, None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, reverse: bool = False, chunk_size: int = CHUNK):
    """Selective scan on the compiled CPU kernel, with ``selective_scan_fn``'s signature.

    Call :func:`load_kernel` first: this raises if the kernel is not available. The inputs are checked by the caller
    (``selective_scan``).

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix, N <= ``MAX_STATE``.
        B: (B, N, L) or (B, G, N, L) input matrix.
        C: (B, N, L) or (B, G, N, L) output matrix.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional.
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N), fp32 (with ``reverse``, the state after position 0).
        reverse: scan from the last position to the first; the same as flipping u, delta, B, C and z along L and
            flipping the output back, without the copies.
        chunk_size: positions between the states kept for the backward pass.

    Returns:
        (B, D, L) output in u's dtype (channels innermost in memory), and the last state when asked.
    """
    if load_kernel() is None:
        raise RuntimeError("the CPU selective-scan kernel is not available here (see the log); use "
                           "selective_scan, which falls back to the pure PyTorch scan")
    if chunk_size < 1:
        raise SelectiveScanInputError(f"chunk_size must be a positive integer, got {chunk_size}")
    out, last_state = _CompiledSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                                   bool(return_last_state), int(chunk_size), bool(reverse))
    return (out, last_state) if return_last_state else out


def chunk_states_shape(batch: int, dim: int, length: int, d_state: int, chunk_size: int = CHUNK) -> tuple:
    """Shape of the chunk states the forward pass keeps: (B, n_chunks - 1, N, D), the state at each chunk's start
    but the first's."""
    return (batch, math.ceil(length / chunk_size) - 1, d_state, dim)


def scan_with_states(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
                     reverse: bool = False, chunk_size: int = CHUNK, states: Optional[torch.Tensor] = None):
    """The scan's forward pass without autograd, keeping what :func:`scan_gradients` starts from.

    For callers that write their own backward pass (the Mamba mixer's fused backward): they keep the chunk states
    (1/``chunk_size`` of a (B, D, L, N) tensor) instead of running the scan forward again under autograd.

    Args:
        states: where to write the chunk states (a contiguous fp32 tensor of :func:`chunk_states_shape`), e.g. one
            block of a buffer allocated once for many calls; a new tensor by default.

    Returns:
        The (B, D, L) output in u's dtype (channels innermost in memory) and the (B, n_chunks - 1, N, D) chunk states.
    """
    prep = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, reverse)
    out, states, _ = _forward(prep, keep_states=True, keep_last=False, states=states)
    return out.transpose(1, 2).to(u.dtype), states


def scan_gradients(u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, grad_out, *, reverse: bool = False,
                   chunk_size: int = CHUNK):
    """The scan's backward pass from :func:`scan_with_states`'s chunk states, without autograd.

    Returns:
        The gradients of (u, delta, A, B, C, D, z, delta_bias) in their layouts and dtypes (None for inputs given as
        None), and the (B, D, L) output again, which the backward pass recomputes anyway (as mamba-ssm's kernel does).
    """
    prep = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, reverse)
    *kernel_grads, out = _backward(prep, states, grad_out, None, want_out=True)
    return _api_gradients(kernel_grads, u, delta, A, B, C, D, z, delta_bias), out.transpose(1, 2).to(u.dtype)
