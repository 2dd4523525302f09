"""Bidirectional Mamba v1 mixer (the selective SSM of Gu & Dao, scanned both ways as in Vision Mamba "v2").

Parameter names, shapes and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``:
``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``. The backward direction (Vim's
``bimamba_type="v2"``) has its own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log`` and ``D_b`` and shares
``in_proj`` / ``out_proj``: it scans the flipped sequence, its output is flipped back and added to the forward output
before ``out_proj``. So a weight file of this module loads into mamba_ssm/Vim modules and back. (Here the convolution
and the scan of that branch run in reverse, ``reverse=True``, which computes the same without copying flipped
tensors.)

Choices (documented deviations from Vim):
    * ``divide_out=True`` (default) averages the two directions, ``(y_f + y_b) / 2``, as Vim's released models do
      (``if_devide_out=True``); it keeps the output scale of a one-directional Mamba at initialisation.
    * ``dt_proj_b`` gets the same dt initialisation as ``dt_proj`` (Vim leaves it at ``nn.Linear``'s default), so
      both directions start with step sizes in ``[dt_min, dt_max]``.

Memory: with ``recompute_inner=True`` (default) only the mixer's input ``(B, L, D)`` is kept for the backward pass;
the whole mixer (``in_proj``, both directions' convolutions, projections and scans, ``out_proj``) is recomputed in
the backward pass, in blocks of sequences of at most :data:`RECOMPUTE_TOKENS` tokens
(:func:`~stabledub_core.models.recompute.recompute_in_blocks`), so the working memory of either pass is that of one
block, not of the whole batch. It trades one extra forward of the mixer for storing one ``(B, L, D)`` tensor instead
of about twelve ``(B, d_inner, L)`` activations (mamba_ssm's fused ``mamba_inner_fn`` with ``checkpoint_lvl=1`` keeps
more).

The scan is :func:`stabledub_core.ops.selective_scan` (``selective_scan_fn``'s signature), which picks the fastest
implementation for the device; the module has no decoding ``step`` (the U-Net never decodes token by token).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabledub_core.errors import MambaInputError, ModelConfigError
from stabledub_core.ops import causal_conv1d, selective_scan
from stabledub_core.models.mamba_inner import fused_backward_applies, mamba_inner_recompute
from stabledub_core.models.recompute import recompute_in_blocks

RECOMPUTE_TOKENS = 4096  # tokens (sequences x length) recomputed together in the backward pass


class Direction(NamedTuple):
    """One scan direction's layers and parameters."""

    conv1d: nn.Conv1d
    x_proj: nn.Linear
    dt_proj: nn.Linear
    a_log: torch.Tensor
    d: torch.Tensor
    reverse: bool


def _init_dt_proj(dt_proj: nn.Linear, dt_rank: int, dt_init: str, dt_scale: float, dt_min: float, dt_max: float,
                  dt_init_floor: float) -> None:
    """Initialise a dt projection as mamba_ssm does.

    The weight is uniform in ``[-s, s]`` ("random") or constant ``s`` ("constant") with ``s = dt_rank**-0.5 *
    dt_scale``; the bias is the inverse softplus of a step size drawn log-uniformly in ``[dt_min, dt_max]`` and
    floored at ``dt_init_floor``, marked ``_no_reinit`` so that generic initialisers leave it alone.
    """
    std = dt_rank**-0.5 * dt_scale
    initialisers = {
        "random": lambda w: nn.init.uniform_(w, -std, std),
        "constant": lambda w: nn.init.constant_(w, std),
    }
    if dt_init not in initialisers:
        raise ModelConfigError(f"dt_init must be one of {sorted(initialisers)}, got {dt_init!r}")
    initialisers[dt_init](dt_proj.weight)
    dt = torch.exp(
        torch.rand(dt_proj.out_features, device=dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min))
        + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)
    with torch.no_grad():
        dt_proj.bias.copy_(inv_dt)
    dt_proj.bias._no_reinit = True


def _a_log(d_inner: int, d_state: int, device=None) -> nn.Parameter:
    """S4D-real initialisation: ``A = -(1..d_state)`` for every channel, stored as ``log(-A)`` in fp32."""
    a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)  # (d_inner, N)
    param = nn.Parameter(torch.log(a))
    param._no_weight_decay = True
    return param


def _skip_d(d_inner: int, device=None) -> nn.Parameter:
    param = nn.Parameter(torch.ones(d_inner, dtype=torch.float32, device=device))
    param._no_weight_decay = True
    return param


class Mamba(nn.Module):
    """Mamba v1 mixer over a sequence, optionally bidirectional.

    Args:
        d_model: width of the input and output tokens.
        d_state: SSM state size N.
        d_conv: kernel size of the causal depthwise convolution.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the dt projection; ``"auto"`` is ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes.
        dt_init: ``"random"`` or ``"constant"`` initialisation of the dt projection weight.
        dt_scale: scale of the dt projection weight initialisation.
        dt_init_floor: lower bound of the initial step sizes.
        conv_bias: whether the depthwise convolutions have a bias.
        bias: whether ``in_proj`` and ``out_proj`` have a bias.
        bidirectional: add the backward branch (Vim v2).
        divide_out: average rather than sum the two directions (only with ``bidirectional``).
        recompute_inner: recompute the mixer in the backward pass (block by block) instead of storing its activations.
        fused_backward: where the compiled CPU scan runs, train with the hand-written backward pass of
            :mod:`~stabledub_core.models.mamba_inner` (one scan forward fewer per step) rather than the generic
            recomputation; same gradients.
        device, dtype: factory arguments; ``A_log`` and ``D`` are fp32 whatever ``dtype`` is.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 bidirectional: bool = True, divide_out: bool = True, recompute_inner: bool = True,
                 fused_backward: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.recompute_inner = recompute_inner
        self.fused_backward = fused_backward
        dt_kwargs = dict(dt_rank=self.dt_rank, dt_init=dt_init, dt_scale=dt_scale, dt_min=dt_min, dt_max=dt_max,
                         dt_init_floor=dt_init_floor)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d, self.x_proj, self.dt_proj = self._direction(conv_bias, dt_kwargs, factory)
        self.A_log = _a_log(self.d_inner, d_state, device)
        self.D = _skip_d(self.d_inner, device)
        if bidirectional:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._direction(conv_bias, dt_kwargs, factory)
            self.A_b_log = _a_log(self.d_inner, d_state, device)
            self.D_b = _skip_d(self.d_inner, device)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _direction(self, conv_bias: bool, dt_kwargs: dict, factory: dict):
        """The per-direction layers: depthwise causal conv, x projection (dt, B, C) and dt projection."""
        conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
                           padding=self.d_conv - 1, bias=conv_bias, **factory)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **factory)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        _init_dt_proj(dt_proj, **dt_kwargs)
        return conv1d, x_proj, dt_proj

    def directions(self) -> list[Direction]:
        """The scan directions: left to right, and right to left when bidirectional."""
        forward = Direction(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
        if not self.bidirectional:
            return [forward]
        return [forward, Direction(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True)]

    def in_projections(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) -> x, z: the SSM input and the gate, (B, d_inner, L) each.

        ``in_proj`` runs as two products rather than one split in two: the backward pass then adds two (B, L, D) input
        gradients instead of concatenating two (B, L, d_inner) ones. Both outputs are views with channels innermost,
        the layout the convolution and the scan work in.
        """
        biases = self.in_proj.bias.chunk(2) if self.in_proj.bias is not None else (None, None)
        x, z = (F.linear(hidden_states, weight, bias).transpose(1, 2)
                for weight, bias in zip(self.in_proj.weight.chunk(2), biases))
        return x, z

    def scan_inputs(self, x: torch.Tensor, z: torch.Tensor, direction: Direction) -> tuple:
        """The arguments of one direction's ``selective_scan`` (u, delta, A, B, C, D, z, delta_bias), softplus on.

        Args:
            x: (B, d_inner, L) the SSM input, before the convolution.
            z: (B, d_inner, L) the gate.
            direction: which direction's layers; a reverse direction convolves right to left (the scan is then run
                with ``reverse=True``), which equals flipping x and z and flipping the output back.
        """
        conv = direction.conv1d
        u = F.silu(causal_conv1d(x, conv.weight.squeeze(1), conv.bias, reverse=direction.reverse))  # (B, d_inner, L)
        x_dbl = direction.x_proj(u.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, direction.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); the bias goes in as delta_bias
        a = -torch.exp(direction.a_log.float())  # (d_inner, N)
        return (u, dt, a, b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(), direction.d.float(), z,
                direction.dt_proj.bias.float())

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The directions' (B, d_inner, L) outputs -> the out_proj input: their sum, or mean with ``divide_out``."""
        y = outputs[0] if len(outputs) == 1 else outputs[0] + outputs[1]
        return y / 2 if len(outputs) == 2 and self.divide_out else y

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix a batch of sequences.

        Args:
            hidden_states: (B, L, D) tokens.

        Returns:
            (B, L, D) mixed tokens.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise MambaInputError(f"Mamba expects (batch, length, {self.d_model}) input, got "
                                  f"{tuple(hidden_states.shape)}")
        training = torch.is_grad_enabled() and (hidden_states.requires_grad or any(
            p.requires_grad for p in self.parameters()))
        if self.recompute_inner and training:
            rows = max(1, RECOMPUTE_TOKENS // hidden_states.shape[1])
            if self.fused_backward and fused_backward_applies(hidden_states, self.d_state):
                return mamba_inner_recompute(self, hidden_states, rows)
            return recompute_in_blocks(self._mix, hidden_states, rows, list(self.parameters()))
        return self._mix(hidden_states)

    def _mix(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D): projections and the scans."""
        x, z = self.in_projections(hidden_states)
        outputs = [selective_scan(*self.scan_inputs(x, z, direction), delta_softplus=True, reverse=direction.reverse)
                   for direction in self.directions()]  # (B, d_inner, L) each
        return self.out_proj(self.combine(outputs).transpose(1, 2))  # (B, L, D)
