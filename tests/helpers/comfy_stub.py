"""A stand-in ComfyUI for the node tests: ``folder_paths`` / ``comfy`` modules, the pack imported as ComfyUI does.

The stand-ins record progress-bar updates, can simulate the Cancel button after a given number of interruption
polls, and give temporary model/input/output folders. The package's root ``__init__.py`` is imported as the
package ``comfyui_stabledub``, as ComfyUI does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from stabledub_core.models.config import get_preset

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "comfyui_stabledub"


class FakeComfy:
    """State behind the stand-in modules."""

    def __init__(self, root: Path):
        self.root = root
        self.progress: list[tuple[int, int]] = []  # (value, total) updates of every progress bar
        self.polls = 0  # interruption checks so far
        self.interrupt_after: int | None = None  # polls after which processing_interrupted() turns True
        self.emptied = 0  # soft_empty_cache calls
        for sub in ("models/stabledub", "models/mediapipe", "models/vae", "models/wav2vec2", "input", "output",
                    "temp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def modules(self) -> dict[str, types.ModuleType]:
        state = self
        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(self.root / "models")
        fp.folder_names_and_paths = {"vae": ([str(self.root / "models" / "vae")], {".safetensors"})}

        def get_folder_paths(name):
            return list(fp.folder_names_and_paths[name][0])

        def get_filename_list(name):
            paths, extensions = fp.folder_names_and_paths[name]
            found = []
            for folder in paths:
                for base, _, files in os.walk(folder):
                    found += [os.path.relpath(os.path.join(base, f), folder) for f in files
                              if not extensions or os.path.splitext(f)[1].lower() in extensions]
            return sorted(found)

        def get_full_path(name, filename):
            for folder in fp.folder_names_and_paths[name][0]:
                path = os.path.join(folder, filename)
                if os.path.isfile(path):
                    return path
            return None

        def get_save_image_path(prefix, output_dir, width=0, height=0):
            # ComfyUI v0.3.64's numbering: the next counter after the largest of the files named <name>_<digits>_...
            subfolder = os.path.dirname(os.path.normpath(prefix))
            name = os.path.basename(os.path.normpath(prefix))
            folder = os.path.join(output_dir, subfolder)
            os.makedirs(folder, exist_ok=True)

            def numbered(filename):
                try:
                    digits = int(filename[len(name) + 1:].split("_")[0])
                except ValueError:
                    digits = 0
                return digits, filename[:len(name) + 1]

            counts = [d for d, start in map(numbered, os.listdir(folder)) if start[:-1] == name and start[-1:] == "_"]
            return folder, name, max(counts, default=0) + 1, subfolder, prefix

        fp.get_folder_paths = get_folder_paths
        fp.get_filename_list = get_filename_list
        fp.get_full_path = get_full_path
        fp.get_save_image_path = get_save_image_path
        fp.get_input_directory = lambda: str(self.root / "input")
        fp.get_output_directory = lambda: str(self.root / "output")
        fp.get_temp_directory = lambda: str(self.root / "temp")
        fp.get_annotated_filepath = lambda name: str(self.root / "input" / name)

        comfy = types.ModuleType("comfy")
        comfy.__path__ = []
        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total = total

            def update_absolute(self, value, total=None, preview=None):
                self.total = total if total is not None else self.total
                state.progress.append((value, self.total))

        utils.ProgressBar = ProgressBar
        mm = types.ModuleType("comfy.model_management")

        class InterruptProcessingException(Exception):
            pass

        def processing_interrupted():
            state.polls += 1
            return state.interrupt_after is not None and state.polls > state.interrupt_after

        def throw_exception_if_processing_interrupted():
            if processing_interrupted():
                state.interrupt_after = None
                raise InterruptProcessingException()

        def soft_empty_cache(force=False):
            state.emptied += 1

        mm.InterruptProcessingException = InterruptProcessingException
        mm.processing_interrupted = processing_interrupted
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.soft_empty_cache = soft_empty_cache
        comfy.utils, comfy.model_management = utils, mm
        return {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}


def import_package():
    """Import the repository's root ``__init__.py`` as a package, as ComfyUI loads custom nodes."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


COMFY_NODES_MARKER = "ComfyUI's own nodes module"
# How ComfyUI v0.3.64's nodes.load_custom_node imports a pack folder (module named after the folder's path).
LOAD_CUSTOM_NODE = """
import importlib.util, os, sys
def load_custom_node(module_path):
    name = module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(module_path, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
"""


def write_comfy_dir(root: Path) -> Path:
    """A stand-in ComfyUI folder for a fresh interpreter: ``nodes.py`` (ComfyUI's module name, with a marker),
    ``custom_nodes/ComfyUI-StableDub`` (a link to this repository) and ``load_custom_node.py`` (ComfyUI's way of
    importing a pack). Returns the pack's folder in it."""
    (root / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (root / "nodes.py").write_text(f"MARKER = {COMFY_NODES_MARKER!r}\n")
    (root / "load_custom_node.py").write_text(LOAD_CUSTOM_NODE)
    pack = root / "custom_nodes" / "ComfyUI-StableDub"
    pack.symlink_to(REPO)
    return pack


def micro_config():
    """The tiny preset shrunk further (64-pixel crops, 16 channels): the same code path in a few seconds."""
    cfg = get_preset("tiny")
    return dataclasses.replace(
        cfg, resolution=64,
        unet=dataclasses.replace(cfg.unet, block_out_channels=(16, 16, 16, 16), norm_num_groups=8,
                                 cross_attention_dim=16, mamba_d_state=4, attention_head_dim=2),
        habit=dataclasses.replace(cfg.habit, hidden_size=16, out_size=16, vit_hidden_size=16, vit_layers=1),
        vae=dataclasses.replace(cfg.vae, block_out_channels=(16, 16, 16, 16), norm_num_groups=8, sample_size=64))


def random_model_node(comfy, checkpoint: str, config=None):
    """A StableDub of ``config`` (default :func:`micro_config`) with its zero-initialised layers made random (so a
    dub changes the frames), saved as ``models/stabledub/<checkpoint>`` and loaded by StableDub Load Model."""
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    torch.manual_seed(0)
    model = StableDub.from_config(config if config is not None else micro_config())
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    save_checkpoint(model, comfy.root / "models" / "stabledub" / checkpoint)
    (handle,) = run_node(comfy, "StableDubLoadModel", ckpt_name=checkpoint, dtype="float32",
                         vae_name="(in checkpoint)", wav2vec2="(not needed)")
    return handle


def run_node(comfy, node_id, **inputs):
    """Call a node as ComfyUI does; returns the result tuple (and keeps the UI part in ``comfy.ui``)."""
    cls = comfy.nodes[node_id]
    out = getattr(cls(), cls.FUNCTION)(**inputs)
    if isinstance(out, dict):
        comfy.ui = out.get("ui")
        out = out["result"]
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out


# -- a real ComfyUI server (COMFYUI_DIR) ------------------------------------------------------------------------------

DEMO_CHECKPOINT = "stabledub_tiny_demo.safetensors"  # the checkpoint name the shipped workflows use
SERVER_START_TIMEOUT = 300
PACK_FOLDER = "ComfyUI-StableDub"


def install_base(base: Path, media: dict[str, Path], checkpoint: str = DEMO_CHECKPOINT,
                 resolution: int | None = None) -> Path:
    """A fresh ComfyUI base directory holding only the pack (a link to this repository), a random micro checkpoint
    under ``checkpoint`` (crops of ``resolution`` pixels, default the micro config's 64) and the input ``media``
    (name -> file, linked). No face model: the pack's bundled one is listed by itself."""
    for sub in ("custom_nodes", "models/stabledub", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO)
    from stabledub_core.models.checkpoint import save_checkpoint
    from stabledub_core.models.stabledub import StableDub

    config = micro_config()
    if resolution is not None:
        config = dataclasses.replace(config, resolution=resolution,
                                     vae=dataclasses.replace(config.vae, sample_size=resolution))
    torch.manual_seed(0)
    save_checkpoint(StableDub.from_config(config), base / "models" / "stabledub" / checkpoint)
    for name, path in media.items():
        (base / "input" / name).symlink_to(path)
    return base


class ComfyServer:
    """A running ComfyUI server (``main.py`` of ``comfy_dir``) on a free loopback port, CPU only.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        base: Its ``--base-directory``.
    """

    def __init__(self, comfy_dir: str, base: Path):
        self.comfy_dir, self.base = comfy_dir, base
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def run_prompt(self, graph: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt and wait for it; its history entry (status, outputs)."""
        try:
            prompt_id = self.post("/prompt", {"prompt": graph, "client_id": "stabledub-test"})["prompt_id"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"/prompt refused the graph: {error.read().decode()[:3000]}") from None
        deadline = time.monotonic() + timeout
        while True:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            if time.monotonic() > deadline:
                raise AssertionError(f"the prompt did not finish in {timeout} s\n{self.log()}")
            time.sleep(1)

    @contextmanager
    def running(self) -> Iterator["ComfyServer"]:
        log = open(self.log_path, "w")
        process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch"],
            cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"ComfyUI exited with {process.returncode}:\n{self.log()}")
                try:
                    self.get("/system_stats")
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"ComfyUI did not start in time:\n{self.log()}") from None
                    time.sleep(1)
            yield self
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
