"""Integration with a real ComfyUI server (skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout).

The server runs from a temporary base directory (``--base-directory``: custom_nodes with a link to this repository,
models, input, output), on the CPU, bound to 127.0.0.1 only; nothing is written into ``COMFYUI_DIR``. Run it with
a Python that has ComfyUI's requirements, e.g. ``COMFYUI_DIR=/path/to/ComfyUI python -m pytest
tests/nodes/test_comfyui.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300
RUN_TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, media_dir, face_model_path):
    """A ComfyUI server with the pack installed in a temporary base directory."""
    import torch

    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub
    from test_nodes import CHECKPOINT, FACE_MODEL, SPEECH, VIDEO, micro_config

    base = tmp_path_factory.mktemp("comfyui_base")
    for sub in ("custom_nodes", "models/stabledub", "models/mediapipe", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-StableDub").symlink_to(REPO)
    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(micro_config()), base / "models" / "stabledub" / CHECKPOINT)
    (base / "models" / "mediapipe" / FACE_MODEL).symlink_to(face_model_path)
    for name in (VIDEO, SPEECH):
        (base / "input" / name).symlink_to(media_dir / name)
    port = _free_port()
    log = open(base / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--disable-auto-launch"], cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode}:\n{(base / 'server.log').read_text()[-3000:]}")
            try:
                _get(f"{url}/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("ComfyUI did not start in time")
                time.sleep(1)
        yield url, base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_server_lists_every_node(server):
    from helpers.comfy_stub import import_package

    url, base = server
    info = _get(f"{url}/object_info")
    nodes = import_package().NODE_CLASS_MAPPINGS
    missing = sorted(set(nodes) - set(info))
    assert not missing, f"not loaded by ComfyUI: {missing}\n{(base / 'server.log').read_text()[-3000:]}"
    assert info["StableDubDub"]["category"] == "StableDub/sampling"
    from test_nodes import CHECKPOINT, FACE_MODEL

    assert CHECKPOINT in info["StableDubLoadModel"]["input"]["required"]["ckpt_name"][0]
    assert FACE_MODEL in info["StableDubDub"]["input"]["required"]["face_model"][0]
    assert any(e.endswith("stabledub.js") for e in _get(f"{url}/extensions"))


@pytest.mark.parametrize("name", ["stabledub_dub", "stabledub_modular"])
def test_server_runs_the_api_workflow(server, name):
    url, base = server
    graph = json.loads((REPO / "workflows" / f"{name}_api.json").read_text())
    info = _get(f"{url}/object_info")
    video = next(k for k, v in graph.items() if v["class_type"] == "StableDubLoadVideo")
    for node in graph.values():
        if node["class_type"] == "StableDubLoadVideo":
            node["inputs"]["frame_load_cap"] = 8
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 1
        for key, value in node["inputs"].items():
            # ComfyUI's audio nodes need torchaudio: without it, dub with the video's own track
            if isinstance(value, list) and graph[value[0]]["class_type"] not in info:
                assert graph[value[0]]["class_type"] == "LoadAudio"
                node["inputs"][key] = [video, 1]
    graph = {k: v for k, v in graph.items() if v["class_type"] in info}
    prompt_id = _post(f"{url}/prompt", {"prompt": graph, "client_id": "stabledub-test"})["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            break
        assert time.monotonic() < deadline, "the workflow did not finish in time"
        time.sleep(2)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    save = next(k for k, v in graph.items() if v["class_type"] == "StableDubSaveVideo")
    video = entry["outputs"][save]["images"][0]
    assert (base / "output" / video["subfolder"] / video["filename"]).stat().st_size > 0
    for node_id, node in graph.items():  # the editor's preview crop reaches the front end
        if node["class_type"] == "StableDubOccluderExposure":
            preview = entry["outputs"][node_id]["stabledub_preview"][0]
            assert (base / "temp" / preview["filename"]).is_file()
            assert len(entry["outputs"][node_id]["stabledub_union_cells"]) == 16
