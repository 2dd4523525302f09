import pytest
import torch

from stabledub_core.models.config import get_preset
from stabledub_core.models.habit import HabitInputError, LipHabitModulation


@pytest.fixture()
def module():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    return LipHabitModulation(cfg.habit, cfg.audio.feature_size)


def _randomise_outputs(m):
    """Give the zero-initialised layers random weights so the outputs depend on the inputs."""
    for layer in (m.scale, m.shift, m.out_conv):
        torch.nn.init.normal_(layer.weight, std=0.2)
        torch.nn.init.normal_(layer.bias, std=0.2)


def test_shapes(module):
    cfg = get_preset("tiny").habit
    v = module.encode_habit(torch.rand(2, 4, 3, cfg.lip_size, cfg.lip_size))
    assert v.shape == (2, cfg.hidden_size)
    tokens = module(torch.randn(2, 3, 10, 80), v)
    assert tokens.shape == (2, 3, 10 // cfg.audio_pool, cfg.out_size)
    assert module.tokens_per_frame(10) == tokens.shape[2]


def test_zero_conv_output_equals_its_bias_at_init(module):
    with torch.no_grad():
        module.out_conv.bias.normal_()
    v = module.encode_habit(torch.rand(2, 3, 3, 32, 32))
    tokens = module(torch.randn(2, 4, 10, 80), v)
    expected = module.out_conv.bias.detach().expand_as(tokens)
    torch.testing.assert_close(tokens, expected)


def test_dropped_audio_equals_zero_audio_per_sample(module):
    _randomise_outputs(module)
    audio = torch.randn(3, 2, 10, 80)
    v = torch.randn(3, 64)
    drop = torch.tensor([False, True, False])
    dropped = module(audio, v, drop_audio=drop)
    zeroed = audio.clone()
    zeroed[1] = 0
    torch.testing.assert_close(dropped, module(zeroed, v))
    # the kept samples are untouched and the audio matters for them
    torch.testing.assert_close(dropped[0], module(audio, v)[0])
    assert not torch.allclose(dropped[1], module(audio, v)[1])


def test_dropped_habit_equals_zero_vector_and_none(module):
    _randomise_outputs(module)
    audio = torch.randn(2, 2, 10, 80)
    v = torch.randn(2, 64)
    all_dropped = module(audio, v, drop_habit=torch.tensor([True, True]))
    torch.testing.assert_close(all_dropped, module(audio, torch.zeros_like(v)))
    torch.testing.assert_close(all_dropped, module(audio, None))
    assert not torch.allclose(all_dropped, module(audio, v))


def test_adaln_matches_equation_3(module):
    """AdaLN(a, v) = (a - mu) / sigma * MLP1(v) + MLP2(v), plus lambda * a (checked before the output conv)."""
    _randomise_outputs(module)
    with torch.no_grad():
        module.lam.normal_()
        module.out_conv.weight.zero_()
        module.out_conv.weight[:, :, 0].copy_(torch.eye(64))
        module.out_conv.bias.zero_()
    audio = torch.randn(1, 1, 10, 80)
    v = torch.randn(1, 64)
    a = module.audio_pool(module.audio_conv(audio[0].transpose(1, 2))).transpose(1, 2)  # (1, T', C)
    norm = (a - a.mean(-1, keepdim=True)) / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = norm * module.scale(v) + module.shift(v) + module.lam * a
    torch.testing.assert_close(module(audio, v)[0], expected)


def test_bad_shapes_are_clear_errors(module):
    with pytest.raises(HabitInputError, match="lip crops"):
        module.encode_habit(torch.rand(2, 3, 3, 16, 16))
    with pytest.raises(HabitInputError, match="audio must be"):
        module(torch.randn(2, 10, 80), None)
    with pytest.raises(HabitInputError, match="drop mask"):
        module(torch.randn(2, 1, 10, 80), None, drop_audio=torch.tensor([True]))


def test_gradients_reach_the_habit_encoder(module):
    _randomise_outputs(module)
    v = module.encode_habit(torch.rand(1, 3, 3, 32, 32))
    module(torch.randn(1, 2, 10, 80), v).square().sum().backward()
    assert module.lip_encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_random_drop_masks_are_independent_with_rate_p():
    from stabledub_core.models.habit import random_drop_masks

    gen = torch.Generator().manual_seed(0)
    audio, habit = random_drop_masks(20000, 0.1, generator=gen)
    assert audio.dtype == torch.bool and audio.shape == (20000,)
    assert abs(audio.float().mean() - 0.1) < 0.01 and abs(habit.float().mean() - 0.1) < 0.01
    assert abs((audio & habit).float().mean() - 0.01) < 0.004  # independent: P(both) = p^2
    with pytest.raises(ValueError, match="probability"):
        random_drop_masks(2, 1.5)
