from stabledub_core.models.config import StableDubConfig, get_preset


def test_config_json_round_trip():
    for name in ("sd15", "tiny"):
        cfg = get_preset(name)
        assert StableDubConfig.from_json(cfg.to_json()) == cfg


def test_unknown_preset_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="choose one of"):
        get_preset("huge")
