"""Loading the pack changes nothing global: ``sys.path`` stays as it was (``import nodes`` is still ComfyUI's
module), the core is found beside the pack without the repository on the path, and a node call leaves torch's
thread count as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from helpers.comfy_stub import COMFY_NODES_MARKER, run_node, write_comfy_dir

SCRIPT = """
import json, sys
comfy_dir, pack = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_dir)  # as ComfyUI's main.py runs: its folder first, custom node folders never
before = list(sys.path)
core_findable = __import__("importlib.util").util.find_spec("stabledub_core") is not None
from load_custom_node import load_custom_node
module = load_custom_node(pack)
import nodes
import stabledub_core.pipeline.options
print(json.dumps({"nodes_marker": getattr(nodes, "MARKER", nodes.__file__), "path_unchanged": sys.path == before,
                  "core_findable_before": core_findable, "core": stabledub_core.__file__,
                  "options": stabledub_core.pipeline.options.__file__, "nodes": len(module.NODE_CLASS_MAPPINGS),
                  "tests": __import__("importlib.util").util.find_spec("tests") is not None}))
"""


def test_loading_the_pack_does_not_shadow_comfyui_modules(tmp_path):
    pack = write_comfy_dir(tmp_path / "ComfyUI")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the repository is not on the path
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ComfyUI"), str(pack)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["core_findable_before"]  # else the test would not show how the pack finds its core
    assert out["nodes_marker"] == COMFY_NODES_MARKER  # not the pack's nodes/ package
    assert out["path_unchanged"] and not out["tests"]
    core_dir = pack / "stabledub_core"
    assert out["core"] == str(core_dir / "__init__.py")
    assert out["options"] == str(core_dir / "pipeline" / "options.py")  # submodules through the package's __path__
    assert out["nodes"] >= 10


def test_a_node_call_leaves_torch_threads_as_it_found_them(comfy, media_dir, face_model_path):
    from helpers.comfy_stub import micro_config
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    name = "threads.safetensors"
    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(micro_config()), comfy.root / "models" / "stabledub" / name)
    (model,) = run_node(comfy, "StableDubLoadModel", ckpt_name=name, dtype="float32", vae_name="(in checkpoint)",
                        wav2vec2="(not needed)")
    size, frames = model.crop_size, 4
    rng = np.random.default_rng(0)
    crops = torch.from_numpy(rng.random((frames, size, size, 3), np.float32))
    masks = torch.ones(frames, size, size)
    lips = torch.from_numpy(rng.random((4, model.lip_size, model.lip_size, 3), np.float32))
    audio = {"waveform": torch.zeros(1, 1, 16000 * frames // 25), "sample_rate": 16000}
    previous = torch.get_num_threads()
    seen = []
    torch.set_num_threads(2 if previous != 2 else 3)  # a count of its own, that the scan's 1-thread loop changes
    try:
        expected = torch.get_num_threads()
        comfy.progress.clear()
        run_node(comfy, "StableDubSample", model=model, crops=crops, masks=masks, appearance=crops, lip_crops=lips,
                 audio=audio, fps=25.0, steps=2, scheduler="ddim", audio_scale=1.0, habit_scale=1.0, seed=0)
        seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(previous)
    assert seen == [expected]
    assert comfy.progress == [(1, 2), (2, 2)]  # one progress update per sampler step
