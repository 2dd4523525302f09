"""The ComfyUI node pack without ComfyUI (the stand-ins of ``helpers/comfy_stub.py``), the real core and media."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.comfy_stub import PACKAGE, REPO, micro_config, run_node

CHECKPOINT = "stabledub_tiny_demo.safetensors"  # the name the workflows use
FACE_MODEL = "face_landmarker.task"
VIDEO = "face_occluded.mp4"
SPEECH = "speech_es.wav"
SECOND_VIDEO = "face_pan.mp4"  # the habit-transfer workflow's second video
FRAMES = 20
WORKFLOWS = REPO / "workflows"
# Core ComfyUI nodes the workflows use: inputs and output types (the test does not have ComfyUI).
# Inputs the front end adds to the API prompt for its own widgets (players, previews); ComfyUI drops them.
FRONT_END_INPUTS = {"audioUI", "video-preview"}
CORE_NODES = {"LoadAudio": ({"audio": ([SPEECH],)}, ("AUDIO",)),
              "PreviewImage": ({"images": ("IMAGE",)}, ()),
              "SolidMask": ({"value": ("FLOAT",), "width": ("INT",), "height": ("INT",)}, ("MASK",)),
              "MaskComposite": ({"destination": ("MASK",), "source": ("MASK",), "x": ("INT",), "y": ("INT",),
                                 "operation": (["multiply", "add", "subtract", "and", "or", "xor"],)}, ("MASK",)),
              "ImageScale": ({"image": ("IMAGE",), "width": ("INT",), "height": ("INT",),
                              "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                              "crop": (["disabled", "center"],)}, ("IMAGE",))}
# The templates (UI format, workflows/*.json) and their API twins (workflows/api/<name>_api.json), made by
# tests/web/build_workflows.py in the real front end.
WORKFLOW_NAMES = tuple(sorted(p.stem for p in WORKFLOWS.glob("*.json")))
API = WORKFLOWS / "api"


@pytest.fixture(scope="module")
def installed(comfy, media_dir, face_model_path):
    """A random micro checkpoint, the face model and the test media in the stand-in ComfyUI folders."""
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(micro_config()), comfy.root / "models" / "stabledub" / CHECKPOINT)
    os.symlink(face_model_path, comfy.root / "models" / "mediapipe" / FACE_MODEL)
    for name in (VIDEO, SECOND_VIDEO, SPEECH):
        os.symlink(media_dir / name, comfy.root / "input" / name)
    return comfy


# -- structure ----------------------------------------------------------------------------------------------------

def test_import_registers_nothing_and_loads_nothing(comfy):
    import folder_paths

    assert set(folder_paths.folder_names_and_paths) == {"vae"}  # our folders come with the first INPUT_TYPES
    assert comfy.progress == [] and comfy.polls == 0
    assert comfy.package.WEB_DIRECTORY == "./web" and (REPO / "web" / "js" / "stabledub.js").is_file()
    # In a fresh interpreter without ComfyUI: importing the pack imports neither ComfyUI nor any heavy library.
    script = ("import importlib.util, sys; "
              f"spec = importlib.util.spec_from_file_location({PACKAGE!r}, {str(REPO / '__init__.py')!r}, "
              f"submodule_search_locations=[{str(REPO)!r}]); "
              "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m); "
              "assert len(m.NODE_CLASS_MAPPINGS) >= 10; "
              "print(sorted(n for n in ('torch', 'mediapipe', 'diffusers', 'transformers', 'cv2', 'av', 'comfy', "
              "'folder_paths') if n in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_node_classes_are_valid(comfy):
    nodes = comfy.nodes
    assert len(nodes) >= 10 and set(nodes) == set(comfy.package.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in nodes.items():
        assert node_id.startswith("StableDub") and cls.__name__ == node_id
        assert cls.CATEGORY.startswith("StableDub/")
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
        for section in spec.values():
            for name, entry in section.items():
                assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (node_id, name)
                assert isinstance(entry[0], (str, list)), (node_id, name)
                if section is not spec.get("hidden"):  # every input a user sees explains itself
                    assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
        assert callable(getattr(cls, cls.FUNCTION))


def test_loaders_register_model_folders_lazily(comfy):
    import folder_paths

    comfy.nodes["StableDubLoadModel"].INPUT_TYPES()
    for name, extension in (("stabledub", ".safetensors"), ("mediapipe", ".task")):
        paths, extensions = folder_paths.folder_names_and_paths[name]
        assert paths == [str(comfy.root / "models" / name)] and extension in extensions
    comfy.nodes["StableDubLoadModel"].INPUT_TYPES()  # idempotent
    assert len(folder_paths.folder_names_and_paths["stabledub"][0]) == 1


# -- the modular chain on real media -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(installed):
    """LoadModel -> LoadVideo -> TrackFaces -> PlanMasks -> OccluderExposure -> CropFaces / LipCrops -> Sample."""
    c = installed
    out = {}
    (out["model"],) = run_node(c, "StableDubLoadModel", ckpt_name=CHECKPOINT, dtype="auto", vae_name="(in checkpoint)",
                               wav2vec2="(not needed)")
    out["images"], out["audio"], out["fps"] = run_node(c, "StableDubLoadVideo", video=VIDEO, frame_load_cap=FRAMES)
    c.progress.clear()
    (out["track"],) = run_node(c, "StableDubTrackFaces", images=out["images"], fps=out["fps"], face_model=FACE_MODEL)
    out["track_progress"] = list(c.progress)
    out["crop_plan"], out["union"] = run_node(c, "StableDubPlanMasks", model=out["model"], track=out["track"],
                                              mask_margin=0.06)
    occluder = torch.zeros(1, 512, 512)
    occluder[:, 140:200, 150:200] = 1  # a hand over the left half of the mouth
    (out["masks"],) = run_node(c, "StableDubOccluderExposure", crop_plan=out["crop_plan"], images=out["images"],
                               patches='{"grid": 16, "cells": [[10, 7], [10, 8]]}', occluder_grid=16,
                               occluder_fraction=0.2,
                               preview_frame=3, occluder=occluder)
    out["ui"] = c.ui
    out["crops"], out["appearance"] = run_node(c, "StableDubCropFaces", images=out["images"], track=out["track"],
                                               crop_plan=out["crop_plan"], reference="closed_lips", seed=0)
    (out["lips"],) = run_node(c, "StableDubLipCrops", model=out["model"], images=out["images"], track=out["track"],
                              habit_frames=8, seed=0)
    c.progress.clear()
    (out["generated"],) = run_node(c, "StableDubSample", model=out["model"], crops=out["crops"], masks=out["masks"],
                                   appearance=out["appearance"], lip_crops=out["lips"], audio=out["audio"],
                                   fps=out["fps"], steps=2, scheduler="ddim", audio_scale=2.0, habit_scale=1.5,
                                   seed=0)
    out["sample_progress"] = list(c.progress)
    return out


def test_chain_types_and_shapes(chain, installed):
    images, audio = chain["images"], chain["audio"]
    assert images.shape == (FRAMES, 512, 512, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert audio["waveform"].dim() == 3 and audio["waveform"].shape[-1] == round(FRAMES / 25 * audio["sample_rate"])
    assert chain["fps"] == 25.0
    assert len(chain["track"]) == FRAMES and chain["track"].valid.all()
    assert chain["track_progress"][-1] == (FRAMES, FRAMES)
    assert chain["union"].shape == (FRAMES, 64, 64) and chain["union"].max() == 1
    for name in ("crops", "appearance", "generated"):
        assert chain[name].shape == (FRAMES, 64, 64, 3) and chain[name].dtype == torch.float32, name
    assert chain["lips"].shape == (8, 32, 32, 3)
    assert chain["sample_progress"][-1] == (2, 2)  # sampler steps: 2 steps of the clip's one chunk
    assert installed.emptied >= 1  # the model went back to the offload device


def test_sample_with_source_audio_starts_from_the_inverted_crops(chain, installed):
    common = dict(model=chain["model"], crops=chain["crops"], masks=chain["masks"], appearance=chain["appearance"],
                  lip_crops=chain["lips"], audio=chain["audio"], fps=chain["fps"], steps=2, scheduler="ddim",
                  audio_scale=2.0, habit_scale=1.5, seed=0)
    (inverted,) = run_node(installed, "StableDubSample", source_audio=chain["audio"], **common)
    assert inverted.shape == chain["generated"].shape
    assert not torch.equal(inverted, chain["generated"])  # another start than the seeded noise
    (again,) = run_node(installed, "StableDubSample", **common)
    assert torch.equal(again, chain["generated"])  # without source audio: the seeded noise, as before
    with pytest.raises(Exception, match="source_audio"):
        run_node(installed, "StableDubSample", source_audio={"waveform": None}, **common)


def test_exposure_keeps_painted_and_occluded_patches(chain, installed):
    union, masks = chain["union"].numpy(), chain["masks"].numpy()
    assert (masks <= union).all()
    cell = 64 // 16
    assert (masks[:, 10 * cell:11 * cell, 7 * cell:9 * cell] == 0).all()  # the painted patches, every frame
    occluded = (masks == 0) & (union > 0.5)
    assert occluded.sum() > 2 * cell * cell * FRAMES  # the occluder exposed more than the painted patches
    ui = chain["ui"]
    assert ui["stabledub_grid"] == [16] and np.array(ui["stabledub_union_cells"]).shape == (16, 16)
    for row, col in ui["stabledub_occluder_cells"]:  # the preview frame's occluded patches are kept in its mask
        assert (masks[3, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] == 0).all()
    assert len(ui["stabledub_occluder_cells"]) >= 4
    preview = ui["stabledub_preview"][0]  # not "images": the editor shows it, not the default preview
    assert (installed.root / "temp" / preview["filename"]).is_file() and preview["type"] == "temp"


def test_paste_back_any_crop_size(chain, installed):
    images, crop_plan = chain["images"], chain["crop_plan"]
    first = crop_plan.span_at(0)[0]
    generated = chain["generated"]
    (pasted,) = run_node(installed, "StableDubPasteBack", images=images, crops=generated, crop_plan=crop_plan,
                         color_match=False, masks=chain["masks"])
    big = torch.nn.functional.interpolate(generated.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic")
    big = big.clamp(0, 1).permute(0, 2, 3, 1)
    (pasted2,) = run_node(installed, "StableDubPasteBack", images=images, crops=big, crop_plan=crop_plan,
                          color_match=True)
    assert pasted.shape == pasted2.shape == images.shape
    for out in (pasted, pasted2):
        changed = (out != images).any(dim=-1)  # (F, H, W)
        assert changed.any(dim=(1, 2)).all()  # every frame got its mouth replaced
        x0, y0, x1, y1 = first.box
        outside = torch.ones_like(changed)
        outside[:, y0:y1, x0:x1] = False
        assert not (changed[:first.stop] & outside[:first.stop]).any()  # nothing outside the box


def test_preview_and_save(chain, installed):
    (tiles,) = run_node(installed, "StableDubPreview", images=chain["images"], crop_plan=chain["crop_plan"], frames=3,
                        tile=128)
    assert tiles.shape == (3, 128, 128, 3)
    (path,) = run_node(installed, "StableDubSaveVideo", images=chain["generated"], fps=25.0,
                       filename_prefix="nodes/test", format="mp4", crf=18, audio=chain["audio"])
    assert Path(path).is_file() and Path(path).parent == installed.root / "output" / "nodes"
    assert installed.ui["images"][0]["subfolder"] == "nodes"
    assert [p.name for p in Path(path).parent.iterdir()] == [Path(path).name]  # no temporary file left

    from stabledub_core.media.clip import read_clip

    clip = read_clip(path)
    assert clip.frames.shape == (FRAMES, 64, 64, 3) and clip.waveform is not None


@pytest.mark.parametrize("stage", ["track", "sample"])
def test_interrupt_stops_the_run(chain, installed, stage):
    import comfy.model_management as mm

    # Cancel at the 3rd check: after 2 tracked frames, or inside the sampler before its first U-Net forward.
    installed.polls, installed.interrupt_after = 0, 2
    installed.progress.clear()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            if stage == "track":
                run_node(installed, "StableDubTrackFaces", images=chain["images"], fps=25.0, face_model=FACE_MODEL)
            else:
                run_node(installed, "StableDubSample", model=chain["model"], crops=chain["crops"],
                         masks=chain["masks"], appearance=chain["appearance"], lip_crops=chain["lips"],
                         audio=chain["audio"], fps=25.0, steps=50, scheduler="ddim", audio_scale=2.0,
                         habit_scale=1.5, seed=0)
        assert installed.polls <= 4  # stopped right after the Cancel
        assert all(done <= 2 for done, _ in installed.progress)  # at most 2 of 20 frames tracked; no sampled chunk
    finally:
        installed.interrupt_after = None


def test_core_errors_reach_the_user(chain, installed):
    from stabledub_core.errors import StableDubError

    with pytest.raises(StableDubError, match="planned for 20 frames but the clip has 10"):
        run_node(installed, "StableDubPasteBack", images=chain["images"][:10], crops=chain["generated"][:10],
                 crop_plan=chain["crop_plan"], color_match=False)
    with pytest.raises(StableDubError, match="not an AUDIO value"):
        run_node(installed, "StableDubFitLength", images=chain["images"], audio=None, fps=25.0,
                 length_policy="pingpong")


def test_patch_list_is_validated_when_queued(comfy):
    node = comfy.nodes["StableDubOccluderExposure"]
    assert node.VALIDATE_INPUTS('{"grid": 16, "cells": [[3, 4]]}') is True
    assert "outside the 16x16 grid" in node.VALIDATE_INPUTS('{"grid": 16, "cells": [[3, 40]]}')
    assert "not valid JSON" in node.VALIDATE_INPUTS("[[3, 4]")


def test_fit_length_policies(chain, installed):
    audio = {"waveform": torch.zeros(1, 2, 16000), "sample_rate": 16000}  # 1 s = 25 frames
    images, fitted = run_node(installed, "StableDubFitLength", images=chain["images"], audio=audio, fps=25.0,
                              length_policy="pingpong")
    assert images.shape[0] == 25 and torch.equal(images[20], chain["images"][18])
    assert fitted["waveform"].shape == (1, 2, 16000)
    images, fitted = run_node(installed, "StableDubFitLength", images=chain["images"], audio=audio, fps=25.0,
                              length_policy="pad")
    assert images.shape[0] == 20 and fitted["waveform"].shape == (1, 2, 12800)


# -- workflows ---------------------------------------------------------------------------------------------------

def _input_spec(comfy, node_type):
    if node_type in CORE_NODES:
        return CORE_NODES[node_type][0], {}, CORE_NODES[node_type][1]
    cls = comfy.nodes[node_type]
    spec = cls.INPUT_TYPES()
    return spec["required"], spec.get("optional", {}), cls.RETURN_TYPES


def _type_of(entry):
    return "COMBO" if isinstance(entry[0], list) else entry[0]


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_matches_the_nodes(installed, name):
    graph = json.loads((API / f"{name}_api.json").read_text())
    assert graph
    for node_id, node in graph.items():
        required, optional, _ = _input_spec(installed, node["class_type"])
        inputs = {k: v for k, v in node["inputs"].items() if k not in FRONT_END_INPUTS}
        assert set(required) <= set(inputs) <= set(required) | set(optional), node_id
        for name, value in inputs.items():
            entry = {**required, **optional}[name]
            if isinstance(value, list):  # a link [source node, output index]
                source, index = value
                _, _, outputs = _input_spec(installed, graph[source]["class_type"])
                assert outputs[index] == _type_of(entry), (node_id, name)
            elif isinstance(entry[0], list):
                assert value in entry[0], (node_id, name, value)
            else:
                assert _type_of(entry) in ("INT", "FLOAT", "STRING", "BOOLEAN"), (node_id, name)


def test_workflows_are_templates_with_twins_and_thumbnails():
    assert len(WORKFLOW_NAMES) >= 4
    assert sorted(p.name for p in API.glob("*.json")) == sorted(f"{n}_api.json" for n in WORKFLOW_NAMES)
    for name in WORKFLOW_NAMES:
        assert "nodes" in json.loads((WORKFLOWS / f"{name}.json").read_text()), name  # UI format: the templates
        thumbnail = (WORKFLOWS / f"{name}.jpg").read_bytes()  # ComfyUI serves <name>.jpg as the template's picture
        assert thumbnail[:3] == b"\xff\xd8\xff" and len(thumbnail) > 2000, name


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_is_the_api_workflow(installed, name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((API / f"{name}_api.json").read_text())
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        api_inputs = api[str(node["id"])]["inputs"]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        for input_name, link in linked.items():
            assert api_inputs[input_name] == [str(link[1]), link[2]] and link[3] == node["id"]
        if node["type"] not in installed.nodes:
            continue  # a core node: the front end may add widgets of its own (LoadAudio's upload button)
        required, optional, _ = _input_spec(installed, node["type"])
        widgets = [n for n, e in {**required, **optional}.items()
                   if isinstance(e[0], list) or e[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")]
        values = [v for v in node.get("widgets_values", []) if v not in ("fixed", "randomize")]
        uploads = sum(bool(e[1].get("video_upload")) for e in {**required, **optional}.values() if len(e) > 1)
        assert len(values) == len(widgets) + uploads, node["type"]  # an upload button after its list
        for widget_name, value in zip(widgets, values):
            if widget_name not in linked:
                assert api_inputs[widget_name] == value, (node["type"], widget_name)


def test_workflows_use_every_node(installed):
    used = {node["class_type"] for name in WORKFLOW_NAMES
            for node in json.loads((API / f"{name}_api.json").read_text()).values()}
    assert set(installed.nodes) - {"StableDubLoadHabit"} <= used  # it needs a saved habit: tests/nodes/test_habit.py


def test_api_workflow_runs(installed, media_dir):
    """Execute the API workflow with the nodes (ComfyUI's LoadAudio stood in by the core's loader)."""
    from stabledub_core.media.audio import load_audio

    graph = json.loads((API / "stabledub_dub_api.json").read_text())
    results = {}

    def evaluate(node_id):
        if node_id not in results:
            node = graph[node_id]
            inputs = {k: evaluate(v[0])[v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()
                      if k not in FRONT_END_INPUTS}  # as ComfyUI, which passes only the declared inputs
            if node["class_type"] == "LoadAudio":
                waveform, rate = load_audio(media_dir / inputs["audio"])
                speech = waveform[:, :int(0.6 * rate)]  # 0.6 s = 15 frames
                results[node_id] = ({"waveform": torch.from_numpy(speech)[None], "sample_rate": rate},)
            else:
                if node["class_type"] == "StableDubLoadVideo":
                    inputs["frame_load_cap"] = 8
                if node["class_type"] == "StableDubDub":
                    inputs["steps"] = 1
                results[node_id] = run_node(installed, node["class_type"], **inputs)
        return results[node_id]

    for node_id in graph:
        evaluate(node_id)
    dub = next(k for k, v in graph.items() if v["class_type"] == "StableDubDub")
    images, audio, fps = results[dub]
    assert images.shape == (15, 512, 512, 3) and fps == 25.0  # ping-pong over 8 frames to the speech's length
    assert audio["waveform"].shape[-1] == int(0.6 * audio["sample_rate"])
    save = next(k for k, v in graph.items() if v["class_type"] == "StableDubSaveVideo")
    assert Path(results[save][0]).is_file()
