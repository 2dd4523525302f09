"""A checkpoint whose weights hold NaN or inf, or overflow in float16, is one error naming the tensor."""

from __future__ import annotations

import pytest
import torch

from stabledub_core.errors import CheckpointError, NonFiniteWeightsError
from stabledub_core.models.checkpoint import check_finite_weights, load_checkpoint, save_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StableDub.from_config(get_preset("tiny"))


def test_nan_inf_and_float16_overflow_name_the_tensor(model, tmp_path):
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    assert load_checkpoint(good) is not None
    weight = model.habit.lam if hasattr(model.habit, "lam") else next(model.habit.parameters())
    name = next(f"habit.{n}" for n, p in model.habit.named_parameters() if p is weight)
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.view(-1)[0] = float("nan")
            weight.view(-1)[-1] = float("-inf")
        bad = save_checkpoint(model, tmp_path / "bad.safetensors")
        with pytest.raises(NonFiniteWeightsError, match=rf"bad.safetensors: tensor '{name}' holds 1 NaN and 1 "
                                                        r"infinite value\(s\); the file is corrupt"):
            load_checkpoint(bad)
        with torch.no_grad():
            weight.copy_(kept)
            weight.view(-1)[0] = 1e6  # finite in float32, inf in float16
        big = save_checkpoint(model, tmp_path / "big.safetensors")
        assert load_checkpoint(big, dtype=torch.float32) is not None
        with pytest.raises(CheckpointError, match=rf"tensor '{name}' .* after conversion to torch.float16; load it "
                                                  "in float32"):
            load_checkpoint(big, dtype=torch.float16)
    finally:
        with torch.no_grad():
            weight.copy_(kept)


def test_integer_tensors_are_not_checked():
    check_finite_weights([("steps", torch.tensor([3, 4]))], "f.safetensors")
    with pytest.raises(NonFiniteWeightsError, match="'w'"):
        check_finite_weights([("w", torch.tensor([1.0, float("inf")]))], "f.safetensors")
