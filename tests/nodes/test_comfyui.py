"""Integration with a real ComfyUI server (skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout).

The server runs from a fresh temporary base directory holding only the pack (a link to this repository), a micro
checkpoint under the name the workflows use and the input media (``--base-directory``; no face model: the bundled one
is listed), on the CPU, bound to 127.0.0.1 only; nothing is written into ``COMFYUI_DIR``. Run it with a Python that
has ComfyUI's requirements, e.g. ``COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/nodes/test_comfyui.py``.
Every shipped workflow runs through ``/prompt`` (8 frames, 1 sampler step, the speech trimmed to the frames).
"""

from __future__ import annotations

import json
import os

import pytest

from helpers.comfy_stub import DEMO_CHECKPOINT, PACK_FOLDER, REPO, ComfyServer, import_package, install_base

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
WORKFLOWS = REPO / "workflows"
WORKFLOW_NAMES = tuple(sorted(p.stem for p in WORKFLOWS.glob("*.json")))
MEDIA = ("face_occluded.mp4", "face_pan.mp4", "speech_es.wav")


@pytest.fixture(scope="module")
def server(tmp_path_factory, media_dir):
    base = install_base(tmp_path_factory.mktemp("comfyui_base"), {n: media_dir / n for n in MEDIA})
    with ComfyServer(COMFYUI_DIR, base).running() as running:
        yield running


def test_server_lists_every_node(server):
    info = server.get("/object_info")
    missing = sorted(set(import_package().NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not loaded by ComfyUI: {missing}\n{server.log()}"
    assert info["StableDubDub"]["category"] == "StableDub/sampling"
    assert DEMO_CHECKPOINT in info["StableDubLoadModel"]["input"]["required"]["ckpt_name"][0]
    assert info["StableDubDub"]["input"]["required"]["face_model"][0] == ["face_landmarker.task"]  # the bundled one
    assert f"/extensions/{PACK_FOLDER}/js/stabledub.js" in server.get("/extensions")


def test_templates_are_the_ui_workflows_with_thumbnails(server):
    templates = server.get("/api/workflow_templates")
    assert sorted(templates[PACK_FOLDER]) == sorted(WORKFLOW_NAMES)  # no API twin among them
    for name in WORKFLOW_NAMES:
        graph = server.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
        assert graph["nodes"] and "version" in graph, name  # what the front end loads as a template
        thumbnail = server.get_bytes(f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")  # the template's picture
        assert thumbnail[:3] == b"\xff\xd8\xff", name


SAVERS = ("StableDubSaveVideo", "StableDubDubVideoFile")  # the nodes that write the workflows' videos


def quick(graph: dict, info: dict) -> dict:
    """The workflow on 8 frames (the file node: the whole video) with 1 sampler step, the speech trimmed to the
    frames."""
    video = next((k for k, v in graph.items() if v["class_type"] == "StableDubLoadVideo"), None)
    for node in graph.values():
        inputs = node["inputs"]
        if "frame_load_cap" in inputs:
            inputs["frame_load_cap"] = 8
        if "steps" in inputs:
            inputs["steps"] = 1
        if "length_policy" in inputs:
            inputs["length_policy"] = "trim"
        for key, value in inputs.items():
            # ComfyUI's audio nodes need torchaudio: without it, dub with the video's own track
            if isinstance(value, list) and graph[value[0]]["class_type"] not in info:
                assert graph[value[0]]["class_type"] == "LoadAudio"
                if video is None:  # the file node dubs with the video's own track
                    del inputs[key]
                    break
                inputs[key] = [video, 1]
    return {k: v for k, v in graph.items() if v["class_type"] in info}


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_workflow_runs(server, name):
    graph = quick(json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text()), server.get("/object_info"))
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.log()
    save = next(k for k, v in graph.items() if v["class_type"] in SAVERS)
    (video,) = entry["outputs"][save]["images"]  # as core SaveVideo: the front end shows it
    assert entry["outputs"][save]["animated"] == [True]
    path = server.base / "output" / video["subfolder"] / video["filename"]
    assert path.stat().st_size > 0 and video["filename"].endswith("_00001_.mp4")
    import av

    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    if graph[save]["class_type"] == "StableDubSaveVideo":
        assert frames == 8  # the frames given, every one
    else:  # the whole video (the speech is longer: trimmed to it)
        with av.open(str(server.base / "input" / graph[save]["inputs"]["video"])) as container:
            assert frames == sum(1 for _ in container.decode(video=0))
    for node_id, node in graph.items():  # the editor's preview crop reaches the front end
        if node["class_type"] == "StableDubOccluderExposure":
            preview = entry["outputs"][node_id]["stabledub_preview"][0]
            assert (server.base / "temp" / preview["filename"]).is_file()
            assert len(entry["outputs"][node_id]["stabledub_union_cells"]) == 16
    if name == "stabledub_dub":  # the same workflow again: a second file, the first one kept
        again = server.run_prompt(graph)
        (second,) = again["outputs"][save]["images"]
        assert second["filename"].endswith("_00002_.mp4")
        assert path.is_file() and (path.parent / second["filename"]).stat().st_size > 0


def test_file_node_streams_a_core_video(server):
    """Core Load Video's VIDEO into Dub Video File: its file is dubbed (the front end's VIDEO is never decoded)."""
    graph = quick(json.loads((WORKFLOWS / "api" / "stabledub_long_video_api.json").read_text()),
                  server.get("/object_info"))
    dub = next(k for k, v in graph.items() if v["class_type"] == "StableDubDubVideoFile")
    graph["loader"] = {"class_type": "LoadVideo", "inputs": {"file": "face_pan.mp4"}}
    graph[dub]["inputs"].update({"video": "(the video input or video_path)", "video_in": ["loader", 0],
                                 "filename_prefix": "StableDub/core_video"})
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.log()
    (video,) = entry["outputs"][dub]["images"]
    import av

    with av.open(str(server.base / "output" / video["subfolder"] / video["filename"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 75  # face_pan.mp4's 75 frames, dubbed


def test_bad_prompt_is_refused_with_a_reason(server):
    graph = quick(json.loads((WORKFLOWS / "api" / "stabledub_occlusion_api.json").read_text()),
                  server.get("/object_info"))
    exposure = next(v for v in graph.values() if v["class_type"] == "StableDubOccluderExposure")
    exposure["inputs"]["patches"] = '{"grid": 16, "cells": [[99, 0]]}'
    with pytest.raises(AssertionError, match="patches"):
        server.run_prompt(graph)
