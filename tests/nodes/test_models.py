"""Models on a fresh install: the face-model dropdown falls back to the pack's bundled face_landmarker.task, the
StableDub checkpoint folder is ComfyUI's models/stabledub, and the shipped workflows name a checkpoint the tests make.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from helpers.comfy_stub import DEMO_CHECKPOINT, REPO, micro_config, run_node

BUNDLED = REPO / "assets" / "face_landmarker.task"


def test_face_model_falls_back_to_the_bundled_copy(comfy):
    from comfyui_stabledub.nodes import comfy_env

    mediapipe = comfy.root / "models" / "mediapipe"
    assert not any(mediapipe.iterdir())  # a fresh install: nothing in models/mediapipe
    for node in ("StableDubTrackFaces", "StableDubDub"):
        choices = comfy.nodes[node].INPUT_TYPES()["required"]["face_model"][0]
        assert choices == ["face_landmarker.task"], node
    assert comfy_env.face_model_path("face_landmarker.task") == str(BUNDLED)
    (track,) = run_node(comfy, "StableDubTrackFaces", images=_face_frames(2), fps=25.0,
                        face_model="face_landmarker.task")
    assert len(track) == 2

    (mediapipe / "other.task").write_bytes(BUNDLED.read_bytes())  # a user's model is listed, the bundled one too
    assert comfy.nodes["StableDubTrackFaces"].INPUT_TYPES()["required"]["face_model"][0] == \
        ["other.task", "face_landmarker.task"]
    assert comfy_env.face_model_path("other.task") == str(mediapipe / "other.task")
    (mediapipe / "face_landmarker.task").symlink_to(BUNDLED)  # one of the bundled name takes its place
    assert comfy.nodes["StableDubTrackFaces"].INPUT_TYPES()["required"]["face_model"][0] == \
        ["face_landmarker.task", "other.task"]
    assert comfy_env.face_model_path("face_landmarker.task") == str(mediapipe / "face_landmarker.task")

    from stabledub_core.errors import InputFileNotFoundError

    try:
        comfy_env.face_model_path("gone.task")
    except InputFileNotFoundError as error:
        assert "models/mediapipe" in str(error)
    else:
        raise AssertionError("a missing face model must be a clear error")


def test_workflows_name_the_checkpoint_the_tests_make(comfy):
    import folder_paths

    ui = sorted((REPO / "workflows").glob("*.json"))
    assert ui
    for path in ui + sorted((REPO / "workflows" / "api").glob("*.json")):
        graph = json.loads(path.read_text())
        nodes = graph["nodes"] if "nodes" in graph else [
            {"type": n["class_type"], "widgets_values": [n["inputs"].get("ckpt_name")]} for n in graph.values()]
        names = {n["widgets_values"][0] for n in nodes if n["type"] == "StableDubLoadModel"}
        assert names == {DEMO_CHECKPOINT}, path.name
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    comfy.nodes["StableDubLoadModel"].INPUT_TYPES()  # registers models/stabledub with folder_paths
    assert folder_paths.get_folder_paths("stabledub") == [str(comfy.root / "models" / "stabledub")]
    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(micro_config()), comfy.root / "models" / "stabledub" / DEMO_CHECKPOINT)
    assert DEMO_CHECKPOINT in comfy.nodes["StableDubLoadModel"].INPUT_TYPES()["required"]["ckpt_name"][0]
    (model,) = run_node(comfy, "StableDubLoadModel", ckpt_name=DEMO_CHECKPOINT, dtype="float32",
                        vae_name="(in checkpoint)", wav2vec2="(not needed)")
    assert model.name == DEMO_CHECKPOINT and model.crop_size == micro_config().resolution


def _face_frames(n: int) -> torch.Tensor:
    import cv2

    image = cv2.cvtColor(cv2.imread(str(REPO / "tests" / "data" / "astronaut.jpg")), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(np.stack([image] * n)).float() / 255


def test_checkpoint_list_falls_back_to_the_bundled_demo_model(comfy, tmp_path, monkeypatch):
    """The pack's assets/stabledub_tiny_demo.safetensors is listed when it exists (made here: the test does not need
    the real file); a user's copy of that name in models/stabledub takes precedence."""
    from comfyui_stabledub.nodes import comfy_env
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    name = "bundled_demo_test.safetensors"
    bundled = tmp_path / "assets" / name
    monkeypatch.setattr(comfy_env, "DEMO_CHECKPOINT", name)
    monkeypatch.setattr(comfy_env, "BUNDLED_CHECKPOINT", str(bundled))
    listed = lambda: comfy.nodes["StableDubLoadModel"].INPUT_TYPES()["required"]["ckpt_name"][0]  # noqa: E731
    assert name not in listed()  # not bundled (yet): not listed
    bundled.parent.mkdir()
    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(micro_config()), bundled)
    assert listed()[-1] == name and listed().count(name) == 1
    assert comfy_env.checkpoint_path(name) == str(bundled)
    (model,) = run_node(comfy, "StableDubLoadModel", ckpt_name=name, dtype="float32", vae_name="(in checkpoint)",
                        wav2vec2="(not needed)")
    assert model.name == name and model.crop_size == micro_config().resolution
    user_copy = comfy.root / "models" / "stabledub" / name
    user_copy.write_bytes(bundled.read_bytes())
    try:
        assert listed().count(name) == 1
        assert comfy_env.checkpoint_path(name) == str(user_copy)
    finally:
        user_copy.unlink()
