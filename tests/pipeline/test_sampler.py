import pytest
import torch

from helpers.sampler_stubs import TargetDenoiser, make_conditions, smooth_target
from stabledub_core.runtime import Interrupted
from stabledub_core.pipeline.guidance import Branch
from stabledub_core.pipeline.sampler import (
    ClipNoise,
    SamplerConfig,
    SamplerError,
    denoise_chunk,
    sample_clip,
)
from stabledub_core.pipeline.schedulers import SchedulerKind, make_scheduler
from stabledub_core.pipeline.windows import plan_chunks

STEPS = 6


def _config(**kw):
    kw.setdefault("num_inference_steps", STEPS)
    return SamplerConfig(**kw)


def test_same_seed_same_result_other_seed_differs():
    cond = make_conditions(20, seed=1)
    model = TargetDenoiser(beta=0.3, gain=0.5)
    a = sample_clip(model, cond, _config(seed=7))
    b = sample_clip(model, cond, _config(seed=7))
    c = sample_clip(model, cond, _config(seed=8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("kind", list(SchedulerKind))
def test_every_scheduler_recovers_the_target(kind):
    target = smooth_target(20)
    cond = make_conditions(20, target=target)
    out = sample_clip(TargetDenoiser(), cond, _config(scheduler=kind, scale_audio=1.0, scale_habit=1.0))
    assert out.shape == target.shape
    # DDIM (set_alpha_to_one=False) stops at alpha_bar[0]: sqrt(1 - 0.99915) = 0.03 of the noise remains
    tol = 0.15 if kind is SchedulerKind.DDIM else 1e-3
    assert (out - target).abs().max() < tol


def test_scheduler_registry_uses_sd15_schedule():
    for kind in SchedulerKind:
        cfg = make_scheduler(kind).config
        assert (cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.prediction_type,
                cfg.steps_offset) == (1000, 0.00085, 0.012, "scaled_linear", "epsilon", 1)
    ddim = make_scheduler("ddim").config
    assert ddim.clip_sample is False and ddim.set_alpha_to_one is False
    assert make_scheduler("dpm++2m").config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="choose one of"):
        make_scheduler("heun")


@pytest.mark.parametrize("frames", [1, 17, 70])
def test_every_frame_comes_back_in_order(frames):
    target = smooth_target(frames) + torch.randn(frames, 1, 1, 1)  # distinct per frame
    cond = make_conditions(frames, target=target)
    out = sample_clip(TargetDenoiser(), cond, _config(scheduler="euler", scale_audio=1.0, scale_habit=1.0))
    assert out.shape == (frames, 4, 4, 4)
    assert (out - target).abs().max() < 1e-3


def test_guidance_scales_change_the_result():
    target = smooth_target(8)
    cond = make_conditions(8, target=target)
    model = TargetDenoiser(gain=1.0)
    plain = sample_clip(model, cond, _config(scheduler="euler", scale_audio=1.0, scale_habit=1.0))
    guided = sample_clip(model, cond, _config(scheduler="euler", scale_audio=3.0, scale_habit=2.0))
    # with x0 linear in the tokens, eq. 7 yields the guided combination of the branch targets exactly
    tok = {b: cond.tokens[b].mean(dim=(1, 2)).view(-1, 1, 1, 1) for b in Branch}
    expected_shift = tok[Branch.UNCOND] + 3.0 * (tok[Branch.AUDIO] - tok[Branch.UNCOND]) \
        + 2.0 * (tok[Branch.FULL] - tok[Branch.AUDIO])
    torch.testing.assert_close(plain, target + tok[Branch.FULL], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(guided, target + expected_shift, atol=1e-3, rtol=1e-3)


def test_window_batching_does_not_change_the_result():
    cond = make_conditions(60, seed=3)
    model = TargetDenoiser(beta=0.4, gain=0.3)
    one = sample_clip(model, cond, _config(window_batch_size=1))
    model.batch_sizes.clear()
    many = sample_clip(model, cond, _config(window_batch_size=4))
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    assert max(model.batch_sizes) == 4 * 3  # 4 windows x 3 guidance branches


def test_clip_noise_is_independent_of_chunking():
    noise = ClipNoise(seed=11, shape=(4, 3, 3))
    whole = noise.frames(0, 30)
    parts = torch.cat([noise.frames(0, 7), noise.frames(7, 19), noise.frames(19, 30)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole[0], whole[1])
    shared = ClipNoise(seed=11, shape=(4, 3, 3), shared=1.0).frames(5, 9)
    assert torch.equal(shared[0], shared[3])
    half = ClipNoise(seed=11, shape=(4, 64, 64), shared=0.5).frames(0, 8)
    assert 0.9 < half.std() < 1.1
    corr = torch.corrcoef(half.flatten(1))[0, 1]
    assert 0.4 < corr < 0.6


def test_chunked_equals_unchunked_without_temporal_mixing():
    # a per-frame model: every window predicts the same for a frame, so chunk seams cannot appear
    cond = make_conditions(61, seed=2)
    model = TargetDenoiser(gain=0.5)
    whole = sample_clip(model, cond, _config())
    chunked = sample_clip(model, cond, _config(), windows_per_chunk=2)
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=1e-5)


def test_chunked_close_to_unchunked_with_temporal_mixing():
    target = smooth_target(61)
    cond = make_conditions(61, target=target)
    model = TargetDenoiser(beta=0.3)
    cfg = _config(scheduler="euler", scale_audio=1.0, scale_habit=1.0, shared_noise=1.0)
    disagreement = 0.3 * (cfg.window - cfg.overlap) * 0.05  # beta * stride * target slope between windows
    whole = sample_clip(model, cond, cfg)
    step_whole = (whole - target).diff(dim=0).abs().max()
    for per_chunk in (1, 2):
        chunked = sample_clip(model, cond, cfg, windows_per_chunk=per_chunk)
        assert chunked.shape == whole.shape
        diff = (whole - chunked).abs().amax(dim=(1, 2, 3))
        # stated tolerance: 5% of the disagreement between neighbouring windows
        assert diff.max() < 0.05 * disagreement
        shared = set()
        chunks = plan_chunks(61, per_chunk)
        for prev, nxt in zip(chunks, chunks[1:]):
            shared.update(range(nxt.start, prev.stop))
        assert set(diff.nonzero().flatten().tolist()) <= shared  # only frames two chunks share differ
        # and the stitched result has no seam: no frame step larger than in the whole-clip result
        assert (chunked - target).diff(dim=0).abs().max() <= step_whole + 1e-6
    # one chunk of the whole clip is exactly the unchunked sampler
    torch.testing.assert_close(sample_clip(model, cond, cfg, windows_per_chunk=100), whole, atol=0, rtol=0)


def test_progress_and_interruption():
    cond = make_conditions(30)
    calls = []
    sample_clip(TargetDenoiser(), cond, _config(), windows_per_chunk=1, on_step=lambda d, t: calls.append((d, t)))
    n_chunks = len(calls) // STEPS
    assert n_chunks > 1 and calls == [(i + 1, n_chunks * STEPS) for i in range(n_chunks * STEPS)]
    for stop_at in (1, 3):  # polls: before step 1, before window 1, window 2 (3 windows of 30 frames)...
        polls = iter([False] * stop_at + [True])
        model = TargetDenoiser()
        with pytest.raises(Interrupted):
            sample_clip(model, cond, _config(), should_stop=lambda: next(polls))
        assert len(model.batch_sizes) == stop_at - 1


def test_bad_inputs_have_clear_errors():
    cond = make_conditions(5)
    with pytest.raises(SamplerError, match="exactly one of"):
        denoise_chunk(TargetDenoiser(), cond, _config())
    with pytest.raises(SamplerError, match=r"initial latents must be \(5, 4, 4, 4\)"):
        denoise_chunk(TargetDenoiser(), cond, _config(), noise=torch.zeros(4, 4, 4, 4))
    partial = make_conditions(5)
    partial.tokens = {Branch.FULL: partial.tokens[Branch.FULL]}
    with pytest.raises(SamplerError, match="branch_tokens"):
        sample_clip(TargetDenoiser(), partial, _config(scale_audio=2.0))
    sample_clip(TargetDenoiser(), partial, _config(scale_audio=1.0, scale_habit=1.0))  # FULL alone is enough
    ragged = make_conditions(5)
    ragged.tokens[Branch.AUDIO] = ragged.tokens[Branch.AUDIO][:, :2]
    with pytest.raises(SamplerError, match="differ in shape"):
        sample_clip(TargetDenoiser(), ragged, _config())
    bad_mask = make_conditions(5)
    bad_mask.mask = bad_mask.mask[:, :, :2]
    with pytest.raises(SamplerError, match="mask must be"):
        sample_clip(TargetDenoiser(), bad_mask, _config())
    with pytest.raises(SamplerError, match="denoiser returned"):
        sample_clip(lambda s, t, c: s[:, :, :3], cond, _config())


@pytest.mark.parametrize("kind", list(SchedulerKind))
def test_known_region_blending_ends_on_the_source_outside_the_mask(kind):
    """keep_known: outside the mask the result is the source latents exactly; inside, the denoiser's target (the
    blended neighbourhood changes it only through the model, which this stand-in ignores)."""
    target = smooth_target(20)
    cond = make_conditions(20, target=target)
    cond.known = torch.randn_like(target)
    out = sample_clip(TargetDenoiser(), cond, _config(scheduler=kind, scale_audio=1.0, scale_habit=1.0))
    outside = cond.mask.expand_as(out) == 0
    assert torch.equal(out[outside], cond.known[outside])
    plain = sample_clip(TargetDenoiser(), cond, _config(scheduler=kind, scale_audio=1.0, scale_habit=1.0,
                                                        keep_known=False))
    tol = 0.15 if kind is SchedulerKind.DDIM else 1e-3
    assert (plain - target).abs().max() < tol  # without blending the source latents play no part
    assert (out[~outside] - target[~outside]).abs().max() < tol


def test_keep_known_is_on_by_default_and_can_be_turned_off_on_the_command_line():
    from stabledub_core.cli.main import build_parser

    parse = build_parser().parse_args
    base = ["dub", "--video", "v.mp4", "--checkpoint", "c.safetensors", "--out", "o.mp4"]
    assert parse(base).keep_known is True and parse(base + ["--no-keep-known"]).keep_known is False
