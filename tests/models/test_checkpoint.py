import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stabledub_core.errors import CheckpointError, PickleRefusedError
from stabledub_core.models.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint, stored_state_dict
from stabledub_core.models.config import AudioConfig, get_preset
from stabledub_core.models.stabledub import StableDub


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return StableDub.from_config(get_preset("tiny"))


@pytest.fixture(scope="module")
def tiny_file(tiny_model, tmp_path_factory):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _rewrite(src, dst, edit):
    with safe_open(str(src), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_round_trip_is_exact_and_holds_everything_for_tiny(tiny_model, tiny_file):
    loaded = load_checkpoint(tiny_file, expect_preset="tiny")
    assert loaded.config == tiny_model.config
    after = loaded.state_dict()
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, after[name]), name
    with safe_open(str(tiny_file), framework="pt") as fh:
        parts = {k.split(".")[0] for k in fh.keys()}
        assert fh.metadata()["preset"] == "tiny"
    assert parts == {"unet", "habit", "audio_encoder", "vae"}  # the demo is one file
    assert not loaded.training


def test_dtype_and_device(tiny_file):
    model = load_checkpoint(tiny_file, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_wrong_preset_is_a_clear_error(tiny_file, tmp_path):
    sd15 = get_preset("sd15")
    fake = _rewrite(tiny_file, tmp_path / "sd15.safetensors",
                    lambda t, m: m.update(config=sd15.to_json(), preset="sd15"))
    assert read_checkpoint_config(fake).preset == "sd15"
    with pytest.raises(CheckpointError, match="is a 'sd15' checkpoint but a 'tiny' one was expected"):
        load_checkpoint(fake, expect_preset="tiny")


def test_names_and_shapes_are_validated(tiny_file, tmp_path):
    def edit(tensors, meta):
        del tensors["habit.lam"]
        tensors["unet.extra.weight"] = torch.zeros(2)
        tensors["unet.conv_in.bias"] = torch.zeros(3)

    bad = _rewrite(tiny_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "1 missing tensors: habit.lam" in message
    assert "1 unexpected tensors: unet.extra.weight" in message
    assert "unet.conv_in.bias: file (3,) vs model (32,)" in message


def test_pickles_text_and_truncated_files_are_refused(tiny_file, tmp_path):
    for name in ("model.ckpt", "model.pt", "renamed.safetensors"):
        torch.save({"a": torch.zeros(1)}, tmp_path / name)
        with pytest.raises(PickleRefusedError, match="safetensors"):
            load_checkpoint(tmp_path / name)
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a checkpoint, just some text that is long enough")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(text)
    data = tiny_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    cut.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="not a StableDub checkpoint"):
        load_checkpoint(plain)
    newer = tmp_path / "newer.safetensors"
    save_file({"x": torch.zeros(1)}, str(newer), metadata={"format": "stabledub-checkpoint", "format_version": "9"})
    with pytest.raises(CheckpointError, match="format version '9'"):
        load_checkpoint(newer)


def test_save_is_atomic(tiny_model, tiny_file, tmp_path, monkeypatch):
    target = tmp_path / "keep.safetensors"
    target.write_bytes(tiny_file.read_bytes())
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("stabledub_core.models.safetensors_io.save_file", boom)  # the one atomic writer
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


def test_external_parts_are_config_driven(tmp_path):
    """A VAE with in_checkpoint=False and a wav2vec2 backbone are left out and must be given at load time."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from stabledub_core.models.audio_encoders import Wav2Vec2AudioEncoder

    w2v = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    Wav2Vec2Model(w2v).save_pretrained(tmp_path / "w2v")
    base = get_preset("tiny")
    cfg = dataclasses.replace(base, vae=dataclasses.replace(base.vae, in_checkpoint=False),
                              audio=AudioConfig(kind="wav2vec2", feature_size=32, num_hidden_layers=2))
    model = StableDub.from_config(cfg, audio_encoder=Wav2Vec2AudioEncoder.from_folder(tmp_path / "w2v", cfg.audio))
    stored = stored_state_dict(model)
    assert not any(k.startswith(("vae.", "audio_encoder.backbone.")) for k in stored)
    assert "audio_encoder.layer_logits" in stored
    model.vae.save_pretrained(tmp_path / "vae")
    path = save_checkpoint(model, tmp_path / "ext.safetensors")
    with pytest.raises(CheckpointError, match="wav2vec2_path"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="vae_path"):
        load_checkpoint(path, wav2vec2_path=tmp_path / "w2v")
    loaded = load_checkpoint(path, wav2vec2_path=tmp_path / "w2v", vae_path=tmp_path / "vae")
    after = loaded.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, after[name]), name
    assert json.loads(read_checkpoint_config(path).to_json())["vae"]["in_checkpoint"] is False
