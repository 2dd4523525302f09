import re

from stabledub_core.models.summary import render


def test_sd15_size_is_near_the_papers_987m():
    text = render("sd15")
    last = text.splitlines()[-1]
    assert re.fullmatch(r"parameters: \d+", last)
    n = int(last.split()[1])
    assert 0.9e9 <= n <= 1.05e9, n
    # the frozen pretrained parts are listed but not counted
    assert "audio_encoder.backbone (pretrained, frozen)" in text and "vae (pretrained, own file)" in text


def test_tiny_counts_add_up():
    from stabledub_core.models.config import get_preset
    from stabledub_core.models.stabledub import StableDub

    model = StableDub.from_config(get_preset("tiny"))
    expected = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vae."))
    assert render("tiny").splitlines()[-1] == f"parameters: {expected}"
