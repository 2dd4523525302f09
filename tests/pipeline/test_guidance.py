import random

import pytest
import torch

from helpers.sampler_stubs import TargetDenoiser, make_conditions
from stabledub_core.pipeline.guidance import Branch, GuidanceError, GuidancePlan, dual_cfg
from stabledub_core.pipeline.sampler import WindowedDenoiser


def _eps(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 4, 5, 5, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("scales, branches", [
    ((1.0, 1.0), (Branch.FULL,)),
    ((1.0, 0.0), (Branch.AUDIO,)),
    ((0.0, 0.0), (Branch.UNCOND,)),
    ((3.0, 3.0), (Branch.UNCOND, Branch.FULL)),
    ((1.0, 2.5), (Branch.AUDIO, Branch.FULL)),
    ((2.5, 0.0), (Branch.UNCOND, Branch.AUDIO)),
    ((0.0, 2.0), (Branch.UNCOND, Branch.AUDIO, Branch.FULL)),
    ((2.0, 1.5), (Branch.UNCOND, Branch.AUDIO, Branch.FULL)),
])
def test_plan_evaluates_only_needed_branches(scales, branches):
    assert GuidancePlan.from_scales(*scales).branches == branches


def test_dual_cfg_matches_equation_7_written_out():
    e0, ea, ef = _eps(0)
    la, lh = 2.0, 1.5
    expected = e0 + la * (ea - e0) + lh * (ef - ea)
    torch.testing.assert_close(dual_cfg(e0, ea, ef, la, lh), expected)
    # and the same value from the algebraic expansion with its own numbers
    torch.testing.assert_close(dual_cfg(e0, ea, ef, la, lh), -1.0 * e0 + 0.5 * ea + 1.5 * ef)


@pytest.mark.parametrize("seed", range(6))
def test_plan_combine_equals_dual_cfg_for_random_scales(seed):
    rng = random.Random(seed)
    la, lh = rng.uniform(-1, 5), rng.uniform(-1, 5)
    eps = dict(zip((Branch.UNCOND, Branch.AUDIO, Branch.FULL), _eps(seed)))
    plan = GuidancePlan.from_scales(la, lh)
    stacked = torch.cat([eps[b] for b in plan.branches])
    torch.testing.assert_close(plan.combine(stacked), dual_cfg(*eps.values(), la, lh), rtol=1e-5, atol=1e-5)


def test_plan_rejects_bad_input():
    with pytest.raises(GuidanceError):
        GuidancePlan.from_scales(float("nan"), 1.0)
    with pytest.raises(GuidanceError):
        GuidancePlan.from_scales(2.0, 2.0).combine(torch.zeros(3, 1))
    with pytest.raises(GuidanceError):
        dual_cfg(torch.zeros(1), torch.zeros(2), torch.zeros(1), 1.0, 1.0)


def _three_calls(model, cond, sample, t, la, lh):
    """Eq. 7 from three separate forwards (no batching, no plan)."""
    from stabledub_core.models.unet import build_unet_input
    inp = build_unet_input(sample[None], cond.masked[None], cond.mask[None], cond.appearance[None])
    ts = torch.as_tensor(t).reshape(1)
    out = {b: model(inp, ts, cond.tokens[b][None])[0] for b in Branch}
    return dual_cfg(out[Branch.UNCOND], out[Branch.AUDIO], out[Branch.FULL], la, lh)


@pytest.mark.parametrize("seed", range(3))
def test_batched_guided_forward_matches_three_calls(seed):
    rng = random.Random(seed)
    la, lh = rng.uniform(0.5, 4), rng.uniform(0.5, 4)
    cond = make_conditions(10, seed=seed)
    model = TargetDenoiser(beta=0.3, gain=0.7)
    sample = torch.randn(10, 4, 4, 4, generator=torch.Generator().manual_seed(seed))
    den = WindowedDenoiser(model, cond, GuidancePlan.from_scales(la, lh), window=16, overlap=4,
                           window_batch_size=1, device="cpu", dtype=torch.float32)
    got = den(sample, torch.tensor(501))
    assert model.batch_sizes == [3]  # the three conditions in ONE forward
    torch.testing.assert_close(got, _three_calls(model, cond, sample, 501, la, lh), rtol=1e-4, atol=1e-4)


def test_all_scales_one_runs_only_the_full_branch():
    cond = make_conditions(6)
    model = TargetDenoiser(gain=1.0)
    sample = torch.randn(6, 4, 4, 4)
    den = WindowedDenoiser(model, cond, GuidancePlan.from_scales(1.0, 1.0), 16, 4, 1, "cpu", torch.float32)
    got = den(sample, torch.tensor(300))
    assert model.batch_sizes == [1]
    from stabledub_core.models.unet import build_unet_input
    inp = build_unet_input(sample[None], cond.masked[None], cond.mask[None], cond.appearance[None])
    direct = model(inp, torch.tensor([300]), cond.tokens[Branch.FULL][None])[0]
    torch.testing.assert_close(got, direct)
