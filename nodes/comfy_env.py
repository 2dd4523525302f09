"""The ComfyUI services the nodes use: progress bars, interruption, devices, model folders.

ComfyUI's modules (``comfy.*``, ``folder_paths``) are imported inside the functions, never at import time, so
importing the node pack has no side effect and works without ComfyUI (e.g. in tests with stand-ins).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

# ComfyUI model folder name -> file extensions listed in the loaders (empty: folders, see ``model_folders``)
MODEL_FOLDERS = {
    "stabledub": {".safetensors"},  # StableDub checkpoints
    "mediapipe": {".task"},  # MediaPipe face_landmarker.task
    "wav2vec2": set(),  # local transformers wav2vec2 folders (for sd15-size checkpoints)
    "stabledub_habits": {".safetensors"},  # saved lip-habit vectors (StableDub Save Habit, the CLI's --save-habit)
}
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}
PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACE_MODEL = "face_landmarker.task"
BUNDLED_FACE_MODEL = os.path.join(PACK_DIR, "assets", FACE_MODEL)  # MediaPipe's model, shipped with the pack
DEMO_CHECKPOINT = "stabledub_tiny_demo.safetensors"  # the checkpoint the shipped workflows name
BUNDLED_CHECKPOINT = os.path.join(PACK_DIR, "assets", DEMO_CHECKPOINT)  # the tiny demo model, shipped with the pack


def register_model_folders() -> None:
    """Add ``models/stabledub``, ``models/mediapipe``, ``models/wav2vec2`` and ``models/stabledub_habits`` to
    ComfyUI's model folders.

    Idempotent; called from the loaders' ``INPUT_TYPES``. Folders configured in ``extra_model_paths.yaml`` under
    the same names are kept; the extensions listed are added to theirs.
    """
    import folder_paths

    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def model_files(folder: str) -> list[str]:
    """Files in one of ComfyUI's model folders (registering ours first)."""
    import folder_paths

    register_model_folders()
    return folder_paths.get_filename_list(folder)


def model_path(folder: str, name: str) -> str:
    """Full path of a file listed by :func:`model_files` (a clear error if it is gone)."""
    import folder_paths

    from stabledub_core.errors import InputFileNotFoundError

    register_model_folders()
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise InputFileNotFoundError(f"{name!r} is not in ComfyUI's models/{folder} folder(s) "
                                     f"{folder_paths.get_folder_paths(folder)}: put the file there and refresh")
    return path


def model_folder(folder: str) -> str:
    """The first folder of one of ComfyUI's model folders (registering ours first), created if missing."""
    import folder_paths

    register_model_folders()
    path = folder_paths.get_folder_paths(folder)[0]
    os.makedirs(path, exist_ok=True)
    return path


def files_with_bundled(folder: str, name: str, bundled: str) -> list[str]:
    """A model folder's files, then the pack's bundled file ``bundled`` listed as ``name`` when the folder has no
    file of that name (so a fresh install works; a user's copy in the folder takes precedence)."""
    names = model_files(folder)
    if name not in names and os.path.isfile(bundled):
        names.append(name)
    return names


def path_with_bundled(folder: str, name: str, bundled_name: str, bundled: str) -> str:
    """Full path of a :func:`files_with_bundled` entry: the file in the model folder, else the bundled copy."""
    import folder_paths

    register_model_folders()
    path = folder_paths.get_full_path(folder, name)
    if path is None and name == bundled_name and os.path.isfile(bundled):
        return bundled
    return model_path(folder, name)


def face_models() -> list[str]:
    """The face-model dropdown: ``.task`` files of ``models/mediapipe``, then the pack's bundled
    ``face_landmarker.task`` under that name when the folder has none of that name."""
    return files_with_bundled("mediapipe", FACE_MODEL, BUNDLED_FACE_MODEL)


def face_model_path(name: str) -> str:
    """Full path of a :func:`face_models` entry: the file in ``models/mediapipe``, else the bundled copy."""
    return path_with_bundled("mediapipe", name, FACE_MODEL, BUNDLED_FACE_MODEL)


def checkpoints() -> list[str]:
    """The checkpoint dropdown: ``.safetensors`` files of ``models/stabledub``, then the pack's bundled demo model
    ``stabledub_tiny_demo.safetensors`` (``assets/``) when it exists and the folder has none of that name."""
    return files_with_bundled("stabledub", DEMO_CHECKPOINT, BUNDLED_CHECKPOINT)


def checkpoint_path(name: str) -> str:
    """Full path of a :func:`checkpoints` entry: the file in ``models/stabledub``, else the bundled demo model."""
    return path_with_bundled("stabledub", name, DEMO_CHECKPOINT, BUNDLED_CHECKPOINT)


def model_subfolders(folder: str) -> list[str]:
    """Sub-folders of a model folder that hold a ``config.json`` (e.g. a transformers wav2vec2 model)."""
    import folder_paths

    register_model_folders()
    found = []
    for root in folder_paths.get_folder_paths(folder):
        if os.path.isdir(root):
            found += [d for d in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, d, "config.json"))]
    return found


def model_subfolder(folder: str, name: str) -> str:
    """Full path of a sub-folder listed by :func:`model_subfolders`."""
    import folder_paths

    from stabledub_core.errors import InputFileNotFoundError

    for root in folder_paths.get_folder_paths(folder):
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise InputFileNotFoundError(f"no model folder {name!r} with a config.json in ComfyUI's models/{folder}: "
                                 "put the transformers folder there and refresh")


def input_videos() -> list[str]:
    """Video files in ComfyUI's input folder."""
    import folder_paths

    root = folder_paths.get_input_directory()
    if not os.path.isdir(root):
        return []
    return sorted(f for f in os.listdir(root)
                  if os.path.isfile(os.path.join(root, f)) and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS)


def input_path(name: str) -> str:
    """Full path of a file in ComfyUI's input folder."""
    import folder_paths

    return folder_paths.get_annotated_filepath(name)


def check_prefix(prefix: str) -> str:
    """A ``filename_prefix`` checked before any work: a relative name inside ComfyUI's output folder.

    Raises:
        OutputPathError: An empty prefix, one with control characters, an absolute path or one leaving the output
            folder (ComfyUI's own savers refuse those too), each with what to type instead.
    """
    from stabledub_core.errors import OutputPathError

    name = prefix.strip()
    if not name or name.endswith(("/", os.sep)) or os.path.basename(os.path.normpath(name)) in ("", ".", ".."):
        raise OutputPathError(f"filename_prefix {prefix!r} has no file name: give one such as StableDub or "
                              "clips/dub (a sub-folder, then the name)")
    if any(ord(c) < 32 for c in name):
        raise OutputPathError(f"filename_prefix {prefix!r} holds control characters: use letters, digits, - _ "
                              "and / for a sub-folder")
    if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
        raise OutputPathError(f"filename_prefix {prefix!r} leaves ComfyUI's output folder: give a name relative to "
                              "it (a sub-folder such as clips/dub is fine)")
    return name


def output_file(prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[str, str, str]:
    """A new file in ComfyUI's output folder, numbered as ComfyUI's own savers do: ``<name>_00001_.<extension>``.

    Returns:
        ``(full path, file name, sub-folder)``; the name is never one that exists already.

    Raises:
        OutputPathError: A bad prefix (:func:`check_prefix`), or a sub-folder that cannot be made (a file in the
            way, no permission), or a folder that cannot be written to; nothing is written.
    """
    import folder_paths

    from stabledub_core.errors import OutputPathError
    from stabledub_core.media.output import check_output_path

    prefix = check_prefix(prefix)
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
    except OSError as exc:
        raise OutputPathError(f"filename_prefix {prefix!r}: cannot make its folder in the output folder "
                              f"({exc.strerror or type(exc).__name__}: {exc.filename}): choose another "
                              "filename_prefix") from None
    while True:  # the trailing "_" lets ComfyUI's counter advance; a name taken some other way is skipped
        filename = f"{name}_{counter:05}_.{extension}"
        if not os.path.exists(os.path.join(folder, filename)):
            break
        counter += 1
    path = os.path.join(folder, filename)
    check_output_path(path, "filename_prefix")  # a writable folder, probed by a file, before any work
    return path, filename, subfolder


def video_ui(filename: str, subfolder: str) -> dict:
    """The UI result of a saved video, as core SaveVideo returns it (the front end shows the video on the node)."""
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}


def should_stop() -> bool:
    """The interruption check passed to the core: True once the user pressed Cancel."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def raise_interrupt(exc: BaseException) -> None:
    """Turn the core's ``Interrupted`` into ComfyUI's interruption (the queue shows "interrupted", not an error)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    raise exc  # stopped for another reason than the Cancel button


class Progress:
    """A ComfyUI progress bar fed by the core's ``on_progress(stage, done, total)`` callbacks.

    Each stage restarts the bar with its own total (tracking, then dubbing...).

    Args:
        total: Initial total of the bar.
        stages: Show only these stages (None: all), e.g. per-step ``"sample"`` progress without the interleaved
            per-frame ``"dub"`` updates.
    """

    def __init__(self, total: int, stages: tuple[str, ...] | None = None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(max(int(total), 1))
        self.stages = stages

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.stages is None or stage in self.stages:
            self.bar.update_absolute(int(done), max(int(total), 1))


@contextmanager
def model_on_device(handle) -> Iterator[str]:
    """Move a StableDub model to ComfyUI's torch device for a run, then back to the offload device.

    Yields:
        The device as a string (for ``DubOptions.device``).
    """
    import comfy.model_management as mm

    device = mm.get_torch_device()
    handle.model.to(device)
    try:
        yield str(device)
    finally:
        handle.model.to(mm.unet_offload_device())
        mm.soft_empty_cache()
